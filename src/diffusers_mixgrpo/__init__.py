"""diffusers-mixgrpo: MixGRPO (sliding-window mixed ODE-SDE GRPO) for Hugging Face diffusers."""

from .utils.lazy import lazy_exports, lazy_names

__version__ = "0.1.0"

# The modules of the public names, and their names. Imported lazily so that `import diffusers_mixgrpo` stays cheap
# (no transformers/peft import until a trainer or reward is used).
_import_structure = {
    ".schedulers.scheduling_mix_ode_sde": ["MixODESDEScheduler", "MixODESDESchedulerOutput"],
    ".schedulers.scheduling_mix_ddim_sde": ["MixDDIMSDEScheduler"],
    ".schedulers.sliding_window": ["SlidingWindowSchedule"],
    ".schedulers.sde_steps": ["SDEStepSchedule"],
    ".pipelines.pipeline_grpo": ["GRPOTrainingPipeline"],
    ".pipelines.rollout_batch": ["RolloutBatch", "PromptEmbeds"],
    ".pipelines.prompt_cache": ["PromptEmbedsCache"],
    ".training.config": ["GRPOConfig"],
    ".training.trainer": ["GRPOTrainer"],
}

__all__ = lazy_names(_import_structure)
__getattr__, __dir__ = lazy_exports(__name__, _import_structure)
