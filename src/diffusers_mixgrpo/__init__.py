"""diffusers-mixgrpo: MixGRPO (sliding-window mixed ODE-SDE GRPO) for Hugging Face diffusers."""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names and the module that holds each one. Imported lazily so that `import diffusers_mixgrpo` stays cheap
# (no transformers/peft import until a trainer or reward is used).
_LAZY = {
    "MixODESDEScheduler": "diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde",
    "MixODESDESchedulerOutput": "diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde",
    "MixDDIMSDEScheduler": "diffusers_mixgrpo.schedulers.scheduling_mix_ddim_sde",
    "SlidingWindowSchedule": "diffusers_mixgrpo.schedulers.sliding_window",
    "GRPOTrainingPipeline": "diffusers_mixgrpo.pipelines.pipeline_grpo",
    "RolloutBatch": "diffusers_mixgrpo.pipelines.rollout_batch",
    "PromptEmbeds": "diffusers_mixgrpo.pipelines.rollout_batch",
    "PromptEmbedsCache": "diffusers_mixgrpo.pipelines.prompt_cache",
    "GRPOConfig": "diffusers_mixgrpo.training.config",
    "GRPOTrainer": "diffusers_mixgrpo.training.trainer",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffusers_mixgrpo' has no attribute {name!r}")
