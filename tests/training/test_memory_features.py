"""Memory features a user switches on: sliced VAE decoding for the rewards (same images), 8-bit AdamW (a clear error when
bitsandbytes is missing), the prompt-embedding cache with the text encoders freed or offloaded, the VAE offloaded, and
the scale-out switches as config fields."""

import importlib.util

import pytest
import torch
from test_trainer import PROMPTS, make_config  # the trainer tests' tiny FLUX run (same folder)
from test_trainer import brightness as _brightness

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


# ---------------------------------------------------------------------------------- prompt cache and offloading


def _config(tmp_path, **overrides) -> GRPOConfig:
    return make_config(tmp_path, **{"max_train_steps": 2, **overrides})


def _train(config):
    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    trainer = GRPOTrainer(config, pipe, rewards={_brightness: 1.0}, train_prompts=PROMPTS)
    trainer.train()
    lora = {n: p.detach().clone() for n, p in pipe.denoiser.named_parameters() if "lora" in n}
    return trainer, lora


def test_cached_prompts_and_freed_text_encoders_train_the_same_lora(tmp_path):
    """The run that encodes every prompt each step and the one that rolls out from the cache with the text encoders
    deleted and the VAE offloaded take the same updates (the tiny FLUX encodes a row identically in any batch: 0
    measured; tolerance 1e-6)."""
    _, plain = _train(_config(tmp_path / "plain"))
    lean, cached = _train(
        _config(
            tmp_path / "lean",
            cache_prompt_embeds=True,
            prompt_embeds_cache_dir=str(tmp_path / "embeds"),
            offload_text_encoders="free",
            offload_vae=True,
        )
    )
    assert lean.pipeline.text_encoder is None and lean.pipeline.text_encoder_2 is None
    assert lean.pipeline.offloaded_modules == {"vae"}
    assert len(lean.prompt_cache) == len(PROMPTS) and (tmp_path / "embeds" / "cache.json").is_file()
    assert set(cached) == set(plain)
    for name, value in plain.items():
        torch.testing.assert_close(cached[name], value, rtol=0, atol=1e-6)


def test_a_second_run_reads_the_disk_cache_instead_of_encoding(tmp_path):
    config = dict(cache_prompt_embeds=True, prompt_embeds_cache_dir=str(tmp_path / "embeds"), max_train_steps=1)
    first, _ = _train(_config(tmp_path / "a", **config))
    second, _ = _train(_config(tmp_path / "b", offload_text_encoders="cpu", vae_slicing=True, **config))
    assert not first.prompt_cache.loaded_from_disk and second.prompt_cache.loaded_from_disk
    # sliced decoding changes the images by float32 rounding only (test_sliced_vae_decoding_gives_the_same_images...)
    assert second.pipeline.vae.use_slicing
    assert second.pipeline.offloaded_modules == {"text_encoder", "text_encoder_2"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"offload_text_encoders": "free"}, "offload_text_encoders='free' needs cache_prompt_embeds=True"),
        ({"offload_text_encoders": "gpu"}, "offload_text_encoders='gpu' is not allowed; choose one of 'none'"),
        ({"prompt_embeds_cache_dir": "/tmp/x"}, "prompt_embeds_cache_dir='/tmp/x' needs cache_prompt_embeds=True"),
        ({"fsdp2_cpu_offload": True}, "fsdp2_cpu_offload=True has no effect without fsdp2=True"),
        ({"fsdp2_reshard_after_forward": False}, "fsdp2_reshard_after_forward=False has no effect without fsdp2"),
        ({"fsdp2": True, "use_ema": True}, "use_ema=True is not supported with fsdp2=True"),
    ],
)
def test_memory_options_that_cannot_work_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GRPOConfig(output_dir=str(tmp_path), **overrides)


def test_the_config_switches_fsdp2_and_reward_overlap_on(tmp_path):
    """`fsdp2`, its two options and `overlap_rewards` are config fields (YAML / CLI) as well as constructor arguments;
    the sharded 2-rank runs of tests/training/test_distributed.py use the config field."""
    from unittest import mock

    from diffusers_mixgrpo.training.trainer import GRPOTrainer

    seen = {}

    def fake_shard(module, options):
        seen["options"] = options
        return module

    config = _config(tmp_path, fsdp2=True, fsdp2_reshard_after_forward=False, fsdp2_cpu_offload=True)
    config.overlap_rewards = True
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    with mock.patch("diffusers_mixgrpo.training.model_setup.apply_fsdp2", fake_shard):
        trainer = GRPOTrainer(config, pipe, rewards={_brightness: 1.0}, train_prompts=PROMPTS)
    assert trainer.overlap_rewards
    assert seen["options"].reshard_after_forward is False and seen["options"].cpu_offload is True
    with pytest.raises(RuntimeError, match="fsdp2 needs an initialised process group"):
        fresh = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
        GRPOTrainer(_config(tmp_path / "b", fsdp2=True), fresh, rewards={_brightness: 1.0}, train_prompts=PROMPTS)


def test_the_memory_and_scale_out_switches_are_command_line_and_yaml_flags(tmp_path):
    from diffusers_mixgrpo.training.config import parse_args

    c = parse_args(
        ["--output_dir", str(tmp_path), "--cache_prompt_embeds", "--offload_text_encoders", "free", "--offload_vae",
         "true", "--vae_tiling", "--fsdp2", "true", "--fsdp2_reshard_after_forward", "false", "--overlap_rewards"]
    )  # fmt: skip
    assert (c.cache_prompt_embeds, c.offload_text_encoders, c.offload_vae, c.vae_tiling) == (True, "free", True, True)
    assert (c.fsdp2, c.fsdp2_reshard_after_forward, c.overlap_rewards) == (True, False, True)
    path = tmp_path / "run.yaml"
    path.write_text("offload_text_encoders: cpu\ncache_prompt_embeds: true\nprompt_embeds_cache_dir: /data/e\n")
    c = parse_args(["--config", str(path), "--output_dir", str(tmp_path)])
    assert (c.offload_text_encoders, c.prompt_embeds_cache_dir) == ("cpu", "/data/e")
