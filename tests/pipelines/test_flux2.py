"""FLUX.2 [dev] (`Flux2Pipeline`) and FLUX.2 [klein] (`Flux2KleinPipeline`): one transformer class, two families."""

import family_contract as fc
import pytest
import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_flux2_klein_pipeline, build_tiny_flux2_pipeline

SIZE = 32  # VAE 2x, 2x2 patches: 64 image tokens
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
# family -> (builder, rollout guidance, stock call kwargs)
FAMILIES = {
    "flux2": (build_tiny_flux2_pipeline, 4.0, {"guidance_scale": 4.0}),  # embedded guidance
    "flux2_klein": (build_tiny_flux2_klein_pipeline, 4.0, {"guidance_scale": 4.0}),  # true CFG on ""
}
# the last double-stream block's text output is discarded (single-stream blocks follow), and in the tiny model
# there is one double-stream block, so its text-output LoRA gets no gradient
UNUSED = ("transformer_blocks.0.attn.to_add_out",)


@pytest.fixture(scope="module")
def stocks():
    return {name: spec[0]() for name, spec in FAMILIES.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scheduler_swap_keeps_the_grid_with_the_empirical_mu(stocks, family):
    fc.check_scheduler_swap_keeps_the_grid(stocks[family], family, SIZE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_empty_window_reproduces_the_stock_pipeline(stocks, family):
    _, guidance, stock_kwargs = FAMILIES[family]
    fc.check_empty_window_matches_stock(stocks[family], SIZE, guidance, stock_kwargs)


def test_empty_window_reproduces_klein_without_cfg(stocks):
    fc.check_empty_window_matches_stock(stocks["flux2_klein"], SIZE, 1.0, {"guidance_scale": 1.0})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_on_policy_ratio_is_exactly_one(stocks, family):
    fc.check_on_policy_ratio_is_one(stocks[family], SIZE, FAMILIES[family][1])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_gradients_reach_the_adapter_weights(family):
    builder, guidance, _ = FAMILIES[family]
    fc.check_lora_gradients(builder(), SIZE, guidance, TARGETS, unused=UNUSED)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_saved_lora_loads_into_the_stock_pipeline_and_reproduces_it(family, tmp_path):
    builder, guidance, stock_kwargs = FAMILIES[family]
    fc.check_saved_lora_reproduces_in_stock(builder, SIZE, guidance, TARGETS, stock_kwargs, tmp_path)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefix_sharing_equals_no_sharing(stocks, family):
    fc.check_prefix_sharing(stocks[family], SIZE, FAMILIES[family][1])


def test_the_text_encoder_tells_dev_from_klein(stocks):
    assert fc.grpo(stocks["flux2"]).model_family == "flux2"
    assert type(fc.grpo(stocks["flux2"]).stock_pipeline).__name__ == "Flux2Pipeline"
    assert fc.grpo(stocks["flux2_klein"]).model_family == "flux2_klein"
    assert type(fc.grpo(stocks["flux2_klein"]).stock_pipeline).__name__ == "Flux2KleinPipeline"


def test_klein_runs_cfg_only_above_one_and_dev_never(stocks):
    klein, dev = fc.grpo(stocks["flux2_klein"]), fc.grpo(stocks["flux2"])
    assert "negative_prompt_embeds" in klein.encode_prompts(fc.PROMPTS, guidance_scale=4.0).tensors
    assert "negative_prompt_embeds" not in klein.encode_prompts(fc.PROMPTS, guidance_scale=1.0).tensors
    assert "negative_prompt_embeds" not in dev.encode_prompts(fc.PROMPTS, guidance_scale=4.0).tensors


def test_a_distilled_klein_never_runs_cfg_and_keeps_the_flag_through_save_and_load(tmp_path):
    stock = build_tiny_flux2_klein_pipeline(is_distilled=True)
    pipe = fc.grpo(stock)
    assert pipe.adapter.is_distilled and pipe.stock_pipeline.config.is_distilled
    assert not pipe.adapter.uses_cfg(4.0)
    fc.check_empty_window_matches_stock(stock, SIZE, 4.0, {"guidance_scale": 4.0})
    pipe.save_pretrained(tmp_path / "klein")
    loaded = GRPOTrainingPipeline.from_pretrained(tmp_path / "klein")
    assert loaded.model_family == "flux2_klein" and loaded.adapter.is_distilled


def test_klein_uses_the_qwen3_chat_template_with_thinking_off(stocks):
    stock = stocks["flux2_klein"]
    text = stock.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cat"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    embeds = fc.grpo(stock).encode_prompts(["a cat"], guidance_scale=1.0)
    ref, _ = stock.encode_prompt(["a cat"], device="cpu")
    assert torch.equal(embeds["prompt_embeds"], ref)
    assert embeds["prompt_embeds"].shape == (1, 512, 3 * 8)  # layers 9, 18, 27 stacked, padded to 512 tokens


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gradient_checkpointing_keeps_the_log_prob_and_its_gradients(family):
    builder, guidance, _ = FAMILIES[family]
    fc.check_gradient_checkpointing(builder(), SIZE, guidance, TARGETS)
