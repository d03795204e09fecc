"""GRPOTrainingPipeline beyond the family contract (family_contract.py): bf16 autocast, chunking, cached prompt
embeddings, save / load, and its input checks, on the tiny FLUX.1 and SD3 pipelines."""

import pytest
import torch
from diffusers import PixArtAlphaPipeline

from diffusers_mixgrpo import GRPOTrainingPipeline, MixODESDEScheduler
from diffusers_mixgrpo.pipelines.rollout_batch import PromptEmbeds
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

PROMPTS = ["a red circle on the left", "a blue square on the right"]
GUIDANCE = {"flux": 3.5, "sd3": 4.0}  # rollout guidance
SIZE = 32


@pytest.fixture(scope="module")
def tiny_stock_pipes():
    return {"flux": build_tiny_flux_pipeline(), "sd3": build_tiny_sd3_pipeline()}


def grpo(stock):
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rollout(pipe, family, seed=0, **kwargs):
    size = SIZE
    kwargs.setdefault("num_generations", 3)
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("sde_window", (1, 2))
    kwargs.setdefault("guidance_scale", GUIDANCE[family])
    return pipe.rollout(PROMPTS, height=size, width=size, generator=torch.Generator().manual_seed(seed), **kwargs)


def test_bf16_autocast_log_probs_match_rollout_within_tolerance(tiny_stock_pipes):
    """bf16 denoiser, float32 Gaussian math: the recomputed log-prob matches the rollout's to 1e-3 (measured 0)."""
    pipe = grpo(tiny_stock_pipes["flux"])
    batch = rollout(pipe, "flux", autocast_dtype=torch.bfloat16)
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            logp = pipe.log_prob(batch, step, batch.chunks[0], autocast_dtype=torch.bfloat16)
            assert logp.dtype == torch.float32
            torch.testing.assert_close(logp, batch.log_probs[batch.chunks[0], j], rtol=0, atol=1e-3)


def test_chunking_by_max_batch_size_keeps_the_trajectories(tiny_stock_pipes):
    pipe = grpo(tiny_stock_pipes["flux"])
    full = rollout(pipe, "flux", num_generations=4)
    for mbs in (1, 3, 4, 5):
        chunked = rollout(pipe, "flux", num_generations=4, max_batch_size=mbs)
        assert all(len(c) <= mbs for c in chunked.chunks)
        assert sorted(torch.cat(chunked.chunks).tolist()) == list(range(8))
        torch.testing.assert_close(chunked.latents, full.latents, rtol=0, atol=4e-6)  # measured 3.6e-7
        torch.testing.assert_close(chunked.log_probs, full.log_probs, rtol=0, atol=2e-6)  # measured 1.2e-7


def test_cached_prompt_embeddings_give_the_same_rollout(tiny_stock_pipes, tmp_path):
    pipe = grpo(tiny_stock_pipes["sd3"])
    cache = pipe.encode_prompts(PROMPTS, guidance_scale=4.0)
    cache.save(tmp_path / "embeds")
    loaded = PromptEmbeds.load(tmp_path / "embeds")
    a = rollout(pipe, "sd3")
    b = rollout(pipe, "sd3", prompt_embeds=loaded)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)


def test_save_pretrained_round_trip_keeps_the_scheduler_config(tiny_stock_pipes, tmp_path):
    pipe = grpo(tiny_stock_pipes["flux"])
    pipe.scheduler.register_to_config(eta=0.5, sde_window_size=3)
    pipe.save_pretrained(tmp_path / "grpo")
    loaded = GRPOTrainingPipeline.from_pretrained(tmp_path / "grpo")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, MixODESDEScheduler)
    assert loaded.scheduler.config.eta == 0.5 and loaded.scheduler.config.sde_window_size == 3
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    a, b = rollout(pipe, "flux"), rollout(loaded, "flux")
    assert torch.equal(a.latents, b.latents)


def test_unsupported_base_pipeline_error_lists_the_supported_ones(tiny_stock_pipes):
    class NotAPipeline(PixArtAlphaPipeline):
        def __init__(self):  # never built: the check happens before any component is touched
            pass

    with pytest.raises(ValueError, match="Unsupported base pipeline NotAPipeline") as err:
        GRPOTrainingPipeline.from_pipe(object.__new__(NotAPipeline))
    for name in (
        "FluxPipeline",
        "StableDiffusion3Pipeline",
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "SanaPipeline",
        "WanPipeline",
        "QwenImagePipeline",
        "Flux2Pipeline",
        "Flux2KleinPipeline",
        "ZImagePipeline",
    ):
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_generations": 0}, "num_generations must be an integer >= 1"),
        ({"sde_window": (6, 1)}, r"sde_window=\(6, 1\) is outside the 6-step grid"),
        ({"sde_window": (0, 7)}, "outside the 6-step grid"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a finite number >= 0, got -1.0"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"height": 30}, "multiples of 4"),
    ],
)
def test_bad_rollout_input_gets_a_clear_error(tiny_stock_pipes, kwargs, message):
    pipe = grpo(tiny_stock_pipes["flux"])
    size = kwargs.pop("height", 32)
    with pytest.raises(ValueError, match=message):
        pipe.rollout(
            PROMPTS, **{"num_generations": 2, "num_inference_steps": 6, "height": size, "width": 32, **kwargs}
        )


def test_prompt_embeddings_must_have_one_row_per_prompt(tiny_stock_pipes):
    pipe = grpo(tiny_stock_pipes["flux"])
    embeds = pipe.encode_prompts(PROMPTS * 2)
    with pytest.raises(ValueError, match="prompt_embeds has 4 rows but 2 prompts"):
        pipe.rollout(PROMPTS, 2, 4, prompt_embeds=embeds, height=32, width=32)


def test_log_prob_of_a_step_that_was_not_recorded_is_refused(tiny_stock_pipes):
    pipe = grpo(tiny_stock_pipes["flux"])
    batch = rollout(pipe, "flux")
    with pytest.raises(
        ValueError, match=r"step_index=0 was not recorded in this rollout; recorded SDE steps: \[1, 2\]"
    ):
        pipe.log_prob(batch, 0)


def test_from_pipe_keeps_a_bf16_pipeline_in_bf16_without_copying_its_weights():
    """diffusers' `from_pipe` casts every module to float32 unless told otherwise: a bf16 FLUX.1-dev would become a
    48 GB float32 copy. GRPOTrainingPipeline keeps the stock pipeline's dtype and shares its tensors."""
    stock = build_tiny_flux_pipeline().to(torch.bfloat16)
    weights = {n: p.data_ptr() for n, p in stock.transformer.named_parameters()}
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    assert pipe.denoiser is stock.transformer and pipe.denoiser.dtype == torch.bfloat16
    assert {n: p.data_ptr() for n, p in pipe.denoiser.named_parameters()} == weights
    assert pipe.text_encoder_2.dtype == pipe.vae.dtype == torch.bfloat16
