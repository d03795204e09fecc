"""SANA on MixODESDEScheduler: the family contract on a tiny SANA (Gemma-2, DC-AE), its prompt instruction and grid."""

import torch
from diffusers import DPMSolverMultistepScheduler
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo import MixODESDEScheduler
from diffusers_mixgrpo.pipelines.families.sana import stock_complex_human_instruction
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_sana_pipeline


def _first_order_dpm(scheduler):
    # first-order DPM-Solver++ on the flow-sigma grid is the Euler step: the stock sampler the Mix ODE equals
    return DPMSolverMultistepScheduler.from_config(scheduler.config, solver_order=1)


class TestSanaContract(FamilyContract):
    family = "sana"
    guidance = 4.5
    stock_guidances = (4.5, 1.0)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    # measured: 4.2e-7 (CFG 4.5) and 8.9e-7 (no CFG) against the stock pipeline with first-order DPM-Solver++
    stock_atol = 1e-5
    lora_atol = 1e-5  # measured 5.4e-7
    prefix_atol = 3e-5  # measured 3.4e-6 (latents, 2 threads; images 2.1e-6)
    prefix_logp_atol = 1e-6  # measured 6e-8

    def build_stock(self, seed=0):
        return build_tiny_sana_pipeline(seed=seed)

    def reference_scheduler(self, scheduler):
        # first-order DPM-Solver++ on the flow-sigma grid is the Euler step: the stock sampler the Mix ODE equals
        return DPMSolverMultistepScheduler.from_config(scheduler.config, solver_order=1)

    def stock_call_kwargs(self, guidance):
        return {**super().stock_call_kwargs(guidance), "use_resolution_binning": False}


def test_swap_keeps_the_dpm_solver_flow_grid_and_integer_timesteps():
    stock = build_tiny_sana_pipeline(flow_shift=3.0)
    pipe = grpo(stock)
    assert isinstance(pipe.scheduler, MixODESDEScheduler)
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_sigmas_grid == "dpmsolver"
    for n in (4, 20, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert torch.equal(pipe.scheduler.sigmas, stock.scheduler.sigmas)
        assert torch.equal(pipe.scheduler.timesteps, stock.scheduler.timesteps.float())


def test_prompts_carry_the_stock_complex_human_instruction_and_masks():
    stock = build_tiny_sana_pipeline()
    pipe = grpo(stock)
    embeds = pipe.encode_prompts(PROMPTS, guidance_scale=4.5)
    pe, mask, npe, nmask = stock.encode_prompt(
        PROMPTS, True, complex_human_instruction=stock_complex_human_instruction()
    )
    assert torch.equal(embeds["prompt_embeds"], pe) and torch.equal(embeds["prompt_attention_mask"], mask)
    assert torch.equal(embeds["negative_prompt_embeds"], npe) and torch.equal(
        embeds["negative_prompt_attention_mask"], nmask
    )
    assert embeds["prompt_embeds"].shape[1] == 300  # max_sequence_length, the stock default
    assert stock_complex_human_instruction()[-1] == "User Prompt: "
    pipe.family.complex_human_instruction = []
    plain = pipe.encode_prompts(PROMPTS, guidance_scale=4.5)
    assert not torch.equal(plain["prompt_embeds"], embeds["prompt_embeds"])
    assert torch.equal(plain["negative_prompt_embeds"], embeds["negative_prompt_embeds"])  # never instructed
