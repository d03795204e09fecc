"""`GRPOTrainingPipeline.rollout(sde_steps=...)`: SDE steps with gaps between them, on the tiny FLUX.1 pipeline. The
listed steps are sampled and recorded, the others are deterministic ODE steps, and the log-prob recomputation gives
the recorded values back."""

import pytest
import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline, build_tiny_sd_pipeline

PROMPTS = ["a red circle on the left", "a blue square on the right"]
SIZE = 32


@pytest.fixture(scope="module")
def stock():
    return build_tiny_flux_pipeline()


def grpo(stock, **scheduler_config):
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    for name, value in scheduler_config.items():
        pipe.scheduler.register_to_config(**{name: value})
    return pipe


def rollout(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_generations", 3)
    kwargs.setdefault("num_inference_steps", 6)
    return pipe.rollout(
        PROMPTS, height=SIZE, width=SIZE, guidance_scale=3.5, generator=torch.Generator().manual_seed(seed), **kwargs
    )


def test_only_the_requested_steps_are_recorded(stock):
    pipe = grpo(stock)
    batch = rollout(pipe, sde_steps=[0, 3])
    assert batch.step_indices == [0, 3]
    assert batch.sde_window == (0, 4)  # the span
    assert batch.latent_index == [(0, 1), (2, 3)]  # x_0, x_1 around step 0; x_3, x_4 around step 3
    assert batch.latents.shape[:2] == (6, 4) and batch.log_probs.shape == (6, 2)
    assert torch.isfinite(batch.log_probs).all() and (batch.log_probs != 0).all()
    sched = pipe._log_prob_scheduler(batch)
    assert torch.equal(batch.timesteps, sched.timesteps[[0, 3]])
    with pytest.raises(ValueError, match=r"step_index=1 was not recorded.*\[0, 3\]"):
        pipe.log_prob(batch, 1)


def test_the_steps_between_are_the_deterministic_ode(stock):
    """From the recorded output of SDE step 0, two Euler steps (1 and 2) with the same denoiser reach the recorded
    input of SDE step 3 exactly (same batch, same arithmetic)."""
    pipe = grpo(stock)
    batch = rollout(pipe, sde_steps=[0, 3])
    sched = pipe._log_prob_scheduler(batch)
    embeds = batch.prompt_embeds.select(batch.group_ids)
    x = batch.latents[:, 1]
    with torch.no_grad():
        for i in (1, 2):
            v = pipe._predict(x, sched.timesteps[i], embeds, batch.guidance_scale, SIZE, SIZE, None)
            x = sched._euler_step(v, x, i)
    assert torch.equal(x, batch.latents[:, 2])  # measured max |difference|: 0.0


def test_with_eta_zero_the_noise_has_no_effect_and_a_group_gives_one_image(stock):
    """eta = 0: every step is deterministic, so the members of a group (same initial noise, different SDE noise)
    give identical images, equal to the pure ODE rollout up to the SDE form's rounding (measured 1.2e-6)."""
    pipe = grpo(stock, eta=0.0)
    batch = rollout(pipe, sde_steps=[1, 4])
    for g in range(len(PROMPTS)):
        members = batch.images[batch.group_ids == g]
        assert all(torch.equal(members[0], m) for m in members[1:])
    ode = rollout(pipe, sde_window=(0, 0))
    torch.testing.assert_close(batch.images, ode.images, rtol=0, atol=1e-5)  # measured 1.2e-6


def test_recomputed_log_probs_match_the_rollout_so_the_first_ratio_is_one(stock):
    pipe = grpo(stock)
    batch = rollout(pipe, sde_steps=[1, 4], num_generations=2)
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            for chunk in batch.chunks:
                log_prob = pipe.log_prob(batch, step, chunk)
                ratio = torch.exp(log_prob - batch.log_probs[chunk, j])
                assert torch.equal(ratio, torch.ones_like(ratio))  # measured: exactly 1


def test_a_flash_tail_after_the_last_sde_step_keeps_the_first_ratio_at_one(stock):
    """MixGRPO-Flash settings (DPM-Solver++ tail, r = 0.4) with SDE steps [1, 3] of N = 10: the loop runs steps 0..3 of
    the grid then one tail step (5 forwards per sample), and the recomputation rebuilds that grid (ratio exactly 1)."""
    pipe = grpo(stock, tail_ratio=0.4, tail_solver="dpmsolver++")
    batch = rollout(pipe, sde_steps=[1, 3], num_inference_steps=10, share_prefix=False)
    assert batch.nfe == batch.batch_size * 5
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            log_prob = pipe.log_prob(batch, step, batch.chunks[0])
            assert torch.equal(log_prob, batch.log_probs[batch.chunks[0], j])


def test_ddim_sde_steps_with_gaps_on_sd15():
    """The VP scheduler (SD1.5, DDIM-eta SDE) takes the same list: recorded at [0, 2] only, recomputed exactly."""
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_sd_pipeline())
    pipe.set_progress_bar_config(disable=True)
    batch = pipe.rollout(
        PROMPTS, 2, 5, sde_steps=[0, 2], height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(0)
    )
    assert batch.step_indices == [0, 2] and batch.latent_index == [(0, 1), (2, 3)]
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            assert torch.equal(pipe.log_prob(batch, step, batch.chunks[0]), batch.log_probs[batch.chunks[0], j])


def test_consecutive_steps_give_the_window_rollout_bit_for_bit(stock):
    pipe = grpo(stock)
    listed = rollout(pipe, sde_steps=[1, 2, 3])
    window = rollout(pipe, sde_window=(1, 3))
    assert listed.latent_index == window.latent_index == [(0, 1), (1, 2), (2, 3)]
    assert listed.sde_window == window.sde_window
    for name in ("latents", "log_probs", "images", "timesteps"):
        assert torch.equal(getattr(listed, name), getattr(window, name)), name


def test_prefix_sharing_gives_the_same_rollout_with_gaps(stock):
    pipe = grpo(stock)
    shared = rollout(pipe, sde_steps=[2, 4], share_prefix=True)
    separate = rollout(pipe, sde_steps=[2, 4], share_prefix=False)
    torch.testing.assert_close(shared.latents, separate.latents, rtol=0, atol=1e-6)  # measured 0.0
    torch.testing.assert_close(shared.log_probs, separate.log_probs, rtol=0, atol=1e-6)  # measured 0.0
    assert shared.nfe < separate.nfe  # 2 shared prefix steps per prompt instead of per sample


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sde_steps=[0, 2], sde_window=(0, 2)), "both sde_window"),
        (dict(sde_steps=[3, 1]), r"sde_steps=\[3, 1\] is not allowed"),
        (dict(sde_steps=[0, 6]), r"in \[0, 5\]"),
    ],
)
def test_bad_sde_steps_are_refused(stock, kwargs, message):
    with pytest.raises(ValueError, match=message):
        rollout(grpo(stock), **kwargs)
