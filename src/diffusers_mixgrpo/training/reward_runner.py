"""The rewards of a training run: the `MultiReward` built from what the user gave (registered names loaded on the reward
device in the reward dtype, callables as they are), and scoring a rollout with each reward (within `reward_timeout`;
a reward that fails, hangs or returns anything but one number per image stops the run, naming it).

A call with a timeout runs in a daemon thread: when it hangs, the run stops at the timeout and the process can end
at once (the interpreter does not wait for a daemon thread at exit, as it would for a `ThreadPoolExecutor` worker,
so a reward that never returns cannot keep the job and its GPUs alive).

The monitor rewards (`monitor_rewards`) are built the same way and scored on the same rollouts, but are never trained
on: a monitor that fails, hangs or returns the wrong number of scores gives NaN scores and a warning naming it, and the
run goes on unchanged (`RewardRunner.score_monitors`)."""

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

import torch

from ..pipelines.rollout_batch import RolloutBatch
from ..rewards import MultiReward
from ..rewards.base import reward_scores
from ..rewards.multi import _reward_name
from .config import GRPOConfig
from .errors import ConfigError, RewardLoadError, TrainingStopped
from .health import describe_checkpoint
from .reward_spec import check_reward_weights

#: What `GRPOTrainer(rewards=...)` accepts: a `MultiReward`, `{name_or_callable: weight}`, or one callable.
RewardSpec = Union[MultiReward, Mapping[Union[str, Callable], float], Callable]

logger = logging.getLogger(__name__)


def is_registered_reward(name: str) -> bool:
    from ..rewards.registry import get_reward_factory

    try:
        get_reward_factory(name)
    except (KeyError, ValueError):
        return False
    return True


def reward_options(name: str, config: GRPOConfig) -> dict[str, Any]:
    """Keyword arguments for a registered reward: `reward_batch_size` (when the factory takes `batch_size`) and
    the reward's `reward_kwargs`."""
    from ..rewards.registry import get_reward_factory
    from .preflight import _accepted_options

    options: dict[str, Any] = {}
    try:
        accepted = _accepted_options(get_reward_factory(name))
    except (KeyError, ValueError):
        return dict((config.reward_kwargs or {}).get(name, {}))
    if accepted is not None and "batch_size" in accepted:
        options["batch_size"] = config.reward_batch_size
    options.update((config.reward_kwargs or {}).get(name, {}))
    return options


def build_rewards(rewards: Optional[RewardSpec], config: GRPOConfig, device: torch.device) -> MultiReward:
    """The run's `MultiReward` (default: `config.rewards`); registered names are loaded on `device` in
    `reward_dtype` (callables and a ready `MultiReward` are used as given)."""
    if rewards is None:
        rewards = config.rewards
    if rewards is None:
        raise ConfigError("No reward: pass rewards={...} or set `rewards` in the config.")
    if isinstance(rewards, MultiReward):
        check_reward_weights(rewards.weights)
        return rewards
    if callable(rewards) and not isinstance(rewards, Mapping):
        rewards = {rewards: 1.0}
    names = [k for k in rewards if isinstance(k, str)]
    if all(isinstance(w, (int, float)) for w in rewards.values()):  # before any reward model loads
        check_reward_weights({k if isinstance(k, str) else _reward_name(k): float(w) for k, w in rewards.items()})
    options = {name: reward_options(name, config) for name in names}
    try:
        multi = MultiReward(
            rewards,
            mix=config.reward_mix,
            device=device,
            dtype=getattr(torch, config.reward_dtype),
            reward_kwargs={k: v for k, v in options.items() if v},
        )
    except (OSError, KeyError, TypeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise RewardLoadError(f"Could not load the rewards {names}: {message}") from err
    return multi


def build_monitor_rewards(
    monitors: Optional[Union[RewardSpec, Sequence[Union[str, Callable]]]], config: GRPOConfig, device: torch.device
) -> Optional[MultiReward]:
    """The run's monitor rewards (default: `config.monitor_rewards`) as a `MultiReward` built by `build_rewards` (same
    device, dtype and options as the training rewards; the weights are unused), or `None` without monitors. A list
    of names or callables is accepted beside what `build_rewards` takes."""
    if monitors is None:
        monitors = config.monitor_rewards
    if not monitors:
        return None
    if isinstance(monitors, (list, tuple)):
        monitors = {m: 1.0 for m in monitors}
    return build_rewards(monitors, config, device)


class RewardRunner:
    """Scores rollouts with every reward of `reward`, as float32 tensors on `device`.

    Args:
        reward (`MultiReward`): the run's rewards.
        device (`torch.device`): where the scores go (the training device, where advantages are computed).
        timeout (`float`, *optional*): seconds a reward call may take (`reward_timeout`); a hung call stops the run.
        latest_checkpoint (`Callable[[], Optional[str]]`): the last complete checkpoint, named when the run stops.
        monitor (`MultiReward`, *optional*): the monitor rewards (`score_monitors`).
    """

    def __init__(
        self,
        reward: MultiReward,
        device: torch.device,
        timeout: Optional[float],
        latest_checkpoint: Callable[[], Optional[str]],
        monitor: Optional[MultiReward] = None,
    ):
        self.reward = reward
        self.monitor = monitor
        self.device = device
        self.timeout = timeout
        self.latest_checkpoint = latest_checkpoint

    def call(self, name: str, fn: Callable, images: Any, prompts: list[str], step: int) -> Any:
        """`fn(images, prompts)`, within `timeout` seconds when set (a hung reward raises `TrainingStopped`)."""
        if self.timeout is None:
            return fn(images, prompts)
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(images, prompts)
            except BaseException as err:  # handed to the caller below
                outcome["error"] = err
            finally:
                done.set()

        # A daemon thread per call (thread start-up costs ~0.1 ms, a reward call far more): a hung call is left
        # behind, and neither the next call nor the end of the process waits for it.
        threading.Thread(target=run, name=f"reward-{name}", daemon=True).start()
        if not done.wait(self.timeout):
            raise TrainingStopped(
                f"Reward {name!r} did not answer within reward_timeout={self.timeout:g} s at step {step}; "
                f"stopping. {describe_checkpoint(self.latest_checkpoint())}"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def score(self, batch: RolloutBatch, step: int) -> dict[str, torch.Tensor]:
        """`{reward name: (B,) float32 scores}` of the rollout `batch` at training step `step`."""
        scores = {}
        for name, fn in self.reward.rewards.items():
            try:
                raw = self.call(name, fn, batch.images, batch.prompts, step)
            except TrainingStopped:
                raise
            except Exception as err:  # a reward model that raises stops the run, naming the model and the prompt
                raise TrainingStopped(
                    f"Reward model {name!r} failed at step {step} on prompts "
                    f"{sorted(set(batch.prompts))[:4]}: {type(err).__name__}: {err}"
                ) from err
            try:
                scores[name] = reward_scores(name, raw, batch.batch_size, where=f" at step {step}").to(self.device)
            except ValueError as err:  # None, strings, the wrong number of scores: what came and what must come
                raise TrainingStopped(str(err)) from None
        return scores

    @property
    def monitor_names(self) -> list[str]:
        """The names of the monitor rewards (empty without monitors)."""
        return list(self.monitor.rewards) if self.monitor is not None else []

    def gathered_monitor_scores(self, batch: RolloutBatch, step: int, accelerator, times: dict[str, float]) -> dict:
        """The monitor scores of every process's rollout (`score_monitors`, then gathered: the same collectives on
        every rank), their seconds in `times["time/monitor"]`; empty without monitors. Never used by the update."""
        if self.monitor is None:
            return {}
        t0 = time.perf_counter()
        local = self.score_monitors(batch, step)
        gathered = {k: accelerator.gather(v.contiguous()) for k, v in local.items()}
        times["time/monitor"] = time.perf_counter() - t0
        return gathered

    def score_monitors(self, batch: RolloutBatch, step: int) -> dict[str, torch.Tensor]:
        """`{monitor name: (B,) float32 scores}` of `batch`; never raises for a monitor's fault: a monitor that fails,
        hangs past `timeout` or returns the wrong number of scores gives NaN scores and a warning naming it (a
        non-finite score is kept as it is and warned about). Every process returns the same names, so gathering the
        scores runs the same collectives on every rank whatever failed where."""
        scores = {}
        for name, fn in (self.monitor.rewards if self.monitor is not None else {}).items():
            s = torch.full((batch.batch_size,), float("nan"), dtype=torch.float32, device=self.device)
            try:
                raw = torch.as_tensor(self.call(name, fn, batch.images, batch.prompts, step)).reshape(-1).float()
                if raw.numel() != batch.batch_size:
                    raise ValueError(f"it returned {raw.numel()} scores for {batch.batch_size} images")
                s = raw.to(self.device)
                if not bool(torch.isfinite(s).all()):
                    logger.warning(
                        "Step %d: monitor reward %r returned %d non-finite score(s); they are logged as NaN and "
                        "left out of its mean. The training is not affected.",
                        step,
                        name,
                        int((~torch.isfinite(s)).sum()),
                    )
                    s = torch.where(torch.isfinite(s), s, torch.full_like(s, float("nan")))
            except TrainingStopped:  # `call`'s timeout: the hung call keeps its thread, the next gets a fresh one
                logger.warning(
                    "Step %d: monitor reward %r did not answer within reward_timeout=%g s; its scores are NaN this "
                    "step. The training is not affected.",
                    step,
                    name,
                    self.timeout,
                )
            except Exception as err:  # a monitor never stops or changes the run
                logger.warning(
                    "Step %d: monitor reward %r failed (%s: %s); its scores are NaN this step. The training is not "
                    "affected.",
                    step,
                    name,
                    type(err).__name__,
                    err,
                )
            scores[name] = s
        return scores
