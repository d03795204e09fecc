"""Training: the trainer and its config, evaluation presets, the GRPO loss, checkpoints, EMA, Hub and logging helpers.

    from diffusers_mixgrpo.training import GRPOConfig, GRPOTrainer, load_training_pipeline

The command line (`mixgrpo-train`, `examples/train_mixgrpo.py`) is `diffusers_mixgrpo.training.cli:main`; internals
(argument parsing, resume checks, distributed set-up) stay in their modules.
"""

from ..utils.lazy import lazy_exports, lazy_names

# The modules of the public names, and their names, imported lazily (the trainer, Hub and plotting helpers pull in heavier libraries).
_import_structure = {
    # the trainer and its inputs / outputs
    ".config": ["GRPOConfig"],
    ".trainer": ["GRPOTrainer", "TrainOutput", "load_training_pipeline"],
    ".run_summary": ["RunSummary"],
    ".model_defaults": ["read_sampling_defaults", "write_sampling_defaults"],
    # evaluation (the fixed-prompt protocol of `mixgrpo-eval` and the trainer's periodic evaluation)
    ".evaluation": ["EVAL_PRESETS", "EvalPreset", "EvaluationResult", "get_eval_preset"],
    # building blocks for a custom loop
    ".advantages": ["compute_advantages"],
    ".losses": ["policy_loss", "grpo_loss"],
    ".checkpointing": ["CheckpointManager"],
    ".ema": ["ParameterEMA"],
    # Hub and logging
    ".hub": ["write_model_card", "push_folder_to_hub"],
    ".logging_utils": ["tile_images", "plot_reward_curve"],
    # errors a caller may catch
    ".errors": [
        "MixGRPOError",
        "ConfigError",
        "ModelLoadError",
        "RewardLoadError",
        "CheckpointError",
        "CorruptCheckpointError",
        "DiskFullError",
        "TrainingStopped",
    ],
}

__all__ = lazy_names(_import_structure)

__getattr__, __dir__ = lazy_exports(__name__, _import_structure)
