"""Training-health warnings: settings, and measurements of the first optimiser step, under which a run learns (almost)
nothing, each logged once per run with the number that triggered it and the fix (docs/training.md, "Trusting a
run"). The streaks over many steps (non-finite rewards, zero reward spread) are in `health.py`.

- `warn_on_settings`, before the model loads: a LoRA update too small to move a sample (`LORA_UPDATE_WARN`), and fp16
  without a working gradient scaler (a warning without one; FSDP2, whose optimiser steps outside accelerate, is
  refused: accelerate's scaler would scale the loss and never unscale the gradients).
- `GradientWarning`, at the run's first optimiser step: gradients so small that `adam_epsilon` swallows Adam's step.
"""

import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: `learning_rate * lora_alpha / lora_rank` below which `warn_on_settings` warns. With peft's default init the LoRA's
#: B matrices start at 0 and the first Adam step moves each of their weights by about `learning_rate`, so the change
#: of the adapted weights, and of the samples, is proportional to this product (rank and alpha enter only through it:
#: on the toy model, r = 8 / alpha = 2, 8, 32 and r = 32 / alpha = 32 at the same product give the same pixels).
#: Measured on the toy model (16 held-out prompts, ODE samples from fixed noise, one optimiser step with
#: `toy_preference`): the share of 8-bit pixel values that change is 0.0081% at 1e-7, 0.069% at 1e-6, 0.68% at 1e-5,
#: 6.3% at 1e-4 (max 2 levels) and 48% at 1e-3 (max 19 levels), i.e. about 680 x the product.
LORA_UPDATE_WARN = 1e-6
#: Share of 8-bit pixel values one optimiser step changes per unit of `learning_rate * lora_alpha / lora_rank` on the
#: toy model (measured, see `LORA_UPDATE_WARN`); quoted in the warning.
TOY_PIXEL_CHANGE_PER_UPDATE = 680.0


def warn_on_settings(config: Any, accelerator: Any, fsdp2: Any = None) -> None:
    """The settings checks of a run, before the model loads (`fsdp2`: the trainer's `fsdp2` argument)."""
    warn_small_lora_update(config)
    check_fp16_loss_scaling(config, accelerator, fsdp2)


def warn_small_lora_update(config: Any) -> Optional[float]:
    """Warn when `learning_rate * lora_alpha / lora_rank` is below `LORA_UPDATE_WARN` (LoRA runs); returns the product."""
    if not config.use_lora:
        return None
    update = config.learning_rate * config.lora_alpha / config.lora_rank
    if update < LORA_UPDATE_WARN:
        logger.warning(
            "learning_rate * lora_alpha / lora_rank = %g * %g / %d = %.2g is below %g: the LoRA's B matrices start at "
            "0 and the first optimiser steps move each of their weights by about learning_rate, which at this scale "
            "changes about %.3f%% of the 8-bit pixel values of a sample per step on the toy model (0.069%% at 1e-6), "
            "so the first steps leave the samples almost unchanged. Raise learning_rate or lora_alpha.",
            config.learning_rate,
            config.lora_alpha,
            config.lora_rank,
            update,
            LORA_UPDATE_WARN,
            100 * TOY_PIXEL_CHANGE_PER_UPDATE * update,
        )
    return update


def check_fp16_loss_scaling(config: Any, accelerator: Any, fsdp2: Any = None) -> None:
    """`mixed_precision="fp16"` needs a gradient scaler: accelerate adds one on a GPU (its optimiser wrapper unscales
    and steps), DeepSpeed scales itself. Without one (a CPU run, or an `Accelerator` handed over without fp16) the
    small gradients of the fp16 forward underflow to 0: a warning. With the trainer's FSDP2 the optimiser steps
    outside accelerate, so a scaler would scale the loss and never unscale the gradients: refused (`ConfigError`)."""
    if config.mixed_precision != "fp16" or _is_deepspeed(accelerator):
        return
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and _uses_fsdp2(config, accelerator, fsdp2):
        raise ConfigError(
            "mixed_precision='fp16' with FSDP2 is not supported: the trainer steps the sharded optimiser itself, so "
            "accelerate's gradient scaler would scale the loss and never unscale the gradients; use "
            "mixed_precision='bf16'."
        )
    if scaler is None:
        logger.warning(
            "mixed_precision='fp16' without a gradient scaler (accelerate adds none on %s, or the Accelerator handed "
            "to the trainer was built without mixed_precision='fp16'): gradients below fp16's smallest value (6e-8) "
            "underflow to 0 and those weights get no update. Use mixed_precision='bf16' (or 'no' on the CPU), or an "
            "Accelerator(mixed_precision='fp16') on a GPU.",
            getattr(accelerator, "device", "this device"),
        )


def _is_deepspeed(accelerator: Any) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).upper().endswith("DEEPSPEED")


def _uses_fsdp2(config: Any, accelerator: Any, fsdp2: Any) -> bool:
    from .distributed import fsdp2_options_from_accelerate
    from .model_setup import resolve_fsdp2

    # as the trainer decides: the argument, else the config (`resolve_fsdp2`), else the launch config (`prepare_model`)
    return resolve_fsdp2(config, fsdp2) is not None or fsdp2_options_from_accelerate(accelerator) is not None


def gradient_rms(params: Sequence[torch.nn.Parameter]) -> Optional[float]:
    """The root mean square of the gradient entries of `params`, leaving out the tensors whose gradient is 0 or
    missing (the LoRA A matrices at the first step, whose gradient is 0 while B is; DeepSpeed keeps no `.grad`).
    Local to this rank (a shard's entries under FSDP2). `None` when no parameter has a non-zero gradient."""
    total, count = 0.0, 0
    for p in params:
        g = p.grad
        if g is None:
            continue
        g = g.to_local() if hasattr(g, "to_local") else g
        squares = float(g.detach().float().pow(2).sum())
        if squares > 0:
            total, count = total + squares, count + g.numel()
    return (total / count) ** 0.5 if count else None


class GradientWarning:
    """At the run's first optimiser step (its accumulated gradients, before clipping): warn once when the gradient RMS
    of the trained parameters is below `GRAD_RMS_WARN_FACTOR x adam_epsilon`. Adam moves a weight by about
    `learning_rate * g / (|g| + adam_epsilon)`, so at `|g| = adam_epsilon` half a step, and nearly nothing below."""

    #: The gradient RMS is compared with this multiple of `adam_epsilon`.
    GRAD_RMS_WARN_FACTOR = 1.0

    def __init__(self, adam_epsilon: float, scaler: Any = None):
        self.adam_epsilon = float(adam_epsilon)
        self.scaler = scaler  # fp16's gradient scaler: the gradients are still scaled before clipping
        self.done = False
        self.rms: Optional[float] = None

    def check(self, params: Sequence[torch.nn.Parameter]) -> Optional[float]:
        """Measure once (the first call that finds gradients) and warn; returns the RMS measured by this call."""
        if self.done:
            return None
        rms = gradient_rms(params)
        if rms is None:
            return None
        if self.scaler is not None and self.scaler.is_enabled():
            rms /= float(self.scaler.get_scale())
        self.done, self.rms = True, rms
        limit = self.GRAD_RMS_WARN_FACTOR * self.adam_epsilon
        if rms < limit:
            logger.warning(
                "The first optimiser step's gradient RMS is %.2g, below adam_epsilon=%.2g: Adam moves a weight by "
                "about learning_rate * g / (|g| + adam_epsilon), so most weights take a small fraction of a step "
                "(%.0f%% at the RMS). Lower adam_epsilon (e.g. to %.0e), or raise the loss scale (with "
                "adv_std='none', scale the reward up).",
                rms,
                self.adam_epsilon,
                100 * rms / (rms + self.adam_epsilon),
                _round_down(rms / 100),
            )
        return rms


def _round_down(value: Union[float, int]) -> float:
    """`value` rounded down to one significant digit (a suggested setting)."""
    import math

    if value <= 0:
        return value
    exp = math.floor(math.log10(value))
    return math.floor(value / 10**exp) * 10**exp
