"""Exponential moving average (EMA) of the trainable parameters, for validation images and the final weights.

``shadow <- decay * shadow + (1 - decay) * param`` every `update_interval` calls of `step` (Flow-GRPO: decay 0.9,
every 8 optimiser steps). Only the parameters given at construction are tracked (with LoRA: the adapter weights),
kept in float32. `average_parameters()` swaps the averages in for a block of code and restores the live weights after.
"""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Optional, Union

import torch

__all__ = ["ParameterEMA"]


class ParameterEMA:
    """EMA of a fixed list of parameters.

    Args:
        parameters (`Iterable[torch.nn.Parameter]`): the parameters to average (e.g. those with `requires_grad`).
            The same parameters, in the same order, must be passed to `step`, `copy_to` and `store`/`restore`.
        decay (`float`, defaults to 0.9): EMA decay in [0, 1).
        update_interval (`int`, defaults to 1): `step` updates the average on every `update_interval`-th call.
        device (`str` or `torch.device`, *optional*): where the averages live (e.g. `"cpu"` to save GPU memory);
            defaults to each parameter's device.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        decay: float = 0.9,
        update_interval: int = 1,
        device: Optional[Union[str, torch.device]] = None,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay={decay} is not allowed; it must lie in [0, 1).")
        if update_interval < 1:
            raise ValueError(f"update_interval={update_interval} is not allowed; it must be >= 1.")
        params = list(parameters)
        self.decay = float(decay)
        self.update_interval = int(update_interval)
        self.device = torch.device(device) if device is not None else None
        self.shadow = [p.detach().to(device=self.device or p.device, dtype=torch.float32, copy=True) for p in params]
        self.num_calls = 0
        self.num_updates = 0
        self._backup: Optional[list[torch.Tensor]] = None

    def _check(self, params: list[torch.Tensor]) -> None:
        if len(params) != len(self.shadow):
            raise ValueError(f"Expected {len(self.shadow)} parameters (as at construction), got {len(params)}.")
        for i, (p, s) in enumerate(zip(params, self.shadow)):
            if p.shape != s.shape:
                raise ValueError(f"Parameter {i} has shape {tuple(p.shape)}, its average {tuple(s.shape)}.")

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> bool:
        """Count one call (one optimiser step) and update the average on every `update_interval`-th; returns whether
        it updated."""
        params = list(parameters)
        self._check(params)
        self.num_calls += 1
        if self.num_calls % self.update_interval:
            return False
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach().to(device=s.device, dtype=torch.float32), 1.0 - self.decay)
        self.num_updates += 1
        return True

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Overwrite `parameters` with the averages (cast to each parameter's dtype and device)."""
        params = list(parameters)
        self._check(params)
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Keep a copy of the live `parameters`, to be put back by `restore`."""
        params = list(parameters)
        self._check(params)
        self._backup = [p.detach().clone() for p in params]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Put back the values saved by `store`."""
        if self._backup is None:
            raise RuntimeError("restore() called without a matching store().")
        params = list(parameters)
        self._check(params)
        for b, p in zip(self._backup, params):
            p.copy_(b)
        self._backup = None

    @contextmanager
    def average_parameters(self, parameters: Iterable[torch.nn.Parameter]) -> Iterator[None]:
        """Context manager: the parameters hold the averages inside the block and their live values after it (also
        when the block raises)."""
        params = list(parameters)
        self.store(params)
        self.copy_to(params)
        try:
            yield
        finally:
            self.restore(params)

    def state_dict(self) -> dict[str, Any]:
        """Averages and counters (tensors and plain values: safe for `torch.load(weights_only=True)`)."""
        return {
            "decay": self.decay,
            "update_interval": self.update_interval,
            "num_calls": self.num_calls,
            "num_updates": self.num_updates,
            "shadow": [s.detach().clone() for s in self.shadow],
        }

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the averages keep this object's devices."""
        shadow = state_dict["shadow"]
        if len(shadow) != len(self.shadow):
            raise ValueError(f"state_dict holds {len(shadow)} averages, this EMA tracks {len(self.shadow)}.")
        for s, t in zip(self.shadow, shadow):
            if s.shape != t.shape:
                raise ValueError(f"state_dict average has shape {tuple(t.shape)}, expected {tuple(s.shape)}.")
            s.copy_(t.to(device=s.device, dtype=torch.float32))
        self.decay = float(state_dict.get("decay", self.decay))
        self.update_interval = int(state_dict.get("update_interval", self.update_interval))
        self.num_calls = int(state_dict.get("num_calls", 0))
        self.num_updates = int(state_dict.get("num_updates", 0))
