"""Z-Image (`ZImagePipeline`): variable-length Qwen3 captions, reversed time input, its own CFG form, static shift."""

import family_contract as fc
import pytest
import torch

from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_zimage_pipeline

SIZE = 32  # VAE 2x, 2x2 patches: 64 image tokens
CFG = 5.0  # the stock default; Z-Image-Turbo samples with 0 (no CFG)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def stock():
    return build_tiny_zimage_pipeline()


def test_scheduler_swap_keeps_the_zimage_grid(stock):
    # static shift 3.0; the pipeline passes a float32 linspace as sigmas and a mu the scheduler ignores
    assert not stock.scheduler.config.use_dynamic_shifting
    fc.check_scheduler_swap_keeps_the_grid(stock, "zimage", SIZE)


@pytest.mark.parametrize("guidance", [CFG, 0.0])
def test_empty_window_reproduces_the_stock_pipeline(stock, guidance):
    fc.check_empty_window_matches_stock(stock, SIZE, guidance, {"guidance_scale": guidance})


def test_empty_window_reproduces_the_stock_cfg_normalization_and_truncation(stock):
    pipe = fc.grpo(stock)
    pipe.adapter.cfg_normalization, pipe.adapter.cfg_truncation = 1.0, 0.5
    noise = pipe.adapter.prepare_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), "cpu", torch.float32)
    ours = pipe.rollout(fc.PROMPTS[:1], 1, 6, (0, 0), height=SIZE, width=SIZE, latents=noise, guidance_scale=CFG)
    ref = stock(
        prompt=fc.PROMPTS[0],
        height=SIZE,
        width=SIZE,
        num_inference_steps=6,
        latents=noise,
        guidance_scale=CFG,
        cfg_normalization=1.0,
        cfg_truncation=0.5,
        output_type="pt",
    ).images
    default = fc.grpo(stock).rollout(
        fc.PROMPTS[:1], 1, 6, (0, 0), height=SIZE, width=SIZE, latents=noise, guidance_scale=CFG
    )
    assert float((ours.images - ref).abs().max()) <= fc.STOCK_IMAGE_ATOL
    assert float((ours.images - default.images).abs().max()) > 1e-4  # the options do change the images


def test_on_policy_ratio_is_exactly_one(stock):
    fc.check_on_policy_ratio_is_one(stock, SIZE, CFG)


def test_lora_gradients_reach_the_adapter_weights():
    fc.check_lora_gradients(build_tiny_zimage_pipeline(), SIZE, CFG, TARGETS)


def test_saved_lora_loads_into_the_stock_pipeline_and_reproduces_it(tmp_path):
    fc.check_saved_lora_reproduces_in_stock(
        build_tiny_zimage_pipeline, SIZE, CFG, TARGETS, {"guidance_scale": CFG}, tmp_path
    )


def test_prefix_sharing_equals_no_sharing(stock):
    fc.check_prefix_sharing(stock, SIZE, CFG)


def test_captions_are_stored_padded_and_unpadded_to_the_stock_lengths(stock):
    """The stock encoder returns one tensor per prompt, of its own length (thinking-on chat template); the rows are
    padded with a mask, and unpadding gives back exactly the stock tensors."""
    pipe = fc.grpo(stock)
    prompts = ["a cat", "a red circle on the left of a blue square"]
    embeds = pipe.encode_prompts(prompts, guidance_scale=CFG)
    ref, ref_neg = stock.encode_prompt(list(prompts), device="cpu", do_classifier_free_guidance=True)
    lengths = embeds["prompt_embeds_mask"].sum(1).tolist()
    assert lengths == [r.shape[0] for r in ref] and lengths[0] < lengths[1]
    for row, mask, r in zip(embeds["prompt_embeds"], embeds["prompt_embeds_mask"], ref):
        assert torch.equal(row[mask], r)
    assert torch.equal(embeds["negative_prompt_embeds"][0][embeds["negative_prompt_embeds_mask"][0]], ref_neg[0])


def test_zimage_cfg_runs_above_zero(stock):
    pipe = fc.grpo(stock)
    assert pipe.adapter.uses_cfg(0.5) and not pipe.adapter.uses_cfg(0.0)
    assert pipe.default_image_size() == (1024, 1024)


def test_gradient_checkpointing_keeps_the_log_prob_and_its_gradients():
    fc.check_gradient_checkpointing(build_tiny_zimage_pipeline(), SIZE, CFG, TARGETS)
