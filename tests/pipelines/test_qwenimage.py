"""Qwen-Image (`QwenImagePipeline`): chat-template prompts, packed latents, true CFG with norm rescale, its grid."""

import pytest
import torch
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_qwenimage_pipeline

SIZE = 32  # VAE 4x, 2x2 patches: 16 image tokens
CFG = 4.0  # true_cfg_scale
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class TestQwenImageContract(FamilyContract):
    family = "qwenimage"
    guidance = CFG
    stock_guidances = (CFG, 1.0)
    lora_targets = TARGETS
    lora_unused = ("blocks.1.attn.to_add_out",)  # the last dual-stream block's text output is discarded
    stock_atol = 1e-6  # measured 0 (true CFG 4 and none)
    lora_atol = 1e-6  # measured 0
    prefix_atol = 1e-6  # measured 0
    prefix_logp_atol = 1e-6  # measured 0

    def build_stock(self, seed=0):
        return build_tiny_qwenimage_pipeline(seed=seed)


QWEN = TestQwenImageContract()


@pytest.fixture(scope="module")
def stock():
    return build_tiny_qwenimage_pipeline()


def test_the_tiny_scheduler_stretches_the_last_sigma(stock):
    # exponential time shift with mu, shift_terminal=0.02: the contract's grid check covers the stretched grid
    assert stock.scheduler.config.shift_terminal == 0.02


def test_prompt_encoding_drops_the_34_template_tokens(stock):
    """The conditioning is the stock `encode_prompt`: the system-prompt template's 34 tokens are dropped, so a
    prompt of n words gives n + 5 rows (the words and the closing `<|im_end|> \\n <|im_start|> assistant \\n`)."""
    pipe = grpo(stock)
    embeds = pipe.encode_prompts(["a red circle", "a blue square on the right"], guidance_scale=1.0)
    assert stock.prompt_template_encode_start_idx == 34
    assert embeds["prompt_embeds"].shape[:2] == (2, 6 + 5)
    assert embeds["prompt_embeds_mask"].tolist() == [[1] * 8 + [0] * 3, [1] * 11]
    ref, ref_mask = stock.encode_prompt(["a red circle", "a blue square on the right"], device="cpu")
    assert torch.equal(embeds["prompt_embeds"], ref) and torch.equal(embeds["prompt_embeds_mask"], ref_mask)


def test_cfg_rows_use_the_blank_negative_prompt_by_default(stock):
    pipe = grpo(stock)
    embeds = pipe.encode_prompts(PROMPTS, guidance_scale=CFG)
    neg, _ = stock.encode_prompt([" "], device="cpu")
    assert torch.equal(embeds["negative_prompt_embeds"][:1], neg)
    assert "negative_prompt_embeds" not in pipe.encode_prompts(PROMPTS, guidance_scale=1.0).tensors


def test_prompt_batches_of_different_lengths_are_padded_and_masked(stock):
    """Encoding in batches pads each to the longest; masked padding leaves the denoiser output unchanged."""
    pipe = grpo(stock)
    prompts = ["a cat", "a red circle on the left of a blue square"]
    joined = pipe.encode_prompts(prompts, guidance_scale=CFG, batch_size=1)
    alone = pipe.encode_prompts(prompts[:1], guidance_scale=CFG)
    assert joined["prompt_embeds"].shape[1] > alone["prompt_embeds"].shape[1]
    a = QWEN.rollout(pipe, prompts=prompts[:1], num_generations=1, sde_window=(0, 0))
    b = QWEN.rollout(
        pipe,
        prompts=prompts[:1],
        num_generations=1,
        sde_window=(0, 0),
        prompt_embeds=joined.select(torch.tensor([0])),
    )
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-5)
