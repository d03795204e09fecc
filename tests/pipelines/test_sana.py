"""SANA on MixODESDEScheduler: the family checks on a tiny SANA (Gemma-2, DC-AE), its prompt instruction and grid."""

import family_checks as checks
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from diffusers_mixgrpo import MixODESDEScheduler
from diffusers_mixgrpo.pipelines.adapters.sana import stock_complex_human_instruction
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_sana_pipeline


def _first_order_dpm(scheduler):
    # first-order DPM-Solver++ on the flow-sigma grid is the Euler step: the stock sampler the Mix ODE equals
    return DPMSolverMultistepScheduler.from_config(scheduler.config, solver_order=1)


def _sample(stock, prompt, noise, steps, guidance, size):
    return stock(
        prompt,
        height=size,
        width=size,
        num_inference_steps=steps,
        latents=noise,
        guidance_scale=guidance,
        output_type="pt",
        use_resolution_binning=False,
    ).images


SPEC = checks.FamilySpec(
    name="sana",
    build=lambda seed: build_tiny_sana_pipeline(seed=seed),
    guidance=4.5,
    size=32,
    lora_targets=["to_q", "to_k", "to_v", "to_out.0"],
    stock_sample=_sample,
    reference_scheduler=_first_order_dpm,
    # measured: 4.8e-7 (CFG 4.5) and 3.0e-7 (no CFG) against the stock pipeline with first-order DPM-Solver++
    stock_atol=1e-5,
    prefix_atol=1e-5,  # measured 1.9e-6 (latents), 6e-8 (log-probs)
)


@pytest.mark.parametrize("guidance", [4.5, 1.0], ids=["cfg", "no-cfg"])
def test_empty_window_reproduces_the_stock_sana_pipeline_on_its_grid(guidance):
    checks.check_empty_window_reproduces_the_stock_pipeline(SPEC, guidance)


def test_on_policy_ratio_is_exactly_one():
    batch = checks.check_on_policy_ratio_is_exactly_one(SPEC)
    assert batch.images.shape == (6, 3, 32, 32)


def test_lora_gradients_reach_the_transformer_adapter():
    checks.check_lora_gradients_reach_the_adapter(SPEC)


def test_trained_lora_loads_into_the_stock_sana_pipeline(tmp_path):
    checks.check_trained_lora_loads_into_the_stock_pipeline(SPEC, tmp_path)


def test_prefix_sharing_equals_no_sharing():
    checks.check_prefix_sharing_equals_no_sharing(SPEC)


def test_swap_keeps_the_dpm_solver_flow_grid_and_integer_timesteps():
    stock = build_tiny_sana_pipeline(flow_shift=3.0)
    pipe = checks.grpo(stock)
    assert isinstance(pipe.scheduler, MixODESDEScheduler)
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_sigmas_grid == "dpmsolver"
    for n in (4, 20, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert torch.equal(pipe.scheduler.sigmas, stock.scheduler.sigmas)
        assert torch.equal(pipe.scheduler.timesteps, stock.scheduler.timesteps.float())


def test_prompts_carry_the_stock_complex_human_instruction_and_masks():
    stock = build_tiny_sana_pipeline()
    pipe = checks.grpo(stock)
    embeds = pipe.encode_prompts(checks.PROMPTS, guidance_scale=4.5)
    pe, mask, npe, nmask = stock.encode_prompt(
        checks.PROMPTS, True, complex_human_instruction=stock_complex_human_instruction()
    )
    assert torch.equal(embeds["prompt_embeds"], pe) and torch.equal(embeds["prompt_attention_mask"], mask)
    assert torch.equal(embeds["negative_prompt_embeds"], npe) and torch.equal(
        embeds["negative_prompt_attention_mask"], nmask
    )
    assert embeds["prompt_embeds"].shape[1] == 300  # max_sequence_length, the stock default
    assert stock_complex_human_instruction()[-1] == "User Prompt: "
    pipe.adapter.complex_human_instruction = []
    plain = pipe.encode_prompts(checks.PROMPTS, guidance_scale=4.5)
    assert not torch.equal(plain["prompt_embeds"], embeds["prompt_embeds"])
    assert torch.equal(plain["negative_prompt_embeds"], embeds["negative_prompt_embeds"])  # never instructed
