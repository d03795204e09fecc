"""Which denoising steps a rollout samples with the SDE and trains: MixGRPO's sliding window (the `window_*` fields,
`schedulers.SlidingWindowSchedule`) or steps given directly (`sde_steps`, or `num_sde_steps` drawn per iteration,
`schedulers.SDEStepSchedule`). The config's rules for these fields, and the schedule the trainer builds from them.

A trained step is never the last sampling step, so step indices stop at `num_inference_steps - 2`.
"""

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Union

from .errors import ConfigError
from .presets import METHOD_PRESETS

if TYPE_CHECKING:  # the schedules are imported when built: the config (and `--help`) need neither numpy nor torch
    from ..schedulers.sde_steps import SDEStepSchedule
    from ..schedulers.sliding_window import SlidingWindowSchedule

__all__ = ["build_step_schedule", "check_step_selection", "sde_step_schedule_kwargs", "sliding_window_kwargs"]

#: The fields of the sliding window, which `sde_steps` / `num_sde_steps` replace.
WINDOW_FIELDS = (
    "window_size",
    "window_shift_interval",
    "window_stride",
    "window_strategy",
    "window_roll_back",
    "window_max_start",
    "window_min_shift_interval",
    "window_exp_decay_k",
    "window_exp_decay_threshold",
)


def _explicit(config) -> bool:
    return config.sde_steps is not None or config.num_sde_steps is not None


def check_step_selection(config) -> None:
    """`ConfigError` naming the values when the window or SDE-step fields of `config` (a `GRPOConfig` with its preset
    applied) are out of range or contradict each other."""
    if config.sde_step_range is not None and config.num_sde_steps is None:
        raise ConfigError(
            f"sde_step_range={config.sde_step_range} has no effect without num_sde_steps; set num_sde_steps or "
            f"leave sde_step_range unset."
        )
    if config.sde_step_layout != "window" and config.num_sde_steps is None:
        raise ConfigError(
            f"sde_step_layout={config.sde_step_layout!r} has no effect without num_sde_steps; set num_sde_steps or "
            f"leave sde_step_layout at 'window'."
        )
    if _explicit(config):
        _check_sde_steps(config)
    else:
        _check_window(config)


def _check_window(config) -> None:
    n = config.num_inference_steps
    if not 1 <= config.window_size <= n - 1:
        raise ConfigError(
            f"window_size={config.window_size!r} is not allowed; it must be an integer in "
            f"[1, num_inference_steps - 1] = [1, {n - 1}] (the last sampling step is never trained)."
        )
    if config.window_max_start is not None and not 0 <= config.window_max_start <= n - 2:
        raise ConfigError(
            f"window_max_start={config.window_max_start!r} is not allowed; it must lie in "
            f"[0, num_inference_steps - 2] = [0, {n - 2}]."
        )
    if (
        config.window_min_shift_interval is not None
        and config.window_min_shift_interval > config.window_shift_interval
    ):
        raise ConfigError(
            f"window_min_shift_interval={config.window_min_shift_interval} is not allowed; it must be <= "
            f"window_shift_interval={config.window_shift_interval}."
        )


def _check_sde_steps(config) -> None:
    n, steps, counts = config.num_inference_steps, config.sde_steps, config.num_sde_steps
    if steps is not None and counts is not None:
        raise ConfigError(
            f"sde_steps={steps} and num_sde_steps={counts} are both set; give the SDE steps one way (a fixed list, "
            f"or the counts to draw from)."
        )
    if steps is not None and (
        not steps or any(not 0 <= s <= n - 2 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:]))
    ):
        raise ConfigError(
            f"sde_steps={steps} is not allowed; it must be a non-empty, sorted list of unique step indices in "
            f"[0, num_inference_steps - 2] = [0, {n - 2}] (the last sampling step is never trained)."
        )
    if config.sde_step_range is not None and (
        len(config.sde_step_range) != 2 or not 0 <= config.sde_step_range[0] < config.sde_step_range[1] <= n - 1
    ):
        raise ConfigError(
            f"sde_step_range={config.sde_step_range} is not allowed; it must be two indices [low, high) with "
            f"0 <= low < high <= num_inference_steps - 1 = {n - 1}."
        )
    if counts is not None:
        low, high = config.sde_step_range or (0, n - 1)
        if not counts or any(not 1 <= k <= high - low for k in counts):
            raise ConfigError(
                f"num_sde_steps={counts} is not allowed; each count must lie in [1, {high - low}], the number of "
                f"steps in sde_step_range [{low}, {high})."
            )
    if config.method == "dancegrpo":
        raise ConfigError(
            "method='dancegrpo' samples every step with the SDE, which sde_steps / num_sde_steps would override; use "
            "method='mixgrpo' (or 'flash') with them, or drop them for DanceGRPO."
        )
    preset = METHOD_PRESETS[config.method]
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    given = "sde_steps" if steps is not None else "num_sde_steps"
    for name in WINDOW_FIELDS:  # compared with the preset, so a saved run config (presets written out) still loads
        if getattr(config, name) != (preset[name] if name in preset else defaults[name]):
            raise ConfigError(
                f"{name}={getattr(config, name)!r} has no effect with {given} set (they replace the sliding window); "
                f"leave {name} unset."
            )


def sliding_window_kwargs(config) -> dict[str, Any]:
    """Keyword arguments for `SlidingWindowSchedule(**kwargs)` from `config`'s `window_*` fields."""
    return {
        "num_inference_steps": config.num_inference_steps,
        "window_size": config.window_size,
        "shift_interval": config.window_shift_interval,
        "stride": config.window_stride,
        "strategy": config.window_strategy,
        "roll_back": config.window_roll_back,
        "max_start": config.window_max_start,
        "min_shift_interval": config.window_min_shift_interval,
        "exp_decay_k": config.window_exp_decay_k,
        "exp_decay_threshold": config.window_exp_decay_threshold,
        "seed": config.seed,
    }


def sde_step_schedule_kwargs(config) -> Optional[dict[str, Any]]:
    """Keyword arguments for `SDEStepSchedule(**kwargs)` when `sde_steps` or `num_sde_steps` is set; `None` when the
    sliding window chooses the SDE steps."""
    if not _explicit(config):
        return None
    return {
        "num_inference_steps": config.num_inference_steps,
        "steps": config.sde_steps,
        "num_steps": config.num_sde_steps,
        "step_range": config.sde_step_range,
        "layout": config.sde_step_layout,
        "seed": config.seed,
    }


def build_step_schedule(config) -> Union["SlidingWindowSchedule", "SDEStepSchedule"]:
    """The schedule that picks each iteration's SDE steps: `SDEStepSchedule` with `sde_steps` / `num_sde_steps`, else
    MixGRPO's `SlidingWindowSchedule`. Both draw from `(seed, iteration)` only and save their state in checkpoints."""
    from ..schedulers.sde_steps import SDEStepSchedule
    from ..schedulers.sliding_window import SlidingWindowSchedule

    kwargs = sde_step_schedule_kwargs(config)
    return SDEStepSchedule(**kwargs) if kwargs else SlidingWindowSchedule(**sliding_window_kwargs(config))
