"""bfloat16 reward models score within a measured distance of float32 (`reward_dtype: bfloat16`); the figures are
those of `benchmarks/reward_precision.py` (BENCHMARKS.md), on the same tiny models, images and prompts."""

import pytest
import torch
from tiny_reward_checkpoints import PROMPTS, sample_images, tiny_reward_factories

# Largest |bf16 - fp32| score over 32 images (CPU, torch 2.13), measured with benchmarks/reward_precision.py:
# PickScore 4.93e-2 (scores ~14: a relative 3.5e-3, one bf16 rounding of the logit scale), HPS-v2.1 3.67e-3,
# ImageReward 1.23e-2. Tolerance: the measured value + ~25%.
BF16_TOLERANCE = {"pickscore": 6e-2, "hpsv2.1": 4.5e-3, "imagereward": 1.5e-2}


@pytest.fixture(scope="module")
def factories(tiny_clip_dir, tiny_hps_dir, tiny_imagereward_dir):
    return tiny_reward_factories(tiny_clip_dir, tiny_hps_dir, tiny_imagereward_dir)


@pytest.mark.parametrize("name", sorted(BF16_TOLERANCE))
def test_bfloat16_scores_are_within_the_measured_distance_of_float32(factories, name):
    images = sample_images(32, size=(40, 48), seed=0)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(32)]
    ref = factories[name](dtype=torch.float32, batch_size=8)(images, prompts)
    bf16 = factories[name](dtype=torch.bfloat16, batch_size=8)(images, prompts)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    diff = float((bf16 - ref).abs().max())
    assert 0 < diff <= BF16_TOLERANCE[name]  # 0 would mean the dtype never reached the model
