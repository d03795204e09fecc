"""Stable Diffusion XL on MixDDIMSDEScheduler: the family contract on a tiny SDXL, plus its scheduler swap."""

import pytest
from diffusers import DDIMScheduler
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo import MixDDIMSDEScheduler
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_sdxl_pipeline


class TestSDXLContract(FamilyContract):
    family = "sdxl"
    guidance = 5.0
    stock_guidances = (5.0, 1.0)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    mix_scheduler = MixDDIMSDEScheduler
    # measured: 1.0e-6 (CFG 5) and 3.0e-7 (no CFG) against the stock EulerDiscreteScheduler (earlier 8.9e-7, 3.9e-7)
    stock_atol = 1e-5
    lora_atol = 1e-5  # measured 8.6e-7
    prefix_atol = 1e-6  # measured 0 (bitwise, 1 and 2 threads)
    prefix_logp_atol = 1e-6  # measured 0

    def build_stock(self, seed=0):
        return build_tiny_sdxl_pipeline(seed=seed)


def test_swap_keeps_the_euler_grid_and_lands_on_sigma_zero():
    stock = build_tiny_sdxl_pipeline()
    pipe = grpo(stock)
    assert pipe.model_family == "sdxl" and isinstance(pipe.scheduler, MixDDIMSDEScheduler)
    assert pipe.scheduler.config.set_alpha_to_one and not pipe.scheduler.config.clip_sample
    for n in (6, 25, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert pipe.scheduler.timesteps.tolist() == stock.scheduler.timesteps.long().tolist()


def test_a_ddim_config_keeps_its_own_final_alpha():
    stock = build_tiny_sdxl_pipeline()
    stock.scheduler = DDIMScheduler.from_config(stock.scheduler.config, set_alpha_to_one=False, clip_sample=False)
    pipe = grpo(stock)
    assert not pipe.scheduler.config.set_alpha_to_one


def test_karras_sigmas_are_refused_with_the_flag_named():
    stock = build_tiny_sdxl_pipeline()
    stock.scheduler.register_to_config(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        grpo(stock)


def test_force_zeros_for_empty_prompt_follows_the_wrapped_pipeline():
    stock = build_tiny_sdxl_pipeline()
    stock.register_to_config(force_zeros_for_empty_prompt=False)
    pipe = grpo(stock)
    embeds = pipe.encode_prompts(PROMPTS, guidance_scale=5.0)
    assert float(embeds["negative_prompt_embeds"].abs().max()) > 0  # the encoded "" prompt, not zeros
    default = grpo(build_tiny_sdxl_pipeline()).encode_prompts(PROMPTS, guidance_scale=5.0)
    assert float(default["negative_prompt_embeds"].abs().max()) == 0
