"""The first-update consistency check: the rollout's own samples, recomputed before any parameter change, must give
back the log-probs recorded at rollout time (ratio 1), or the run stops.

The first accumulation group of an update is on-policy: its forwards all run before the group's optimiser step (and,
under DeepSpeed, before the boundary backward that steps), so every ratio `exp(log_prob - old_log_prob)` it computes
should be 1 up to the precision of the forward. A larger deviation means the training pass is not the function that
sampled (a different autocast dtype, attention backend or `torch.compile` between the two, dropout or train mode, a
scheduler built with other settings), and with the paper's `clip_range` of 1e-4 such an update trains on clipped,
meaningless ratios. The check reads the ratios the update computes anyway (no extra forward) and costs one all-reduce
on the steps it runs.

What is compared: `max |log ratio|` over the group's samples and window steps (equal to `max |ratio - 1|` to first
order), divided by the elements of a latent with `log_prob_reduction="sum"` (the per-element log-ratio, which the
`"mean"` reduction gives directly: the float32 rounding of a sum over n elements grows with n).

Measured on the CPU (tiny FLUX and the toy model, 32 px; `docs/training.md`, "Trusting a run"): the ratio is exactly
1 when the update's micro-batches are the rollout's chunks, and 1.2e-7 (one float32 ulp) with `train_batch_size=1`,
in float32 and in bf16. Recomputing in a lower precision than the rollout (the proxy for a GPU's batch-dependent
kernels, which cannot be measured here) gives, over the tiny models of every family: bf16 2.7e-5 to 3.9e-3 (the
largest: SDXL and SD1.5, whose 32 px latents have only 64 elements to average over), fp16 (10 mantissa bits, like
TF32) 0 to 3.1e-4. The defaults sit above those: `RATIO_CHECK_TOLERANCES`, with float32 on a CUDA device with TF32
matmuls (`allow_tf32`) taking the fp16 value. A wrong SDE noise level in the recompute (eta 0.7 -> 0.8) gives 3e-2.
"""

import logging
import math
from typing import Optional, Union

import torch

from .backends import max_over_ranks
from .errors import TrainingStopped

logger = logging.getLogger(__name__)

#: The default `ratio_check_tolerance` by `mixed_precision` (`"no"` without TF32): see the module docstring.
RATIO_CHECK_TOLERANCES = {"no": 1e-4, "fp16": 1e-3, "bf16": 1e-2}


def default_ratio_tolerance(mixed_precision: str, device: Union[str, torch.device] = "cpu") -> float:
    """The tolerance of the check for a run's `mixed_precision` on `device`: `RATIO_CHECK_TOLERANCES`, and the fp16
    value for float32 on CUDA with TF32 matmuls on (10 mantissa bits, as fp16)."""
    if mixed_precision == "no" and torch.device(device).type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return RATIO_CHECK_TOLERANCES["fp16"]
    return RATIO_CHECK_TOLERANCES[mixed_precision]


class RatioCheck:
    """When the check runs, what it has seen, and the decision (the same on every rank).

    Args:
        every (`int`, *optional*): `ratio_check_steps`. `None`: the first update of the run (this process's first
            training step, also after a resume) only; `0`: never; `n`: the first update and every `n` training steps.
        tolerance (`float`): the largest `max |log ratio|` allowed.
        mixed_precision (`str`): named in the message.
    """

    def __init__(self, every: Optional[int], tolerance: float, mixed_precision: str = "no"):
        self.every = every
        self.tolerance = float(tolerance)
        self.mixed_precision = mixed_precision
        self.checked_once = False
        self.step: Optional[int] = None  # the step being checked while armed
        self.elements = 1  # the log-ratio is divided by this (`log_prob_reduction="sum"`: the latent's elements)
        self.deviation = 0.0  # max |log ratio| / elements seen since `begin`

    @classmethod
    def from_config(cls, config, device: Union[str, torch.device] = "cpu") -> "RatioCheck":
        """The check of a `GRPOConfig`: `ratio_check_steps`, `ratio_check_tolerance` (default: by `mixed_precision`
        and `device`)."""
        tolerance = config.ratio_check_tolerance
        if tolerance is None:
            tolerance = default_ratio_tolerance(config.mixed_precision, device)
        return cls(config.ratio_check_steps, tolerance, config.mixed_precision)

    @property
    def armed(self) -> bool:
        return self.step is not None

    def due(self, step: int) -> bool:
        if self.every == 0:
            return False
        return not self.checked_once or (self.every is not None and step % self.every == 0)

    def begin(self, step: int, elements: int = 1) -> None:
        """At the start of an update: arm the check if step `step` is due. `elements`: the elements of one latent
        with `log_prob_reduction="sum"`, else 1."""
        self.step = step if self.due(step) else None
        self.elements = max(1, int(elements))
        self.deviation = 0.0

    def observe(self, ratio_min: torch.Tensor, ratio_max: torch.Tensor) -> None:
        """One trained piece's ratio statistics (`PolicyLossOutput.ratio_min` / `ratio_max`). A NaN ratio is left to
        the non-finite-loss handling (the optimiser step is skipped); a ratio of 0 or inf counts as infinitely far."""
        if not self.armed:
            return
        low, high = float(ratio_min), float(ratio_max)
        if math.isnan(low) or math.isnan(high):
            return
        for value in (math.log(high) if high > 0 else math.inf, -math.log(low) if low > 0 else math.inf):
            self.deviation = max(self.deviation, value / self.elements)

    def finish(self, accelerator) -> Optional[float]:
        """Before the first parameter change of an armed update: the max over ranks (returned), and the stop when it
        is too large (on every rank together). `None` when not armed."""
        if not self.armed:
            return None
        step, self.step = self.step, None
        self.checked_once = True
        deviation = max_over_ranks(accelerator, float(self.deviation))  # every rank decides on the same number
        per = " per latent element" if self.elements > 1 else ""
        logger.info(
            "Step %d: on-policy max |log ratio|%s = %.3g (tolerance %.3g).", step, per, deviation, self.tolerance
        )
        if deviation > self.tolerance:
            raise TrainingStopped(
                f"Step {step}: the log-probs of the rollout's own samples, recomputed before any parameter change, "
                f"differ from the recorded ones by max |log ratio|{per} = {deviation:.3g} > ratio_check_tolerance="
                f"{self.tolerance:.3g} (mixed_precision={self.mixed_precision!r}), so the training pass is not the "
                f"function that sampled: look for a different precision, attention backend or torch.compile between "
                f"the rollout and the recompute, dropout or train mode, or a scheduler configured differently; raise "
                f"ratio_check_tolerance, or set ratio_check_steps=0 to skip the check."
            )
        return deviation
