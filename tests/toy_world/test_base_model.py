"""The shipped toy-world FLUX base model: loads offline as a stock FluxPipeline and follows prompts imperfectly."""

import pytest
import torch

from diffusers_mixgrpo.toy_world.base_model import (
    ASSETS_DIR,
    TOY_MAX_SEQUENCE_LENGTH,
    TOY_PIPELINE_CALL_KWARGS,
    build_toy_tokenizer,
    build_untrained_toy_pipeline,
    evaluate_toy_pipeline,
)
from diffusers_mixgrpo.toy_world.base_weights import load_toy_base_pipeline
from diffusers_mixgrpo.toy_world.world import heldout_prompts

pytestmark = pytest.mark.skipif(
    not (ASSETS_DIR / "model_index.json").is_file(), reason="the toy base weights are not shipped in this checkout"
)


@pytest.fixture(scope="module")
def pipe():
    return load_toy_base_pipeline()


def test_shipped_pipeline_loads_offline_with_stock_flux_pipeline(monkeypatch):
    from diffusers import FluxPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = FluxPipeline.from_pretrained(ASSETS_DIR, local_files_only=True)
    assert type(pipe) is FluxPipeline
    assert pipe.transformer.config.guidance_embeds
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    assert 300_000 <= n_params <= 2_000_000


def test_pipeline_generates_32x32_images(pipe):
    out = pipe(
        ["a red circle on the left", "a blue square on the top and a green cross on the bottom"],
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
        **TOY_PIPELINE_CALL_KWARGS,
    ).images
    assert out.shape == (2, 3, 32, 32)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_heldout_accuracy_is_in_the_imperfect_band(pipe):
    result = evaluate_toy_pipeline(pipe, heldout_prompts(), num_images_per_prompt=2, seed=0)
    # measured 0.297 (32 held-out prompts x 2 images, 10 steps, guidance 3.5, seed 0): about half its images are
    # hazy, which the GenEval-style judge reads less often (docs/toy_world.md)
    assert 0.2 <= result["accuracy"] <= 0.6, result


def test_tokenizer_appends_eos_for_clip_pooling():
    tok = build_toy_tokenizer()
    ids = tok("a red circle on the left").input_ids
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


def test_t5_features_of_the_prompt_ignore_the_padding():
    pipe = build_untrained_toy_pipeline()
    prompts = ["a red circle on the left", "a yellow cross on the top and a white square on the bottom"]
    short, pooled, _ = pipe.encode_prompt(prompts, None, max_sequence_length=TOY_MAX_SEQUENCE_LENGTH)
    long, _, _ = pipe.encode_prompt(prompts, None, max_sequence_length=64)
    torch.testing.assert_close(short, long[:, :TOY_MAX_SEQUENCE_LENGTH])
    assert not torch.allclose(pooled[0], pooled[1])


def test_the_base_model_draws_both_styles_of_its_data(pipe):
    """Trained on half hazy, half clean renders, it draws either: what preference alignment then resolves."""
    from diffusers_mixgrpo.toy_world.preference import toy_contrast

    images = pipe(heldout_prompts(), generator=torch.Generator().manual_seed(0), output_type="pt",
                  **TOY_PIPELINE_CALL_KWARGS).images  # fmt: skip
    clean_share = float((toy_contrast(images) > 0.75).mean())
    assert 0.25 <= clean_share <= 0.75, clean_share  # measured 0.54 (256 held-out images, evaluation noise)
