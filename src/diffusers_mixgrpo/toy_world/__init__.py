"""The offline toy text-to-image task: prompts, procedural renderer, programmatic reward and a tiny FLUX base model.

    from diffusers_mixgrpo.toy_world import TOY_PIPELINE_CALL_KWARGS, heldout_prompts, load_toy_base_pipeline
    from diffusers_mixgrpo.rewards import load_reward

    pipe = load_toy_base_pipeline()  # a stock FluxPipeline, 32x32 images; sample with TOY_PIPELINE_CALL_KWARGS
    reward = load_reward("toy_world")  # (images, prompts) -> (B,) float32 in [0, 1]
    prompts = heldout_prompts()
    images = pipe(prompts, **TOY_PIPELINE_CALL_KWARGS, output_type="pt").images
    scores = reward(images, prompts)

Importing this package registers the "toy_world", "toy_preference" and "toy_contrast" rewards (lazily: their modules
load on `load_reward`).
"""

from ..utils.lazy import lazy_exports, lazy_names
from .world import (
    COLOR_NAMES,
    COLORS,
    POSITIONS,
    SHAPES,
    STYLES,
    VOCABULARY,
    ToyObject,
    all_prompts,
    heldout_prompts,
    is_heldout_object,
    is_heldout_prompt,
    make_prompt,
    parse_prompt,
    render,
    render_batch,
    render_objects,
    train_prompt_pool,
    train_prompts,
)

# Names whose modules import diffusers/transformers: loaded on first access.
_import_structure = {
    ".reward": ["ToyWorldReward", "toy_world_accuracy", "make_toy_world_reward"],
    ".preference": ["ToyPreferenceReward", "ToyContrastReward", "toy_contrast"],
    ".base_weights": ["load_toy_base_pipeline", "default_cache_dir"],
    ".base_model": [
        "build_untrained_toy_pipeline",
        "evaluate_toy_pipeline",
        "TOY_PIPELINE_CALL_KWARGS",
        "TOY_MAX_SEQUENCE_LENGTH",
        "TOY_GUIDANCE_SCALE",
        "TOY_NUM_INFERENCE_STEPS",
    ],
    ".train_base": ["build_toy_base_pipeline", "ToyBaseTrainingConfig"],
}

__all__ = [
    "COLORS",
    "COLOR_NAMES",
    "POSITIONS",
    "SHAPES",
    "STYLES",
    "VOCABULARY",
    "ToyObject",
    "all_prompts",
    "heldout_prompts",
    "is_heldout_object",
    "is_heldout_prompt",
    "make_prompt",
    "parse_prompt",
    "render",
    "render_batch",
    "render_objects",
    "train_prompt_pool",
    "train_prompts",
    *lazy_names(_import_structure),
]

__getattr__, __dir__ = lazy_exports(__name__, _import_structure)


def _register_reward() -> None:
    from diffusers_mixgrpo.rewards.registry import register_reward

    register_reward("toy_world", "diffusers_mixgrpo.toy_world.reward:make_toy_world_reward", overwrite=True)
    register_reward(
        "toy_preference", "diffusers_mixgrpo.toy_world.preference:make_toy_preference_reward", overwrite=True
    )
    register_reward("toy_contrast", "diffusers_mixgrpo.toy_world.preference:make_toy_contrast_reward", overwrite=True)


_register_reward()
