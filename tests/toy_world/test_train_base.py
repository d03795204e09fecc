"""The base-model recipe (a few steps of each stage) is deterministic and saves a stock FluxPipeline."""

import json

import pytest
import torch

from diffusers_mixgrpo.toy_world.train_base import main

TINY = dict(num_train_images=32, vae_steps=1, vae_batch_size=4, train_steps=2, train_batch_size=4, eval_every=0)


@pytest.mark.slow
def test_cli_is_deterministic_and_saves_a_loadable_flux_pipeline(tmp_path):
    from diffusers import FluxPipeline

    args = [f"--{k}={v}" for k, v in TINY.items()]
    pipes = []
    for run in ("a", "b"):
        main([*args, "--output_dir", str(tmp_path / run), "--no_progress"])
        pipes.append(FluxPipeline.from_pretrained(tmp_path / run, local_files_only=True))
    a, b = pipes
    for name in ("transformer", "vae"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"{name}.{k}")
    assert a.transformer.config.guidance_embeds and a.vae.config.scaling_factor == b.vae.config.scaling_factor
    summary = json.loads((tmp_path / "a" / "toy_base_training.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["vae_steps"] == 1
    assert not torch.are_deterministic_algorithms_enabled()  # the global torch state is restored


def test_loading_a_folder_without_a_pipeline_says_how_to_build_one(tmp_path):
    from diffusers_mixgrpo.toy_world.base_weights import load_toy_base_pipeline

    with pytest.raises(FileNotFoundError, match="train_base --output_dir"):
        load_toy_base_pipeline(tmp_path)
