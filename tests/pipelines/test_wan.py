"""Wan text-to-video on MixODESDEScheduler: the family contract on a tiny Wan 2.1 (5 frames), video latents and rewards."""

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanPipeline
from family_contract import PROMPTS, FamilyContract, grpo

from diffusers_mixgrpo import MixODESDEScheduler
from diffusers_mixgrpo.utils.tiny_family_models import build_tiny_wan_pipeline

NUM_FRAMES = 5  # two latent frames: (5 - 1) / 4 + 1


class TestWanContract(FamilyContract):
    family = "wan"
    guidance = 5.0
    stock_guidances = (5.0, 1.0)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    rollout_kwargs = {"num_frames": NUM_FRAMES}
    # measured: 6.0e-7 (CFG 5) and 5.7e-7 (no CFG) against the stock pipeline with first-order UniPC
    stock_atol = 1e-5
    lora_atol = 1e-5  # measured 8.3e-7
    prefix_atol = 2e-5  # measured 1.7e-6 (latents; images 5.4e-7)
    prefix_logp_atol = 1e-6  # measured 6e-8

    def build_stock(self, seed=0):
        return build_tiny_wan_pipeline(seed=seed)

    def reference_scheduler(self, scheduler):
        # the stock UniPC at order 1 without its corrector is the Euler / DDIM step on the same flow-sigma grid
        return UniPCMultistepScheduler.from_config(
            scheduler.config, solver_order=1, disable_corrector=list(range(1000))
        )

    def stock_call_kwargs(self, guidance):
        return {**super().stock_call_kwargs(guidance), "num_frames": NUM_FRAMES}


WAN = TestWanContract()


def test_a_rollout_records_every_latent_frame_and_decodes_videos():
    batch = WAN.rollout(grpo(build_tiny_wan_pipeline()), max_batch_size=3)
    assert batch.images.shape == (6, NUM_FRAMES, 3, 32, 32)
    assert batch.latents.shape == (6, 3, 16, 2, 4, 4)  # (B, K + 1, C, F', H', W'): every latent frame is recorded
    assert len(batch.pil_images()) == 6 and batch.pil_images()[0].size == (NUM_FRAMES * 32, 32)


def test_the_log_prob_covers_every_latent_frame():
    """Changing only the last latent frame of the recorded next state changes the log-prob."""
    pipe = grpo(build_tiny_wan_pipeline())
    batch = WAN.rollout(pipe, num_generations=2)
    step = batch.step_indices[0]
    with torch.no_grad():
        before = pipe.log_prob(batch, step)
        batch.latents[:, 1, :, -1] += 0.5
        after = pipe.log_prob(batch, step)
    assert (before - after).abs().min() > 1e-3


def test_swap_keeps_the_unipc_flow_grid_and_integer_timesteps():
    stock = build_tiny_wan_pipeline(flow_shift=5.0)
    pipe = grpo(stock)
    assert isinstance(pipe.scheduler, MixODESDEScheduler)
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_sigmas_grid == "unipc"
    for n in (4, 10, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert torch.equal(pipe.scheduler.sigmas, stock.scheduler.sigmas)
        assert torch.equal(pipe.scheduler.timesteps, stock.scheduler.timesteps.float())


@pytest.mark.parametrize("num_frames", [4, 0, 2.0])
def test_bad_num_frames_is_refused_with_the_rule(num_frames):
    pipe = grpo(build_tiny_wan_pipeline())
    with pytest.raises(ValueError, match="num_frames"):
        WAN.rollout(pipe, num_frames=num_frames)


def test_image_families_refuse_num_frames():
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd_pipeline

    pipe = grpo(build_tiny_sd_pipeline())
    with pytest.raises(ValueError, match="num_frames=5 is for video families"):
        pipe.rollout(PROMPTS, 2, 4, height=32, width=32, num_frames=5)


def test_wan22_two_expert_pipelines_are_refused_with_a_message():
    stock = build_tiny_wan_pipeline()
    two_experts = WanPipeline(**{**stock.components, "transformer_2": stock.transformer}, boundary_ratio=0.875)
    with pytest.raises(ValueError, match=r"two-expert denoising \(transformer_2 with boundary_ratio=0.875\)"):
        grpo(two_experts)


def test_wan22_ti2v_per_token_timesteps_match_the_stock_pipeline():
    """Wan 2.2 TI2V-5B's `expand_timesteps=True`: one timestep per latent token, as the stock loop builds it."""
    stock = build_tiny_wan_pipeline()
    ti2v = WanPipeline(**{k: v for k, v in stock.components.items() if k != "transformer_2"}, expand_timesteps=True)
    pipe = grpo(ti2v)
    assert pipe.family.stock.config.expand_timesteps
    ours, ref = WAN.empty_window_pair(ti2v, pipe, 5.0)
    torch.testing.assert_close(ours.images, ref, rtol=0, atol=1e-5)


def test_a_bf16_transformer_samples_float32_latents_like_the_stock_loop():
    stock = build_tiny_wan_pipeline()
    stock.transformer.to(torch.bfloat16)
    pipe = grpo(stock)
    batch = WAN.rollout(pipe, num_generations=2, num_inference_steps=4)
    assert batch.latents.dtype == torch.float32 and torch.isfinite(batch.latents).all()
    with torch.no_grad():
        for chunk in batch.chunks:
            logp = pipe.log_prob(batch, batch.step_indices[0], chunk)
            assert torch.equal(logp, batch.log_probs[chunk, 0])
