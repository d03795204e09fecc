"""Which steps are SDE steps at each training iteration when they are not MixGRPO's sliding window: a fixed list, or a
number of steps drawn per iteration (Flow-GRPO-Fast, Flow-Factory), with a checkpointable state.

`SDEStepSchedule` has the surface of `SlidingWindowSchedule` (`indices()`, `current()`, `step()`, `state_dict()`), so
the trainer uses either. Feed `indices()` to `GRPOTrainingPipeline.rollout(sde_steps=...)` (or the scheduler's
`set_sde_steps`) before each rollout and call `step()` once per training iteration.

- `steps=[0, 3, 5, 9]`: exactly those grid indices are SDE (and trained) steps at every iteration, the others ODE.
- `num_steps=[1, 2, 3]`: at every iteration a count K is drawn uniformly from the candidates, then the K steps from
  the pool `[low, high)` (`step_range`): `layout="window"` puts them at consecutive indices from a uniformly drawn
  start (Flow-GRPO-Fast: K = 2 in the first half of the steps, `step_range = [0, N // 2)`), `layout="scattered"`
  draws K distinct indices uniformly from the pool (Flow-Factory's sparse SDE steps).

The draw of iteration k depends on `(seed, k)` only (a numpy generator seeded with that pair, never the global
random state), so every rank draws the same steps and a resumed run, which restores the iteration counter, draws the
same sequence as the uninterrupted one. The last grid step (to t = 0) is never an SDE step: indices stop at N - 2.
"""

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

SDE_STEP_LAYOUTS = ("window", "scattered")

# Mixed into the seed so these draws never share a stream with another seeded draw of the same (seed, step).
_STREAM = 0x5DE57E95


class SDEStepSchedule:
    """The SDE steps of every training iteration: a fixed list, or a count drawn per iteration.

    Args:
        num_inference_steps (`int`):
            N, the number of sampling steps of a rollout. At least 2.
        steps (`list[int]`, *optional*):
            The SDE step indices used at every iteration: sorted, unique, in `[0, N - 2]`.
        num_steps (`list[int]`, *optional*):
            The candidate counts K, one drawn uniformly per iteration (a single value: always that many steps). Each
            in `[1, high - low]`. Exactly one of `steps` and `num_steps` is given.
        step_range (`tuple[int, int]`, *optional*):
            `num_steps` only: the pool `[low, high)` of step indices to draw from, `0 <= low < high <= N - 1`.
            Defaults to `(0, N - 1)`, every trainable step.
        layout (`str`, defaults to `"window"`):
            `num_steps` only: `"window"` (K consecutive steps, uniformly drawn start) or `"scattered"` (K distinct
            steps drawn uniformly from the pool, gaps between them).
        seed (`int`, defaults to 0):
            Seed of the draws (with the iteration number).
    """

    def __init__(
        self,
        num_inference_steps: int,
        steps: Optional[Sequence[int]] = None,
        num_steps: Optional[Sequence[int]] = None,
        step_range: Optional[Sequence[int]] = None,
        layout: str = "window",
        seed: int = 0,
    ):
        n = num_inference_steps
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"num_inference_steps must be an integer >= 2, got {n!r}.")
        last = n - 2  # the last trainable step
        if (steps is None) == (num_steps is None):
            raise ValueError("give exactly one of steps (a fixed list) and num_steps (the counts to draw from).")
        if layout not in SDE_STEP_LAYOUTS:
            raise ValueError(f"layout must be one of {SDE_STEP_LAYOUTS}, got {layout!r}.")
        if steps is not None:
            steps = [int(s) for s in steps]
            if not steps or any(not 0 <= s <= last for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
                raise ValueError(
                    f"steps={steps} is not allowed; it must be a non-empty, sorted list of unique step indices in "
                    f"[0, num_inference_steps - 2] = [0, {last}]."
                )
        low, high = (0, n - 1) if step_range is None else (int(v) for v in step_range)
        if not 0 <= low < high <= n - 1:
            raise ValueError(
                f"step_range={[low, high]} is not allowed; it must be [low, high) with 0 <= low < high <= "
                f"num_inference_steps - 1 = {n - 1}."
            )
        if num_steps is not None:
            num_steps = [int(k) for k in num_steps]
            if not num_steps or any(not 1 <= k <= high - low for k in num_steps):
                raise ValueError(
                    f"num_steps={num_steps} is not allowed; each count must lie in [1, {high - low}], the size of "
                    f"step_range [{low}, {high})."
                )
        self.num_inference_steps = n
        self.steps = steps
        self.num_steps = num_steps
        self.step_range = (low, high)
        self.layout = layout
        self.seed = int(seed)
        self.iteration = 0

    # -- queries ---------------------------------------------------------------------------------------------------

    def draw(self, iteration: int) -> list[int]:
        """The SDE steps of training iteration `iteration`, sorted (a function of `(seed, iteration)` only)."""
        if self.steps is not None:
            return list(self.steps)
        rng = np.random.default_rng([self.seed, int(iteration), _STREAM])
        k = int(self.num_steps[int(rng.integers(len(self.num_steps)))])
        low, high = self.step_range
        if self.layout == "window":
            start = int(rng.integers(low, high - k + 1))
            return list(range(start, start + k))
        return sorted(int(i) for i in low + rng.choice(high - low, size=k, replace=False))

    def indices(self) -> list[int]:
        """The SDE step indices of the current training iteration."""
        return self.draw(self.iteration)

    def current(self) -> tuple[int, int]:
        """`(first SDE step, number of SDE steps)` of the current iteration (what the step logs call the window's
        start and size; equal to `SlidingWindowSchedule.current()` for consecutive steps)."""
        steps = self.indices()
        return steps[0], len(steps)

    # -- updates ---------------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance by one training iteration (call it once per iteration, after using `indices()`)."""
        self.iteration += 1

    # -- checkpointing ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The mutable state: the iteration counter (the draws are a function of it and the seed)."""
        return {"kind": "sde_steps", "iteration": self.iteration}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by `state_dict()`; the draws then continue exactly where they were saved."""
        if state_dict.get("kind") != "sde_steps" or "iteration" not in state_dict:
            raise ValueError(
                "state_dict was not saved by an SDEStepSchedule (it holds a sliding-window state); resume with the "
                "sde_steps / num_sde_steps settings the checkpoint was trained with."
            )
        iteration = int(state_dict["iteration"])
        if iteration < 0:
            raise ValueError(f"state_dict iteration must be >= 0, got {iteration}.")
        self.iteration = iteration

    def __repr__(self) -> str:
        what = (
            f"steps={self.steps}"
            if self.steps is not None
            else (f"num_steps={self.num_steps}, step_range={list(self.step_range)}, layout={self.layout!r}")
        )
        return f"{type(self).__name__}(num_inference_steps={self.num_inference_steps}, {what}, iteration={self.iteration})"
