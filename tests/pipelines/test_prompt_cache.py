"""The prompt-embedding cache and the frozen modules' placement: cached rows equal fresh encodings, a rollout from the
cache equals one that encodes, a disk cache is reused only for the same prompts and text encoders, freed encoders fail
clearly, and offloaded modules are on CPU between calls and on the execution device during them."""

import json

import pytest
import torch

from diffusers_mixgrpo import GRPOTrainingPipeline, PromptEmbedsCache
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

PROMPTS = ["a red circle", "a blue square on the left", "a cat", "a green cross", "a dog on the right"]
# Encoding 2 prompts per call (the cache's batches) vs 1 or 5 per call (a rollout's chunks) differs only by the
# batch-size rounding of the text encoders' float32 matmuls: 0 measured (FLUX), 2.4e-7 (SD3's pooled CLIP rows).
ENCODE_ATOL = 1e-5


@pytest.fixture(scope="module")
def flux():
    return GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))


def _rollout(pipe, prompts, **kwargs):
    gens = [torch.Generator().manual_seed(17 + i) for i in range(len(prompts))]
    return pipe.rollout(
        prompts,
        num_generations=2,
        num_inference_steps=4,
        sde_window=(1, 2),
        height=32,
        width=32,
        generator=gens,
        **kwargs,
    )


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_cached_rows_equal_a_fresh_encoding_in_any_order(family, tmp_path):
    build = {"flux": build_tiny_flux_pipeline, "sd3": build_tiny_sd3_pipeline}[family]
    pipe = GRPOTrainingPipeline.from_pipe(build(seed=0))
    guidance = pipe.default_guidance_scale()
    for cache_dir in (None, tmp_path / "cache"):
        cache = PromptEmbedsCache(pipe, PROMPTS, guidance_scale=guidance, batch_size=2, cache_dir=cache_dir)
        order = [PROMPTS[3], PROMPTS[0], PROMPTS[3], PROMPTS[4]]
        got = cache.rows(order)
        want = pipe.encode_prompts(order, guidance)
        assert set(got.tensors) == set(want.tensors) and got.shared == want.shared
        for name in want.tensors:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=ENCODE_ATOL)


def test_a_rollout_from_the_cache_equals_one_that_encodes(flux):
    cache = PromptEmbedsCache(flux, PROMPTS, batch_size=2)
    prompts = PROMPTS[1:3]
    encoded = _rollout(flux, prompts)
    cached = _rollout(flux, prompts, prompt_embeds=cache.rows(prompts))
    torch.testing.assert_close(cached.images, encoded.images, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.log_probs, encoded.log_probs, rtol=0, atol=1e-5)


def test_a_disk_cache_is_reused_for_the_same_prompts_and_rebuilt_for_others(flux, tmp_path):
    first = PromptEmbedsCache(flux, PROMPTS, batch_size=2, cache_dir=tmp_path)
    assert not first.loaded_from_disk
    index = json.loads((tmp_path / "cache.json").read_text())
    assert index["num_prompts"] == len(PROMPTS) and len(index["shards"]) == 3
    again = PromptEmbedsCache(flux, PROMPTS, batch_size=2, cache_dir=tmp_path)
    assert again.loaded_from_disk
    torch.testing.assert_close(again.rows(PROMPTS)["prompt_embeds"], first.rows(PROMPTS)["prompt_embeds"])
    other = PromptEmbedsCache(flux, PROMPTS[:2] + ["a new prompt"], batch_size=2, cache_dir=tmp_path)
    assert not other.loaded_from_disk and "a new prompt" in other
    with pytest.raises(KeyError, match="not in the prompt-embedding cache, e.g. 'a cat'"):
        other.rows(["a cat"])


def test_a_disk_cache_of_other_text_encoders_is_not_reused(tmp_path):
    a = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    b = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=1))  # other random text-encoder weights
    PromptEmbedsCache(a, PROMPTS, cache_dir=tmp_path)
    assert not PromptEmbedsCache(b, PROMPTS, cache_dir=tmp_path).loaded_from_disk


def test_a_read_only_cache_without_files_names_the_folder(flux, tmp_path):
    with pytest.raises(FileNotFoundError, match="No prompt-embedding cache for these 5 prompts"):
        PromptEmbedsCache(flux, PROMPTS, cache_dir=tmp_path / "absent", read_only=True)


def test_bad_cache_arguments_are_refused(flux):
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        PromptEmbedsCache(flux, "a cat")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        PromptEmbedsCache(flux, PROMPTS, batch_size=0)


def test_freed_text_encoders_are_gone_and_encoding_then_fails_clearly():
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    cache = PromptEmbedsCache(pipe, PROMPTS)
    pipe.free_text_encoders()
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None and pipe.stock_pipeline.text_encoder_2 is None
    assert pipe.text_encoders_freed
    _rollout(pipe, PROMPTS[:2], prompt_embeds=cache.rows(PROMPTS[:2]))  # rollouts from the cache still work
    with pytest.raises(RuntimeError, match="The text encoders were freed .* e.g. 'a cat'"):
        _rollout(pipe, ["a cat"])


class _DeviceLog:
    """Records `module.to(device)` calls (on this CPU-only machine the devices are all 'cpu', so the test checks the
    moves the offload makes rather than where memory ends up)."""

    def __init__(self, pipe, names):
        self.moves = []
        for name in names:
            module = getattr(pipe, name)
            original = module.to

            def to(*args, _name=name, _original=original, **kwargs):
                self.moves.append((_name, str(args[0] if args else kwargs.get("device"))))
                return _original(*args, **kwargs)

            module.to = to


def test_cpu_offload_moves_the_frozen_modules_for_their_calls_only():
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    pipe.enable_model_cpu_offload(device="cpu", modules=("text_encoders", "vae"))
    assert pipe.offloaded_modules == {"text_encoder", "text_encoder_2", "vae"}
    log = _DeviceLog(pipe, ["text_encoder", "text_encoder_2", "vae", "transformer"])
    cache_rows = pipe.encode_prompts(PROMPTS[:2])
    assert [m for m in log.moves if m[0].startswith("text")] == [
        ("text_encoder", "cpu"),
        ("text_encoder_2", "cpu"),
        ("text_encoder", "cpu"),
        ("text_encoder_2", "cpu"),
    ]  # onto the execution device for the encode, back to CPU memory after it
    log.moves.clear()
    _rollout(pipe, PROMPTS[:2], prompt_embeds=cache_rows, max_batch_size=2)
    assert log.moves == [("vae", "cpu"), ("vae", "cpu")] * 2  # per chunk decode: on, off; text encoders untouched
    with pipe.onloaded(pipe.TEXT_ENCODER_NAMES):  # nested blocks move once
        log.moves.clear()
        pipe.encode_prompts(PROMPTS[:1])
        pipe.encode_prompts(PROMPTS[1:2])
        assert log.moves == []
    assert not any(name == "transformer" for name, _ in log.moves)
    pipe.disable_model_cpu_offload()
    assert pipe.offloaded_modules == set()


def test_offload_arguments_are_checked(flux):
    with pytest.raises(ValueError, match=r"modules=\['unet'\] is not allowed; choose among"):
        flux.enable_model_cpu_offload(modules=["unet"])


def test_vae_tiling_and_slicing_switch_the_vae(flux):
    flux.enable_vae_tiling()
    flux.enable_vae_slicing()
    assert flux.vae.use_tiling and flux.vae.use_slicing
    flux.disable_vae_tiling()
    flux.disable_vae_slicing()
    assert not flux.vae.use_tiling and not flux.vae.use_slicing
