"""Every shipped config takes its cited recipe's number of optimiser steps per iteration (GRPO training step), and
trains a LoRA at a LoRA learning rate."""

from pathlib import Path

import pytest

from diffusers_mixgrpo.training.config import GRPOConfig

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
# config -> optimiser steps per iteration of the recipe its header cites
RECIPE_STEPS = {
    # official MixGRPO script: 12 images per GPU, micro-batches of 1, accumulation 3
    "flux_mixgrpo": 4,
    "flux_mixgrpo_flash": 4,
    "flux_mixgrpo_flash_star": 4,
    "flux_mixgrpo_cps": 4,
    "flux_mixgrpo_guarded": 4,
    "flux_dancegrpo": 4,
    "flux_flow_grpo_fast": 4,  # flux_mixgrpo's batches with Flow-GRPO-Fast's SDE steps
    # Flow-Factory's LoRA examples: gradient_step_per_epoch 2
    "flux2_mixgrpo": 2,
    "flux2_klein_mixgrpo": 2,
    "qwenimage_mixgrpo": 2,
    "zimage_mixgrpo": 2,
    "wan_mixgrpo": 2,
    # Flow-GRPO's SD3.5 runs: "gradients are updated twice per epoch"
    "sd3_mixgrpo": 2,
    "sana_mixgrpo": 2,
    # DDPO (config/dgx.py): (8 x 4) / (4 x 2) = 4
    "sd15_mixgrpo": 4,
    # the diffusers research project trains offline, 16 samples per step: one step on 12 rollouts
    "sdxl_mixgrpo": 1,
}


def test_every_shipped_config_is_in_the_table():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(RECIPE_STEPS)


@pytest.mark.parametrize("name", sorted(RECIPE_STEPS))
def test_config_takes_its_recipes_optimizer_steps_per_iteration(name):
    config = GRPOConfig.from_yaml(CONFIGS / f"{name}.yaml")
    assert config.train_batch_size is not None  # a training micro-batch of its own, not the rollout chunk
    steps = config.rollouts_per_device / (config.train_batch_size * config.gradient_accumulation_steps)
    assert steps == config.optimizer_steps_per_iteration == RECIPE_STEPS[name]
    if config.use_lora and config.model_family == "flux":
        assert config.learning_rate >= 1e-4  # not the paper's full fine-tune rate 1e-5


def test_the_guarded_config_trains_on_one_reward_and_watches_the_others_with_the_lora_reference_kl():
    config = GRPOConfig.from_yaml(CONFIGS / "flux_mixgrpo_guarded.yaml")
    assert config.rewards == {"hpsv2.1": 1.0} and config.monitor_rewards == ["pickscore", "imagereward"]
    assert config.kl_type == "reference" and config.kl_coeff > 0 and config.use_lora
