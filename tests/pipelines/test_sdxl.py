"""Stable Diffusion XL on MixDDIMSDEScheduler: the family checks on a tiny SDXL, plus its scheduler swap."""

import family_checks as checks
import pytest
from diffusers import DDIMScheduler

from diffusers_mixgrpo import MixDDIMSDEScheduler
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_sdxl_pipeline


def _sample_pt(stock, prompt, noise, steps, guidance, size):
    return stock(
        prompt,
        height=size,
        width=size,
        num_inference_steps=steps,
        latents=noise,
        guidance_scale=guidance,
        output_type="pt",
    ).images


SPEC = checks.FamilySpec(
    name="sdxl",
    build=lambda seed: build_tiny_sdxl_pipeline(seed=seed),
    guidance=5.0,
    size=32,
    lora_targets=["to_q", "to_k", "to_v", "to_out.0"],
    stock_sample=_sample_pt,
    # measured: 8.9e-7 (CFG 5) and 3.9e-7 (no CFG) against the stock EulerDiscreteScheduler
    stock_atol=1e-5,
    prefix_atol=1e-5,  # measured 0 (bitwise)
)


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_empty_window_reproduces_the_stock_sdxl_euler_sampler(guidance):
    checks.check_empty_window_reproduces_the_stock_pipeline(SPEC, guidance)


def test_on_policy_ratio_is_exactly_one():
    batch = checks.check_on_policy_ratio_is_exactly_one(SPEC)
    assert batch.images.shape == (6, 3, 32, 32)


def test_lora_gradients_reach_the_unet_adapter():
    checks.check_lora_gradients_reach_the_adapter(SPEC)


def test_trained_lora_loads_into_the_stock_sdxl_pipeline(tmp_path):
    checks.check_trained_lora_loads_into_the_stock_pipeline(SPEC, tmp_path)


def test_prefix_sharing_equals_no_sharing():
    checks.check_prefix_sharing_equals_no_sharing(SPEC)


def test_swap_keeps_the_euler_grid_and_lands_on_sigma_zero():
    stock = build_tiny_sdxl_pipeline()
    pipe = checks.grpo(stock)
    assert pipe.model_family == "sdxl" and isinstance(pipe.scheduler, MixDDIMSDEScheduler)
    assert pipe.scheduler.config.set_alpha_to_one and not pipe.scheduler.config.clip_sample
    for n in (6, 25, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert pipe.scheduler.timesteps.tolist() == stock.scheduler.timesteps.long().tolist()


def test_a_ddim_config_keeps_its_own_final_alpha():
    stock = build_tiny_sdxl_pipeline()
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config, set_alpha_to_one=False, clip_sample=False)
    pipe = checks.grpo(stock)
    assert not pipe.scheduler.config.set_alpha_to_one


def test_karras_sigmas_are_refused_with_the_flag_named():
    stock = build_tiny_sdxl_pipeline()
    stock.scheduler.register_to_config(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        checks.grpo(stock)


def test_force_zeros_for_empty_prompt_follows_the_wrapped_pipeline():
    stock = build_tiny_sdxl_pipeline()
    stock.register_to_config(force_zeros_for_empty_prompt=False)
    pipe = checks.grpo(stock)
    embeds = pipe.encode_prompts(checks.PROMPTS, guidance_scale=5.0)
    assert float(embeds["negative_prompt_embeds"].abs().max()) > 0  # the encoded "" prompt, not zeros
    default = checks.grpo(build_tiny_sdxl_pipeline()).encode_prompts(checks.PROMPTS, guidance_scale=5.0)
    assert float(default["negative_prompt_embeds"].abs().max()) == 0
