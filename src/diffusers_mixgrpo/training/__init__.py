"""Training: `GRPOConfig`, advantages, the GRPO loss, checkpoints, EMA, logging and Hub helpers (and the trainer)."""

from importlib import import_module
from typing import Any

# Public names and their modules, imported lazily (the Hub and plotting helpers pull in heavier libraries).
_LAZY = {
    "GRPOConfig": "config",
    "METHOD_PRESETS": "presets",
    "parse_args": "config",
    "default_lora_target_modules": "config",
    "compute_advantages": "advantages",
    "finite_group_mask": "advantages",
    "group_advantages": "advantages",
    "mix_rewards": "advantages",
    "policy_loss": "losses",
    "grpo_loss": "losses",
    "rollout_kl": "losses",
    "reference_kl": "losses",
    "CheckpointManager": "checkpointing",
    "ParameterEMA": "ema",
    "write_model_card": "hub",
    "push_folder_to_hub": "hub",
    "make_image_grid": "logging_utils",
    "plot_reward_curve": "logging_utils",
    "resolve_report_to": "logging_utils",
    "init_trackers": "logging_utils",
    "GRPOTrainer": "trainer",
    "TrainOutput": "trainer",
    "load_training_pipeline": "trainer",
    "MixGRPOError": "errors",
    "ConfigError": "errors",
    "CheckpointError": "errors",
    "DiskFullError": "errors",
    "TrainingStopped": "errors",
    "read_sampling_defaults": "model_defaults",
    "write_sampling_defaults": "model_defaults",
    "public_config_dict": "public_config",
    "RunSummary": "run_summary",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
