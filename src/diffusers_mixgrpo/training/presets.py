"""Method presets: what each `GRPOConfig.method` fills in for the fields left at `None` (per-method defaults as data).

Values from the MixGRPO paper / released scripts (algorithm notes sections 2-4); DanceGRPO: all steps SDE with eta
0.3, a random 60% of the steps trained. `window_size=None` for DanceGRPO means "every trainable step" (N - 1),
resolved once N is known.
"""

from typing import Any

from .errors import ConfigError

__all__ = ["METHODS", "METHOD_PRESETS", "apply_method_preset"]

METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "mixgrpo": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 25,
        "window_stride": 1,
        "tail_solver": "euler",
        "tail_ratio": None,
        "train_timestep_fraction": 1.0,
    },
    "flash": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 20,
        "window_stride": 1,
        "tail_solver": "dpmsolver++",
        "tail_ratio": 0.4,
        "train_timestep_fraction": 1.0,
    },
    "flash_star": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 20,
        "window_stride": 0,
        "tail_solver": "dpmsolver++",
        "tail_ratio": 0.2,
        "train_timestep_fraction": 1.0,
    },
    "dancegrpo": {
        "sde_type": "dance_grpo",
        "eta": 0.3,
        "window_size": None,
        "window_shift_interval": 25,
        "window_stride": 0,
        "tail_solver": "euler",
        "tail_ratio": None,
        "train_timestep_fraction": 0.6,
    },
}
#: The allowed values of `method`.
METHODS = tuple(METHOD_PRESETS)


def apply_method_preset(config: Any) -> None:
    """Fill the fields of `config` left at `None` with its `method`'s preset; explicit values win."""
    if config.method not in METHOD_PRESETS:
        raise ConfigError(f"method={config.method!r} is not a known preset; allowed: {', '.join(METHODS)}.")
    for name, value in METHOD_PRESETS[config.method].items():
        if getattr(config, name) is None:
            setattr(config, name, value)
    if config.window_size is None:  # DanceGRPO: every trainable step is an SDE step
        config.window_size = max(1, config.num_inference_steps - 1)
