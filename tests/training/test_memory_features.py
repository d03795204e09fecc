"""Memory features a user switches on: sliced VAE decoding for the rewards (same images), 8-bit AdamW (a clear error when
bitsandbytes is missing)."""

import importlib.util

import pytest
import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.errors import ConfigError
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


def _rollout(pipe):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    return pipe.rollout(
        ["a cat", "a dog"],
        num_generations=2,
        num_inference_steps=4,
        sde_window=(0, 2),
        height=32,
        width=32,
        generator=gens,
        max_batch_size=4,
    )


def test_sliced_vae_decoding_gives_the_same_images_one_at_a_time():
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    whole = _rollout(pipe)
    pipe.stock_pipeline.vae.enable_slicing()  # what docs/training.md tells users to call before train()
    sliced = _rollout(pipe)
    assert pipe.stock_pipeline.vae.use_slicing
    # the same images up to float32 rounding of a batch of 1 vs 4 (1.1e-6 measured; a grey level is 3.9e-3)
    torch.testing.assert_close(sliced.images, whole.images, rtol=0, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_adamw8bit_without_bitsandbytes_fails_at_construction_naming_the_package(tmp_path):
    with pytest.raises(ConfigError, match="optimizer='adamw8bit' needs the bitsandbytes package"):
        GRPOConfig(output_dir=str(tmp_path), optimizer="adamw8bit")
