"""GRPOTrainingPipeline: grouped rollouts, prefix sharing, log-prob recomputation, for FLUX, SD3 and SD1.5."""

import pytest
import torch
from diffusers import FluxPipeline, PixArtAlphaPipeline
from peft import LoraConfig

from diffusers_mixgrpo import GRPOTrainingPipeline, MixDDIMSDEScheduler, MixODESDEScheduler
from diffusers_mixgrpo.pipelines.rollout_batch import PromptEmbeds

PROMPTS = ["a red circle on the left", "a blue square on the right"]
FAMILY_NAMES = ["flux", "sd3", "sd15-eps", "sd15-v"]
# rollout guidance and image size per family (the builders and LoRA targets are in conftest.FAMILIES)
GUIDANCE = {"flux": 3.5, "sd3": 4.0, "sd15-eps": 5.0, "sd15-v": 5.0}
SIZE = 32


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


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_rollout_shapes_and_decoded_images(tiny_stock_pipes, family):
    pipe = grpo(tiny_stock_pipes[family])
    batch = rollout(pipe, family)
    assert batch.batch_size == 6 and batch.num_generations == 3
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert batch.images.shape == (6, 3, 32, 32) and batch.images.dtype == torch.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    assert batch.step_indices == [1, 2] and batch.sde_window == (1, 3)
    assert batch.log_probs.shape == (6, 2) and torch.isfinite(batch.log_probs).all()
    assert batch.latents.shape[:2] == (6, 3)
    assert len(batch.pil_images()) == 6
    # the group shares its noise and its ODE prefix, and branches inside the window
    assert torch.equal(batch.latents[0, 0], batch.latents[1, 0])
    assert not torch.equal(batch.latents[0, 1], batch.latents[1, 1])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_scheduler_is_swapped_for_the_windowed_sampler(tiny_stock_pipes, family):
    pipe = grpo(tiny_stock_pipes[family])
    expected = MixDDIMSDEScheduler if family.startswith("sd15") else MixODESDEScheduler
    assert isinstance(pipe.scheduler, expected)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_on_policy_recomputed_log_probs_give_ratio_exactly_one(tiny_stock_pipes, family):
    pipe = grpo(tiny_stock_pipes[family])
    batch = rollout(pipe, family, max_batch_size=3)
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            for chunk in batch.chunks:
                logp = pipe.log_prob(batch, step, chunk)
                ratio = torch.exp(logp - batch.log_probs[chunk, j])
                assert torch.equal(ratio, torch.ones_like(ratio)), (family, step, ratio)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_gradients_reach_the_lora_parameters_through_log_prob(families, family):
    stock = families[family][0]()
    pipe = grpo(stock)
    pipe.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=families[family][1]))
    batch = rollout(pipe, family, num_generations=2)
    logp = pipe.log_prob(batch, batch.step_indices[0])
    logp.sum().backward()
    lora_b = [p for n, p in pipe.denoiser.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)
    assert sum(float(p.grad.abs().sum()) for p in lora_b) > 0
    base = [p for n, p in pipe.denoiser.named_parameters() if "lora" not in n]
    assert all(p.grad is None for p in base)  # add_adapter freezes the base weights


def test_bf16_autocast_log_probs_match_rollout_within_tolerance(tiny_stock_pipes):
    """bf16 denoiser, float32 Gaussian math: the recomputed log-prob matches the rollout's to 1e-3 (measured 0)."""
    pipe = grpo(tiny_stock_pipes["flux"])
    batch = rollout(pipe, "flux", autocast_dtype=torch.bfloat16)
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            logp = pipe.log_prob(batch, step, batch.chunks[0], autocast_dtype=torch.bfloat16)
            assert logp.dtype == torch.float32
            torch.testing.assert_close(logp, batch.log_probs[batch.chunks[0], j], rtol=0, atol=1e-3)


@pytest.mark.parametrize("family", ["flux", "sd3", "sd15-eps"])
def test_prefix_sharing_gives_the_same_trajectories_and_saves_forward_passes(tiny_stock_pipes, family):
    """Window start 8, size 2, G = 4, N = 10: sharing runs the 8 prefix steps once instead of 4 times per prompt.

    The prefix runs at batch size P instead of P x G, which changes float32 GEMM rounding (~1e-7 per step), so
    the trajectories agree closely, not bitwise. Measured: < 1e-5 for FLUX and SD3; up to 2.9e-5 for the SD1.5
    UNet on the 2-core Intel Xeon CI machine (depending on the load and the thread split of its convolutions),
    < 1e-5 on an AMD EPYC. Tolerance 1e-4 on latents and images.
    """
    pipe = grpo(tiny_stock_pipes[family])
    kw = dict(num_generations=4, num_inference_steps=10, sde_window=(8, 2))
    shared = rollout(pipe, family, share_prefix=True, **kw)
    unshared = rollout(pipe, family, share_prefix=False, **kw)
    torch.testing.assert_close(shared.latents, unshared.latents, rtol=0, atol=1e-4)
    torch.testing.assert_close(shared.log_probs, unshared.log_probs, rtol=0, atol=1e-4)
    torch.testing.assert_close(shared.images, unshared.images, rtol=0, atol=1e-4)
    per_prompt_saving = (unshared.nfe - shared.nfe) / len(PROMPTS)
    assert per_prompt_saving == 3 * 8
    assert unshared.nfe == len(PROMPTS) * 4 * 10
    assert shared.nfe == len(PROMPTS) * (8 + 4 * 2)


def test_chunking_by_max_batch_size_keeps_the_trajectories(tiny_stock_pipes):
    pipe = grpo(tiny_stock_pipes["flux"])
    full = rollout(pipe, "flux", num_generations=4)
    for mbs in (1, 3, 4, 5):
        chunked = rollout(pipe, "flux", num_generations=4, max_batch_size=mbs)
        assert all(len(c) <= mbs for c in chunked.chunks)
        assert sorted(torch.cat(chunked.chunks).tolist()) == list(range(8))
        torch.testing.assert_close(chunked.latents, full.latents, rtol=0, atol=1e-5)
        torch.testing.assert_close(chunked.log_probs, full.log_probs, rtol=0, atol=1e-4)


def test_cached_prompt_embeddings_give_the_same_rollout(tiny_stock_pipes, tmp_path):
    pipe = grpo(tiny_stock_pipes["sd3"])
    cache = pipe.encode_prompts(PROMPTS, guidance_scale=4.0)
    cache.save(tmp_path / "embeds")
    loaded = PromptEmbeds.load(tmp_path / "embeds")
    a = rollout(pipe, "sd3")
    b = rollout(pipe, "sd3", prompt_embeds=loaded)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)


def test_empty_window_reproduces_the_stock_flux_pipeline(tiny_stock_pipes):
    stock = tiny_stock_pipes["flux"]
    pipe = grpo(stock)
    noise = pipe.adapter.prepare_noise(1, 32, 32, torch.Generator().manual_seed(3), "cpu", torch.float32)
    ours = pipe.rollout(PROMPTS[:1], 1, 6, (0, 0), height=32, width=32, latents=noise, guidance_scale=3.5)
    reference = FluxPipeline(**stock.components)
    reference.set_progress_bar_config(disable=True)
    ref = reference(
        PROMPTS[0], height=32, width=32, num_inference_steps=6, latents=noise, guidance_scale=3.5, output_type="pt"
    ).images
    assert ours.log_probs.shape == (1, 0)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["sd3", "sd15-eps"])
def test_empty_window_reproduces_the_stock_cfg_pipelines(tiny_stock_pipes, family):
    stock = tiny_stock_pipes[family]
    pipe = grpo(stock)
    noise = pipe.adapter.prepare_noise(1, 32, 32, torch.Generator().manual_seed(3), "cpu", torch.float32)
    ours = pipe.rollout(PROMPTS[:1], 1, 6, (0, 0), height=32, width=32, latents=noise, guidance_scale=5.0)
    reference = type(stock)(**stock.components)
    reference.set_progress_bar_config(disable=True)
    ref = reference(
        PROMPTS[0], height=32, width=32, num_inference_steps=6, latents=noise, guidance_scale=5.0, output_type="pt"
    ).images
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-6)


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
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    stock = build_tiny_flux_pipeline().to(torch.bfloat16)
    weights = {n: p.data_ptr() for n, p in stock.transformer.named_parameters()}
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    assert pipe.denoiser is stock.transformer and pipe.denoiser.dtype == torch.bfloat16
    assert {n: p.data_ptr() for n, p in pipe.denoiser.named_parameters()} == weights
    assert pipe.text_encoder_2.dtype == pipe.vae.dtype == torch.bfloat16
