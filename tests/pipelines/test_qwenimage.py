"""Qwen-Image (`QwenImagePipeline`): chat-template prompts, packed latents, true CFG with norm rescale, its grid."""

import family_contract as fc
import pytest
import torch

from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_qwenimage_pipeline

SIZE = 32  # VAE 4x, 2x2 patches: 16 image tokens
CFG = 4.0  # true_cfg_scale
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
STOCK_CFG = {"true_cfg_scale": CFG, "negative_prompt": " "}


@pytest.fixture(scope="module")
def stock():
    return build_tiny_qwenimage_pipeline()


def test_scheduler_swap_keeps_the_qwenimage_grid(stock):
    # exponential time shift with mu, shift_terminal=0.02: the last sigma is stretched to 0.02
    assert stock.scheduler.config.shift_terminal == 0.02
    fc.check_scheduler_swap_keeps_the_grid(stock, "qwenimage", SIZE)


def test_empty_window_reproduces_the_stock_pipeline_with_true_cfg(stock):
    fc.check_empty_window_matches_stock(stock, SIZE, CFG, STOCK_CFG)


def test_empty_window_reproduces_the_stock_pipeline_without_cfg(stock):
    fc.check_empty_window_matches_stock(stock, SIZE, 1.0, {"true_cfg_scale": 1.0})


def test_on_policy_ratio_is_exactly_one(stock):
    fc.check_on_policy_ratio_is_one(stock, SIZE, CFG)


def test_lora_gradients_reach_the_adapter_weights():
    fc.check_lora_gradients(build_tiny_qwenimage_pipeline(), SIZE, CFG, TARGETS, unused=("blocks.1.attn.to_add_out",))


def test_saved_lora_loads_into_the_stock_pipeline_and_reproduces_it(tmp_path):
    fc.check_saved_lora_reproduces_in_stock(build_tiny_qwenimage_pipeline, SIZE, CFG, TARGETS, STOCK_CFG, tmp_path)


def test_prefix_sharing_equals_no_sharing(stock):
    fc.check_prefix_sharing(stock, SIZE, CFG)


def test_prompt_encoding_drops_the_34_template_tokens(stock):
    """The conditioning is the stock `encode_prompt`: the system-prompt template's 34 tokens are dropped, so a
    prompt of n words gives n + 5 rows (the words and the closing `<|im_end|> \\n <|im_start|> assistant \\n`)."""
    pipe = fc.grpo(stock)
    embeds = pipe.encode_prompts(["a red circle", "a blue square on the right"], guidance_scale=1.0)
    assert stock.prompt_template_encode_start_idx == 34
    assert embeds["prompt_embeds"].shape[:2] == (2, 6 + 5)
    assert embeds["prompt_embeds_mask"].tolist() == [[1] * 8 + [0] * 3, [1] * 11]
    ref, ref_mask = stock.encode_prompt(["a red circle", "a blue square on the right"], device="cpu")
    assert torch.equal(embeds["prompt_embeds"], ref) and torch.equal(embeds["prompt_embeds_mask"], ref_mask)


def test_cfg_rows_use_the_blank_negative_prompt_by_default(stock):
    pipe = fc.grpo(stock)
    embeds = pipe.encode_prompts(fc.PROMPTS, guidance_scale=CFG)
    neg, _ = stock.encode_prompt([" "], device="cpu")
    assert torch.equal(embeds["negative_prompt_embeds"][:1], neg)
    assert "negative_prompt_embeds" not in pipe.encode_prompts(fc.PROMPTS, guidance_scale=1.0).tensors


def test_prompt_batches_of_different_lengths_are_padded_and_masked(stock):
    """Encoding in batches pads each to the longest; masked padding leaves the denoiser output unchanged."""
    pipe = fc.grpo(stock)
    prompts = ["a cat", "a red circle on the left of a blue square"]
    joined = pipe.encode_prompts(prompts, guidance_scale=CFG, batch_size=1)
    alone = pipe.encode_prompts(prompts[:1], guidance_scale=CFG)
    assert joined["prompt_embeds"].shape[1] > alone["prompt_embeds"].shape[1]
    a = fc.rollout(pipe, SIZE, CFG, prompts=prompts[:1], num_generations=1, sde_window=(0, 0))
    b = fc.rollout(
        pipe,
        SIZE,
        CFG,
        prompts=prompts[:1],
        num_generations=1,
        sde_window=(0, 0),
        prompt_embeds=joined.select(torch.tensor([0])),
    )
    torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-5)


def test_gradient_checkpointing_keeps_the_log_prob_and_its_gradients():
    fc.check_gradient_checkpointing(build_tiny_qwenimage_pipeline(), SIZE, CFG, TARGETS)
