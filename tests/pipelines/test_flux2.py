"""FLUX.2 [dev] (`Flux2Pipeline`) and FLUX.2 [klein] (`Flux2KleinPipeline`): one transformer class, two families."""

import pytest
import torch
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_flux2_klein_pipeline, build_tiny_flux2_pipeline

SIZE = 32  # VAE 2x, 2x2 patches: 64 image tokens


class TestFlux2Contract(FamilyContract):
    family = "flux2"
    guidance = 4.0  # embedded guidance
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    # the last double-stream block's text output is discarded (single-stream blocks follow), and in the tiny model
    # there is one double-stream block, so its text-output LoRA gets no gradient
    lora_unused = ("transformer_blocks.0.attn.to_add_out",)
    stock_atol = 1e-6  # measured 0 ([dev]; [klein] with CFG 4 and none)
    lora_atol = 1e-6  # measured 0 (both)
    prefix_atol = 1e-6  # measured 0 (both)
    prefix_logp_atol = 2e-6  # measured 6e-8 ([dev]), 1.2e-7 ([klein])

    def build_stock(self, seed=0):
        return build_tiny_flux2_pipeline(seed=seed)

    def stock_latents(self, noise):
        # the FLUX.2 pipelines take the noise before packing, (B, C, H, W)
        b, seq, c = noise.shape
        side = int(round(seq**0.5))  # the contract uses square images
        return noise.transpose(1, 2).reshape(b, c, side, side)


class TestFlux2KleinContract(TestFlux2Contract):
    family = "flux2_klein"
    stock_guidances = (4.0, 1.0)  # true CFG on "", and none

    def build_stock(self, seed=0):
        return build_tiny_flux2_klein_pipeline(seed=seed)


KLEIN = TestFlux2KleinContract()


@pytest.fixture(scope="module")
def stocks():
    return {"flux2": build_tiny_flux2_pipeline(), "flux2_klein": build_tiny_flux2_klein_pipeline()}


def test_the_text_encoder_tells_dev_from_klein(stocks):
    assert grpo(stocks["flux2"]).model_family == "flux2"
    assert type(grpo(stocks["flux2"]).stock_pipeline).__name__ == "Flux2Pipeline"
    assert grpo(stocks["flux2_klein"]).model_family == "flux2_klein"
    assert type(grpo(stocks["flux2_klein"]).stock_pipeline).__name__ == "Flux2KleinPipeline"


def test_klein_runs_cfg_only_above_one_and_dev_never(stocks):
    klein, dev = grpo(stocks["flux2_klein"]), grpo(stocks["flux2"])
    assert "negative_prompt_embeds" in klein.encode_prompts(PROMPTS, guidance_scale=4.0).tensors
    assert "negative_prompt_embeds" not in klein.encode_prompts(PROMPTS, guidance_scale=1.0).tensors
    assert "negative_prompt_embeds" not in dev.encode_prompts(PROMPTS, guidance_scale=4.0).tensors


def test_a_distilled_klein_never_runs_cfg_and_keeps_the_flag_through_save_and_load(tmp_path):
    stock = build_tiny_flux2_klein_pipeline(is_distilled=True)
    pipe = grpo(stock)
    assert pipe.family.is_distilled and pipe.stock_pipeline.config.is_distilled
    assert not pipe.family.uses_cfg(4.0)
    ours, ref = KLEIN.empty_window_pair(stock, pipe, 4.0)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=KLEIN.stock_atol)
    pipe.save_pretrained(tmp_path / "klein")
    loaded = GRPOTrainingPipeline.from_pretrained(tmp_path / "klein")
    assert loaded.model_family == "flux2_klein" and loaded.family.is_distilled


def test_klein_uses_the_qwen3_chat_template_with_thinking_off(stocks):
    stock = stocks["flux2_klein"]
    text = stock.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    embeds = grpo(stock).encode_prompts(["a cat"], guidance_scale=1.0)
    ref, _ = stock.encode_prompt(["a cat"], device="cpu")
    assert torch.equal(embeds["prompt_embeds"], ref)
    assert embeds["prompt_embeds"].shape == (1, 512, 3 * 8)  # layers 9, 18, 27 stacked, padded to 512 tokens
