"""Pre-emption and Ctrl-C: turn SIGTERM / SIGINT into "stop at the next boundary, save a checkpoint, return" within a
bounded time.

Cluster schedulers send SIGTERM and kill the job after a grace period (torchrun's elastic agent: 30 s; Slurm: `KillWait`,
or the `--signal=B:TERM@<s>` lead time; Kubernetes: `terminationGracePeriodSeconds`), while one training iteration of a
large model takes minutes, so "finish the iteration, then save" would be killed before it saves. Instead:

- `GracefulInterrupt` records the first signal (and when it came) instead of dying; a second one stops at once
  (`StopNow`, a `KeyboardInterrupt`; a checkpoint being written is then abandoned atomically, the previous one stays;
  the command line prints one line and exits with 128 + the signal number, 143 for SIGTERM, without a traceback).
- The trainer asks at every boundary of an iteration (after each denoiser call of the rollout, after the rewards,
  before each trained micro-batch / window step, at the end of the iteration) whether a stop is pending, and the
  ranks agree on the answer (one all-reduce of the signal number: a signal may reach only some ranks), so every rank
  leaves at the same boundary and none is left waiting in a collective. The agreed stop raises `Preempted`, which
  unwinds the unfinished iteration.
- The checkpoint then written is the state at the start of the interrupted iteration: `IterationStart` holds what
  the iteration changes before its end (the RNG states, the bad-group counter) and `RestorePoint` CPU copies of what
  its optimiser steps change (trained weights, optimiser and LR-schedule state, EMA, loss scaler). A resume redoes the
  iteration from its start, with the same rollout noise (seeded by the step), so it equals the uninterrupted run.

The time from the signal to the start of the save is at most one denoiser call, one trained micro-batch's forward and
backward, or one reward call (plus an optimiser step), whichever is running when the signal comes.

Handlers can only be installed from the main thread; elsewhere (a notebook worker thread) the context manager does
nothing and signals keep their usual effect.
"""

import copy
import logging
import random
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Optional

import torch

from .errors import StopNow

logger = logging.getLogger(__name__)

__all__ = ["GracefulInterrupt", "IterationStart", "Preempted", "RestorePoint", "StopNow", "signal_name"]


def signal_name(signum: int) -> str:
    """`"SIGTERM"` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulInterrupt:
    """Context manager: while active, the first SIGTERM/SIGINT sets `requested` (the signal number) and `received_at`
    (`time.monotonic()`) and logs one line; a second one raises `StopNow` (a `KeyboardInterrupt`). Previous handlers
    are restored on exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.requested: Optional[int] = None
        self.received_at: Optional[float] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.requested is not None:
            self._restore()
            raise StopNow(signum)
        self.requested, self.received_at = signum, time.monotonic()
        logger.warning(
            "%s received: stopping at the next micro-batch boundary and saving a checkpoint (send it again to stop "
            "at once).",
            signal_name(signum),
        )

    def __enter__(self) -> "GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __exit__(self, *exc_info: Any) -> None:
        self._restore()


class Preempted(Exception):
    """Raised on every rank at the same boundary once the ranks agreed to stop: unwinds the unfinished iteration.

    Args:
        signum (`int`): the signal that asked for the stop.
        where (`str`): the boundary, for the log ("rollout", "update, micro-batch 3 of 8", ...).
    """

    def __init__(self, signum: int, where: str):
        super().__init__(f"{signal_name(signum)} at {where}")
        self.signum = signum
        self.where = where


def _local(t: torch.Tensor) -> torch.Tensor:
    from .distributed import local_tensor

    return local_tensor(t)


def _cpu_copy(value: Any) -> Any:
    return _local(value).detach().to("cpu", copy=True) if torch.is_tensor(value) else copy.deepcopy(value)


class IterationStart:
    """What an iteration changes before it ends, recorded when it starts: the RNG states of `random`, numpy and torch
    (CPU and CUDA), which a checkpoint stores, and the trainer's counters named in `counters`."""

    def __init__(self, owner: Any, counters: Sequence[str] = ()):
        self.owner = owner
        self.counters = {name: copy.deepcopy(getattr(owner, name)) for name in counters}
        self.rng: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
        try:
            import numpy as np

            self.rng["numpy"] = np.random.get_state()
        except ImportError:
            pass
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.rng["cuda"] = torch.cuda.get_rng_state_all()

    def restore(self) -> None:
        for name, value in self.counters.items():
            setattr(self.owner, name, value)
        random.setstate(self.rng["python"])
        torch.set_rng_state(self.rng["torch"])
        if "numpy" in self.rng:
            import numpy as np

            np.random.set_state(self.rng["numpy"])
        if "cuda" in self.rng:
            torch.cuda.set_rng_state_all(self.rng["cuda"])


class RestorePoint:
    """CPU copies of what optimiser steps change, to undo them: this rank's part of the trained parameters (the local
    shard of a `DTensor`), the optimiser's per-parameter state and hyper-parameters, the LR schedule, the EMA and the
    mixed-precision loss scaler. Costs one copy of the trained weights and the optimiser state in CPU memory (a LoRA:
    a few hundred MB; a full fine-tune: 3x the model in float32, per rank its shard).

    Args:
        params (`Sequence[torch.nn.Parameter]`): the trained parameters (those of `optimizer`).
        optimizer (`torch.optim.Optimizer`): plain or accelerate-wrapped.
        lr_scheduler, ema, scaler (*optional*): anything with `state_dict` / `load_state_dict`.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        optimizer: Any,
        lr_scheduler: Any = None,
        ema: Any = None,
        scaler: Any = None,
    ):
        self.params = list(params)
        self.optimizer = optimizer
        self.others = [obj for obj in (lr_scheduler, ema, scaler) if obj is not None]
        with torch.no_grad():
            self.values = [_cpu_copy(p) for p in self.params]
            self.state = [
                {k: _cpu_copy(v) for k, v in optimizer.state[p].items()} if p in optimizer.state else None
                for p in self.params
            ]
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.other_states = [copy.deepcopy(_cpu_state(obj.state_dict())) for obj in self.others]

    @torch.no_grad()
    def restore(self) -> None:
        """Put every copied value back in place (the parameters and state tensors keep their devices and shards)."""
        for p, value in zip(self.params, self.values):
            _local(p).copy_(value)
        for p, saved in zip(self.params, self.state):
            if saved is None:
                self.optimizer.state.pop(p, None)  # created by a step taken since
                continue
            current = self.optimizer.state[p]
            for key in [k for k in current if k not in saved]:
                del current[key]
            for key, value in saved.items():
                if torch.is_tensor(value) and torch.is_tensor(current.get(key)):
                    _local(current[key]).copy_(value)
                else:
                    current[key] = copy.deepcopy(value)
        for group, saved in zip(self.optimizer.param_groups, self.groups):
            group.update(copy.deepcopy(saved))
        for obj, state in zip(self.others, self.other_states):
            obj.load_state_dict(copy.deepcopy(state))


def _cpu_state(state: Any) -> Any:
    """A state dict with its tensors copied to the CPU (nested dicts and lists followed)."""
    if torch.is_tensor(state):
        return _cpu_copy(state)
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_state(v) for v in state)
    return state
