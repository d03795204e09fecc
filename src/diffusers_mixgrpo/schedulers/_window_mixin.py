"""The SDE-window and trajectory-recording logic shared by the windowed ODE-SDE schedulers (flow and DDIM).

A scheduler that mixes in `SDEWindowMixin` gets `set_sde_window`, the `sde_window` property, the `sde_step_mask`
builder and the `trajectory` recorder. It must:

- call `_init_sde_window(start, size)` in `__init__` (usually with its config's `sde_window_start` / `sde_window_size`);
- call `_resolve_sde_window(num_steps)` and `_build_sde_step_mask(num_steps_run)` from `set_timesteps`, then
  `_start_trajectory(...)` when it records;
- define `_apply_sde_window()`, which `set_sde_window` calls when a grid already exists (the flow scheduler rebuilds
  its grid because the Flash tail depends on where the window ends; the DDIM scheduler only rebuilds the mask);
- call `_record_step(...)` at the end of every `step`.

Grid indices: step `i` takes the latent `x_i` to `x_{i+1}`, so a run of `M` steps has latents `x_0 .. x_M`. The window
`[start, end)` is given on the uncompressed N-step grid; it always lies before any compressed tail, so its indices are
the same on the grid that the sampling loop actually runs.

Non-contiguous SDE steps (`set_sde_steps([0, 3, 5])`): the window is then the span `[first, last + 1)` and only the
listed steps inside it are SDE steps; the others are ODE steps on the uncompressed grid. Anything that depends on
where the window ends (the Flash tail) reads `end = last + 1`: the tail is compressed only after the last SDE step.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from diffusers.utils import BaseOutput

from ._sde_math import resolve_window

TRAJECTORY_LATENTS = ("window", "all", "none")


@dataclass
class MixTrajectory(BaseOutput):
    """What a scheduler recorded during its last sampling run (`record_trajectory=True`).

    Args:
        latents (`dict[int, torch.Tensor]`):
            Latents by position: key `i` is `x_i`, the input of step `i` (key `M` is the final latent). With
            `trajectory_latents="window"` only the inputs and outputs of SDE steps are kept (what the GRPO training pass
            needs), with `"all"` every latent, with `"none"` none. Tensors are detached, in the sampling dtype.
        timesteps (`torch.Tensor`):
            The `M` timesteps the loop ran.
        sigmas (`torch.Tensor`, *optional*):
            The `M + 1` sigmas of the grid (flow matching only; `None` for VP schedulers).
        log_probs (`dict[int, torch.Tensor]`):
            `{step_index: (B,) float32 log-prob}` for every SDE step that ran.
        sde_step_mask (`torch.Tensor`):
            `(M,)` bool, `True` where the step is an SDE (window) step.
    """

    latents: dict[int, torch.Tensor]
    timesteps: torch.Tensor
    sigmas: Optional[torch.Tensor]
    log_probs: dict[int, torch.Tensor]
    sde_step_mask: torch.Tensor

    def sde_transitions(self) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`(step_index, x_t, x_{t+1}, log_prob)` for every recorded SDE step whose two latents were kept."""
        return [
            (i, self.latents[i], self.latents[i + 1], lp)
            for i, lp in sorted(self.log_probs.items())
            if i in self.latents and i + 1 in self.latents
        ]


class SDEWindowMixin:
    """Window state (`[start, start + size)` of SDE steps), the per-step SDE mask and the trajectory recorder."""

    def _init_sde_window(self, start: int, size: int) -> None:
        """Set the initial window (from the config) and empty mask / trajectory; call from `__init__`."""
        self._set_window_values(start, size)
        self._sde_step_set: Optional[frozenset[int]] = None  # set_sde_steps with gaps; None: the whole window
        self.sde_step_mask: Optional[torch.Tensor] = None
        self._trajectory: Optional[MixTrajectory] = None

    def _set_window_values(self, start: int, size: int) -> None:
        if isinstance(start, bool) or int(start) != start or start < 0:
            raise ValueError(f"sde_window_start must be an integer >= 0, got {start!r}.")
        if isinstance(size, bool) or int(size) != size or size < 0:
            raise ValueError(f"sde_window_size must be an integer >= 0, got {size!r}.")
        self._sde_window_start = int(start)
        self._sde_window_size = int(size)
        self._sde_window: Optional[tuple[int, int]] = None  # resolved against a grid by set_timesteps

    def set_sde_window(self, start: int, size: Optional[int] = None) -> None:
        """Put the SDE window at `[start, start + size)` on the uncompressed N-step grid.

        `size=None` keeps the current size (initially the config's `sde_window_size`); `size=0` means no SDE step.
        Takes effect at the next `set_timesteps`, and immediately (rebuilding the grid and resetting the step state)
        if one exists. A window that runs past the last step is cut short.
        """
        size = self._sde_window_size if size is None else size
        num_steps = getattr(self, "num_inference_steps", None)
        if num_steps is not None:
            resolve_window(start, size, num_steps)  # fail before changing anything
        self._set_window_values(start, size)
        self._sde_step_set = None
        if num_steps is not None:
            self._apply_sde_window()

    def set_sde_steps(self, steps: Sequence[int]) -> None:
        """SDE steps at exactly the grid indices `steps` (sorted, unique; gaps allowed), ODE steps everywhere else.

        Consecutive steps are the same as `set_sde_window(steps[0], len(steps))`; an empty list means no SDE step.
        With gaps, `sde_window` is the span `(steps[0], steps[-1] + 1)` and the steps inside it that are not listed
        are ODE steps; the Flash tail (`tail_ratio`) starts after the last SDE step. Takes effect like
        `set_sde_window`; a step past the grid is a ValueError (it is never cut short, unlike a window).
        """
        steps = list(steps)
        if any(isinstance(s, bool) or int(s) != s or s < 0 for s in steps):
            raise ValueError(f"sde steps must be integers >= 0, got {steps!r}.")
        steps = [int(s) for s in steps]
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"sde steps must be sorted and unique, got {steps!r}.")
        num_steps = getattr(self, "num_inference_steps", None)
        if steps and num_steps is not None and steps[-1] >= num_steps:
            raise ValueError(
                f"sde step {steps[-1]} is outside the {num_steps}-step grid; allowed: 0 <= step <= {num_steps - 1}."
            )
        start, size = (steps[0], steps[-1] - steps[0] + 1) if steps else (0, 0)
        self._set_window_values(start, size)
        self._sde_step_set = frozenset(steps) if size != len(steps) else None
        if num_steps is not None:
            self._apply_sde_window()

    @property
    def sde_steps(self) -> list[int]:
        """The SDE step indices in grid order: the window's, or the `set_sde_steps` list."""
        start, end = self.sde_window
        return [i for i in range(start, end) if self._sde_step_set is None or i in self._sde_step_set]

    def _apply_sde_window(self) -> None:  # pragma: no cover - every scheduler defines it
        raise NotImplementedError

    @property
    def sde_window(self) -> tuple[int, int]:
        """`(start, end)` of the current window in grid indices, end exclusive; `(0, 0)` when empty."""
        if self._sde_window is not None:
            return self._sde_window
        if self._sde_window_size == 0:
            return 0, 0
        return self._sde_window_start, self._sde_window_start + self._sde_window_size

    def _resolve_sde_window(self, num_steps: int) -> tuple[int, int]:
        """Validate the window against an N-step grid (ValueError if it does not fit), store and return it."""
        if self._sde_step_set is not None and max(self._sde_step_set) >= num_steps:
            raise ValueError(
                f"sde step {max(self._sde_step_set)} is outside the {num_steps}-step grid; allowed: 0 <= step <= "
                f"{num_steps - 1}."
            )
        self._sde_window = resolve_window(self._sde_window_start, self._sde_window_size, num_steps)
        return self._sde_window

    def _build_sde_step_mask(self, num_steps_run: int, device=None) -> torch.Tensor:
        """`(M,)` bool mask of the SDE steps (the resolved window, or the `set_sde_steps` list); stored as
        `self.sde_step_mask`."""
        start, end = self.sde_window
        mask = torch.zeros(num_steps_run, dtype=torch.bool, device=device)
        mask[start:end] = True
        if self._sde_step_set is not None:
            mask[start:end] = torch.tensor([i in self._sde_step_set for i in range(start, end)], device=device)
        self.sde_step_mask = mask
        return mask

    def is_sde_step(self, step_index: int) -> bool:
        """Whether step `step_index` of the current grid is an SDE step."""
        start, end = self.sde_window
        return start <= step_index < end and (self._sde_step_set is None or step_index in self._sde_step_set)

    # -- trajectory ---------------------------------------------------------------------------------------------

    @property
    def trajectory(self) -> Optional[MixTrajectory]:
        """The last sampling run's `MixTrajectory` (`None` unless `record_trajectory=True`)."""
        return self._trajectory

    def _start_trajectory(self, timesteps: torch.Tensor, sigmas: Optional[torch.Tensor] = None) -> None:
        """Begin a new recording (called by `set_timesteps` when recording is on)."""
        self._trajectory = MixTrajectory(
            latents={},
            timesteps=timesteps.detach().cpu().clone(),
            sigmas=None if sigmas is None else sigmas.detach().cpu().clone(),
            log_probs={},
            sde_step_mask=self.sde_step_mask.detach().cpu().clone(),
        )

    def _record_step(
        self,
        step_index: int,
        sample: torch.Tensor,
        prev_sample: torch.Tensor,
        log_prob: Optional[torch.Tensor],
        keep: str = "window",
    ) -> None:
        """Record one step: its log-prob (SDE steps) and, as `keep` says, its input and output latents."""
        traj = self._trajectory
        if traj is None:
            return
        is_sde = log_prob is not None
        if log_prob is not None:
            traj.log_probs[step_index] = log_prob.detach()
        if keep == "all" or (keep == "window" and is_sde):
            traj.latents.setdefault(step_index, sample.detach())
            traj.latents[step_index + 1] = prev_sample.detach()

    def _repeat_interleave_trajectory(self, repeats: int) -> None:
        """Expand the recorded per-sample tensors along the batch (a shared prefix branching into groups)."""
        traj = self._trajectory
        if traj is None:
            return
        for store in (traj.latents, traj.log_probs):
            for key, value in store.items():
                store[key] = value.repeat_interleave(repeats, dim=0)
