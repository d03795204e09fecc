"""Z-Image (`ZImagePipeline`): variable-length Qwen3 captions, reversed time input, its own CFG form, static shift."""

import pytest
import torch
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_zimage_pipeline

SIZE = 32  # VAE 2x, 2x2 patches: 64 image tokens
CFG = 5.0  # the stock default; Z-Image-Turbo samples with 0 (no CFG)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class TestZImageContract(FamilyContract):
    family = "zimage"
    guidance = CFG
    stock_guidances = (CFG, 0.0)
    lora_targets = TARGETS
    stock_atol = 1e-6  # measured 0 (CFG 5 and 0)
    lora_atol = 1e-6  # measured 0
    prefix_atol = 3e-5  # measured 2.9e-6 (latents; images 7.2e-7)
    prefix_logp_atol = 1e-6  # measured 6e-8

    def build_stock(self, seed=0):
        return build_tiny_zimage_pipeline(seed=seed)


ZIMAGE = TestZImageContract()


@pytest.fixture(scope="module")
def stock():
    return build_tiny_zimage_pipeline()


def test_the_tiny_scheduler_has_a_static_shift(stock):
    # static shift 3.0; the pipeline passes a float32 linspace as sigmas and a mu the scheduler ignores (the
    # contract's grid check compares them)
    assert not stock.scheduler.config.use_dynamic_shifting


def test_empty_window_reproduces_the_stock_cfg_normalization_and_truncation(stock):
    pipe = grpo(stock)
    pipe.family.cfg_normalization, pipe.family.cfg_truncation = 1.0, 0.5
    noise = pipe.family.prepare_noise(1, SIZE, SIZE, torch.Generator().manual_seed(3), "cpu", torch.float32)
    ours = pipe.rollout(PROMPTS[:1], 1, 6, (0, 0), height=SIZE, width=SIZE, latents=noise, guidance_scale=CFG)
    ref = stock(
        prompt=PROMPTS[0],
        height=SIZE,
        width=SIZE,
        num_inference_steps=6,
        latents=noise,
        guidance_scale=CFG,
        cfg_normalization=1.0,
        cfg_truncation=0.5,
        output_type="pt",
    ).images
    default = grpo(stock).rollout(
        PROMPTS[:1], 1, 6, (0, 0), height=SIZE, width=SIZE, latents=noise, guidance_scale=CFG
    )
    assert float((ours.images - ref).abs().max()) <= ZIMAGE.stock_atol
    assert float((ours.images - default.images).abs().max()) > 1e-4  # the options do change the images


def test_captions_are_stored_padded_and_unpadded_to_the_stock_lengths(stock):
    """The stock encoder returns one tensor per prompt, of its own length (thinking-on chat template); the rows are
    padded with a mask, and unpadding gives back exactly the stock tensors."""
    pipe = grpo(stock)
    prompts = ["a cat", "a red circle on the left of a blue square"]
    embeds = pipe.encode_prompts(prompts, guidance_scale=CFG)
    ref, ref_neg = stock.encode_prompt(list(prompts), device="cpu", do_classifier_free_guidance=True)
    lengths = embeds["prompt_embeds_mask"].sum(1).tolist()
    assert lengths == [r.shape[0] for r in ref] and lengths[0] < lengths[1]
    for row, mask, r in zip(embeds["prompt_embeds"], embeds["prompt_embeds_mask"], ref):
        assert torch.equal(row[mask], r)
    assert torch.equal(embeds["negative_prompt_embeds"][0][embeds["negative_prompt_embeds_mask"][0]], ref_neg[0])


def test_zimage_cfg_runs_above_zero(stock):
    pipe = grpo(stock)
    assert pipe.family.uses_cfg(0.5) and not pipe.family.uses_cfg(0.0)
    assert pipe.default_image_size() == (1024, 1024)
