"""Where the SDE window sits at each training iteration: MixGRPO's sliding-window schedule, with a checkpointable state.

The window is `[start, start + size)` on the N-step sampling grid. Steps before it run as an ODE, steps inside are
sampled with the SDE and trained, steps after it are ODE again (see `MixODESDEScheduler.set_sde_window`). This
object only decides *where* the window is; feed `current()` to the scheduler's `set_sde_window` before each rollout
and call `step()` once per training iteration.

Conventions (MixGRPO's released training code, `GRPOTrainingStates`):

- The last sampling step (the jump to t = 0) is never trained: the reference drops that transition from the stored
  trajectory. The last index a window may cover is therefore `N - 2`, and so is the highest start (`max_start`).
  A window that would run past index `N - 2` is cut short; it is never empty.
- `step()` counts one training iteration: the counter inside the current interval goes up by one, and when it reaches
  the shift interval tau the window moves by `stride` and the counter restarts at 0. So with tau = 25 and stride 1
  the window start at iteration i is `i // 25` until it passes `max_start`, where it rolls back to 0 (`roll_back`)
  or stays at `max_start`.
"""

import math
from typing import Any, Optional

import numpy as np

SLIDING_WINDOW_STRATEGIES = ("progressive", "random", "decay", "exp_decay")


class SlidingWindowSchedule:
    """The sliding SDE window of MixGRPO: where the window starts at every training iteration.

    Args:
        num_inference_steps (`int`):
            N, the number of sampling steps of a rollout (the uncompressed grid). At least 2.
        window_size (`int`, defaults to 4):
            K, the number of consecutive SDE (trained) steps; `1 <= K <= N - 1`.
        shift_interval (`int`, defaults to 25):
            tau, the number of training iterations between two moves (25 for MixGRPO, 20 for MixGRPO-Flash).
        stride (`int`, defaults to 1):
            S, how many steps the window moves at each shift. `0` freezes the window at `[0, K)` (MixGRPO-Flash*).
        strategy (`str`, defaults to `"progressive"`):
            - `"progressive"`: the paper's schedule, a move of `stride` every `shift_interval` iterations.
            - `"random"`: a new start drawn uniformly at every iteration, among the starts whose window fits whole.
            - `"decay"`: progressive, with an interval that shrinks linearly from `max_shift_interval` at start 0 to
              `min_shift_interval` at `max_start`: `max(min, int(max * (1 - w / max_start) + min * w / max_start))`.
            - `"exp_decay"`: progressive, with interval `ceil(tau * exp(-k * max(0, w - w_thr)))`.
        roll_back (`bool`, defaults to `True`):
            Past `max_start` the window returns to 0 (`True`) or stays at `max_start` (`False`).
        max_start (`int`, *optional*):
            The highest start, `N - 2` by default (the last trainable index); `0 <= max_start <= N - 2`.
        min_shift_interval (`int`, *optional*):
            `"decay"` only: the interval at `max_start`. Defaults to `max(1, shift_interval // 4)`.
        max_shift_interval (`int`, *optional*):
            `"decay"` only: the interval at start 0. Defaults to `shift_interval`.
        exp_decay_k (`float`, defaults to 0.1):
            `"exp_decay"` only: the decay rate k.
        exp_decay_threshold (`int`, defaults to 13):
            `"exp_decay"` only: w_thr, the start below which the interval is not shortened.
        seed (`int`, *optional*):
            `"random"` only: seed of the start generator (its state is part of `state_dict()`).
    """

    def __init__(
        self,
        num_inference_steps: int,
        window_size: int = 4,
        shift_interval: int = 25,
        stride: int = 1,
        strategy: str = "progressive",
        roll_back: bool = True,
        max_start: Optional[int] = None,
        min_shift_interval: Optional[int] = None,
        max_shift_interval: Optional[int] = None,
        exp_decay_k: float = 0.1,
        exp_decay_threshold: int = 13,
        seed: Optional[int] = None,
    ):
        n = num_inference_steps
        if not isinstance(n, int) or n < 2:
            raise ValueError(f"num_inference_steps must be an integer >= 2, got {n!r}.")
        if strategy not in SLIDING_WINDOW_STRATEGIES:
            raise ValueError(f"strategy must be one of {SLIDING_WINDOW_STRATEGIES}, got {strategy!r}.")
        if not 1 <= window_size <= n - 1:
            raise ValueError(
                f"window_size={window_size} is out of range; allowed: 1 <= window_size <= num_inference_steps - 1 "
                f"= {n - 1} (the last step is never trained)."
            )
        if shift_interval < 1:
            raise ValueError(f"shift_interval must be >= 1, got {shift_interval}.")
        if stride < 0:
            raise ValueError(f"stride must be >= 0 (0 freezes the window), got {stride}.")
        if max_start is None:
            max_start = n - 2
        if not 0 <= max_start <= n - 2:
            raise ValueError(
                f"max_start={max_start} is out of range; allowed: 0 <= max_start <= num_inference_steps - 2 = {n - 2}."
            )
        if max_shift_interval is None:
            max_shift_interval = shift_interval
        if min_shift_interval is None:
            min_shift_interval = max(1, shift_interval // 4)
        if not 1 <= min_shift_interval <= max_shift_interval:
            raise ValueError(
                f"decay intervals must satisfy 1 <= min_shift_interval <= max_shift_interval, got "
                f"min_shift_interval={min_shift_interval}, max_shift_interval={max_shift_interval}."
            )
        if not exp_decay_k >= 0:
            raise ValueError(f"exp_decay_k must be >= 0, got {exp_decay_k}.")
        if exp_decay_threshold < 0:
            raise ValueError(f"exp_decay_threshold must be >= 0, got {exp_decay_threshold}.")

        self.num_inference_steps = n
        self.window_size = window_size
        self.shift_interval = shift_interval
        self.stride = stride
        self.strategy = strategy
        self.roll_back = bool(roll_back)
        self.max_start = max_start
        self.min_shift_interval = min_shift_interval
        self.max_shift_interval = max_shift_interval
        self.exp_decay_k = float(exp_decay_k)
        self.exp_decay_threshold = exp_decay_threshold
        self.seed = seed

        self.start = 0
        self.iter_in_interval = 0
        self.iteration = 0
        self._rng = np.random.default_rng(seed)
        if strategy == "random":
            self.start = self._draw_start()

    # -- queries ---------------------------------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        """The last step index a window may cover (`N - 2`: the final step to t = 0 is never trained)."""
        return self.num_inference_steps - 2

    @property
    def interval(self) -> int:
        """The shift interval in force at the current start (constant except for `"decay"` and `"exp_decay"`)."""
        w = self.start
        if self.strategy == "decay":
            progress = w / self.max_start if self.max_start > 0 else 0.0
            value = int(self.max_shift_interval * (1 - progress) + self.min_shift_interval * progress)
            return max(self.min_shift_interval, value)
        if self.strategy == "exp_decay":
            excess = max(0, w - self.exp_decay_threshold)
            return max(1, math.ceil(self.shift_interval * math.exp(-self.exp_decay_k * excess)))
        return self.shift_interval

    def current(self) -> tuple[int, int]:
        """`(start, size)` of the window for the current training iteration; `size` is cut short near the end."""
        size = min(self.window_size, self.last_index + 1 - self.start)
        return self.start, size

    def indices(self) -> list[int]:
        """The step indices inside the current window."""
        start, size = self.current()
        return list(range(start, start + size))

    # -- updates ---------------------------------------------------------------------------------------------------

    def _draw_start(self) -> int:
        # Only starts whose whole window fits before the last trainable index, as in the reference.
        high = min(self.max_start, self.last_index + 1 - self.window_size)
        return int(self._rng.integers(0, high + 1))

    def step(self) -> None:
        """Advance by one training iteration (call it once per iteration, after using `current()`)."""
        self.iteration += 1
        if self.strategy == "random":
            self.start = self._draw_start()
            return
        # The interval is read at the current start, before the move (reference order).
        self.iter_in_interval += 1
        if self.iter_in_interval >= self.interval:
            self.iter_in_interval = 0
            self.start += self.stride
        if self.start > self.max_start:
            if self.roll_back:
                self.start = 0
                self.iter_in_interval = 0
            else:
                self.start = self.max_start

    # -- checkpointing ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (start, counters and the random generator's state); plain Python values."""
        return {
            "strategy": self.strategy,
            "start": self.start,
            "iter_in_interval": self.iter_in_interval,
            "iteration": self.iteration,
            "rng_state": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by `state_dict()`; the schedule then continues exactly where it was saved."""
        missing = {"start", "iter_in_interval", "iteration", "rng_state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing keys {sorted(missing)}.")
        strategy = state_dict.get("strategy", self.strategy)
        if strategy != self.strategy:
            raise ValueError(f"state_dict was saved with strategy={strategy!r}, this schedule uses {self.strategy!r}.")
        start = int(state_dict["start"])
        if not 0 <= start <= self.max_start:
            raise ValueError(f"state_dict start={start} is out of range; allowed: 0 <= start <= {self.max_start}.")
        iter_in_interval = int(state_dict["iter_in_interval"])
        if iter_in_interval < 0:
            raise ValueError(f"state_dict iter_in_interval must be >= 0, got {iter_in_interval}.")
        self.start = start
        self.iter_in_interval = iter_in_interval
        self.iteration = int(state_dict["iteration"])
        self._rng.bit_generator.state = state_dict["rng_state"]

    def __repr__(self) -> str:
        start, size = self.current()
        return (
            f"{type(self).__name__}(strategy={self.strategy!r}, num_inference_steps={self.num_inference_steps}, "
            f"window_size={self.window_size}, shift_interval={self.shift_interval}, stride={self.stride}, "
            f"roll_back={self.roll_back}, max_start={self.max_start}, window=[{start}, {start + size}), "
            f"iteration={self.iteration}, iter_in_interval={self.iter_in_interval})"
        )
