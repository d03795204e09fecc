"""Wan text-to-video on MixODESDEScheduler: the family checks on a tiny Wan 2.1 (5 frames), video latents and rewards."""

import family_checks as checks
import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline

from diffusers_mixgrpo import MixODESDEScheduler
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_wan_pipeline

NUM_FRAMES = 5  # two latent frames: (5 - 1) / 4 + 1


def _first_order_unipc(scheduler):
    # the stock UniPC at order 1 without its corrector is the Euler / DDIM step on the same flow-sigma grid
    return UniPCMultistepScheduler.from_config(scheduler.config, solver_order=1, disable_corrector=list(range(1000)))


def _sample(stock, prompt, noise, steps, guidance, size):
    return stock(
        prompt,
        height=size,
        width=size,
        num_frames=NUM_FRAMES,
        num_inference_steps=steps,
        latents=noise,
        guidance_scale=guidance,
        output_type="pt",
    ).frames


SPEC = checks.FamilySpec(
    name="wan",
    build=lambda seed: build_tiny_wan_pipeline(seed=seed),
    guidance=5.0,
    size=32,
    lora_targets=["to_q", "to_k", "to_v", "to_out.0"],
    stock_sample=_sample,
    rollout_kwargs={"num_frames": NUM_FRAMES},
    reference_scheduler=_first_order_unipc,
    # measured: 6.3e-7 (CFG 5) and 5.4e-7 (no CFG) against the stock pipeline with first-order UniPC
    stock_atol=1e-5,
    prefix_atol=1e-5,  # measured 1.7e-6 (latents), 6e-8 (log-probs)
)


@pytest.mark.parametrize("guidance", [5.0, 1.0], ids=["cfg", "no-cfg"])
def test_empty_window_reproduces_the_stock_wan_pipeline_on_its_grid(guidance):
    checks.check_empty_window_reproduces_the_stock_pipeline(SPEC, guidance)


def test_on_policy_ratio_is_exactly_one_over_the_whole_video_latent():
    batch = checks.check_on_policy_ratio_is_exactly_one(SPEC)
    assert batch.images.shape == (6, NUM_FRAMES, 3, 32, 32)
    assert batch.latents.shape == (6, 3, 16, 2, 4, 4)  # (B, K + 1, C, F', H', W'): every latent frame is recorded
    assert len(batch.pil_images()) == 6 and batch.pil_images()[0].size == (NUM_FRAMES * 32, 32)


def test_the_log_prob_covers_every_latent_frame():
    """Changing only the last latent frame of the recorded next state changes the log-prob."""
    pipe = checks.grpo(build_tiny_wan_pipeline())
    batch = checks.rollout(SPEC, pipe, num_generations=2)
    step = batch.step_indices[0]
    with torch.no_grad():
        before = pipe.log_prob(batch, step)
        batch.latents[:, 1, :, -1] += 0.5
        after = pipe.log_prob(batch, step)
    assert (before - after).abs().min() > 1e-3


def test_lora_gradients_reach_the_transformer_adapter():
    checks.check_lora_gradients_reach_the_adapter(SPEC)


def test_trained_lora_loads_into_the_stock_wan_pipeline(tmp_path):
    checks.check_trained_lora_loads_into_the_stock_pipeline(SPEC, tmp_path, num_frames=NUM_FRAMES)


def test_prefix_sharing_equals_no_sharing():
    checks.check_prefix_sharing_equals_no_sharing(SPEC)


def test_swap_keeps_the_unipc_flow_grid_and_integer_timesteps():
    stock = build_tiny_wan_pipeline(flow_shift=5.0)
    pipe = checks.grpo(stock)
    assert isinstance(pipe.scheduler, MixODESDEScheduler)
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_sigmas_grid == "unipc"
    for n in (4, 10, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert torch.equal(pipe.scheduler.sigmas, stock.scheduler.sigmas)
        assert torch.equal(pipe.scheduler.timesteps, stock.scheduler.timesteps.float())


@pytest.mark.parametrize("num_frames", [4, 0, 2.0])
def test_bad_num_frames_is_refused_with_the_rule(num_frames):
    pipe = checks.grpo(build_tiny_wan_pipeline())
    with pytest.raises(ValueError, match="num_frames"):
        checks.rollout(SPEC, pipe, num_frames=num_frames)


def test_image_families_refuse_num_frames():
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd_pipeline

    pipe = checks.grpo(build_tiny_sd_pipeline())
    with pytest.raises(ValueError, match="num_frames=5 is for video families"):
        pipe.rollout(checks.PROMPTS, 2, 4, height=32, width=32, num_frames=5)


def test_wan22_two_expert_pipelines_are_refused_with_a_message():
    stock = build_tiny_wan_pipeline()
    two_experts = WanPipeline(**{**stock.components, "transformer_2": stock.transformer}, boundary_ratio=0.875)
    with pytest.raises(ValueError, match=r"two-expert denoising \(transformer_2 with boundary_ratio=0.875\)"):
        checks.grpo(two_experts)


def test_wan22_ti2v_per_token_timesteps_match_the_stock_pipeline():
    """Wan 2.2 TI2V-5B's `expand_timesteps=True`: one timestep per latent token, as the stock loop builds it."""
    stock = build_tiny_wan_pipeline()
    ti2v = WanPipeline(**{k: v for k, v in stock.components.items() if k != "transformer_2"}, expand_timesteps=True)
    pipe = checks.grpo(ti2v)
    assert pipe.adapter.stock.config.expand_timesteps
    spec = checks.FamilySpec(**{**SPEC.__dict__, "build": lambda seed: ti2v})
    ours, ref = checks._empty_window_pair(spec, ti2v, pipe, 5.0)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)


def test_a_bf16_transformer_samples_float32_latents_like_the_stock_loop():
    stock = build_tiny_wan_pipeline()
    stock.transformer.to(torch.bfloat16)
    pipe = checks.grpo(stock)
    batch = checks.rollout(SPEC, pipe, num_generations=2, num_inference_steps=4)
    assert batch.latents.dtype == torch.float32 and torch.isfinite(batch.latents).all()
    with torch.no_grad():
        for chunk in batch.chunks:
            logp = pipe.log_prob(batch, batch.step_indices[0], chunk)
            assert torch.equal(logp, batch.log_probs[chunk, 0])
