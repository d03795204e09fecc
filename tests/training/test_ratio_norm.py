"""GRPO-Guard's ratio normalisation (`ratio_norm`) against numbers worked out by hand, and in the trainer."""

import math

import pytest
import torch

from diffusers_mixgrpo.training.losses import grpo_loss, guard_step_weights, policy_loss, ratio_norm_log_ratio

# Two samples, two latent elements each, tau = 0.5, mu_old = 0, x_{t+1} = mu_old + tau * z.
#   sample 0: z = (1, -1), d = mu_theta - mu_old = (0.1, 0.1)
#   sample 1: z = (1,  1), d = (0.1, 0.1)
# Per-element log-ratio ((x - mu_old)^2 - (x - mu_theta)^2) / (2 tau^2):
#   sample 0: ((0.25 - 0.16) + (0.25 - 0.36)) / 2 / 0.5 = -0.02      (mean over the 2 elements)
#   sample 1: ((0.25 - 0.16) + (0.25 - 0.16)) / 2 / 0.5 = 0.18
# b = mean(d^2) / (2 tau^2) = 0.01 / 0.5 = 0.02; normalised (log_ratio + b) * tau = (0.0, 0.1) = mean(z * d).
TAU = 0.5
MU_OLD = torch.zeros(2, 2)
MU_THETA = torch.full((2, 2), 0.1)
LOG_RATIO = torch.tensor([-0.02, 0.18])


def test_ratio_norm_removes_the_bias_and_scales_by_tau():
    normalised = ratio_norm_log_ratio(LOG_RATIO, MU_THETA, MU_OLD, TAU)
    torch.testing.assert_close(normalised, torch.tensor([0.0, 0.1]), atol=1e-7, rtol=0)  # measured: 7e-9
    # the "sum" reduction: b = (0.01 + 0.01) / 0.5 = 0.04 added to a summed log-ratio (-0.04, 0.36): (0.0, 0.2)
    summed = ratio_norm_log_ratio(2 * LOG_RATIO, MU_THETA, MU_OLD, TAU, reduction="sum")
    torch.testing.assert_close(summed, torch.tensor([0.0, 0.2]), atol=1e-7, rtol=0)


def test_the_normalised_ratio_is_what_gets_clipped():
    # eps = 0.05, A = (1, 1).
    # Plain: ratios exp(-0.02) = 0.980199, exp(0.18) = 1.197217; sample 1 is clipped at 1.05:
    #   loss = (-0.980199 - 1.05) / 2 = -1.0150995; clip fraction 1/2.
    # RatioNorm: ratios exp(0) = 1, exp(0.1) = 1.105171; loss = (-1 - 1.05) / 2 = -1.025; clip fraction 1/2.
    adv = torch.ones(2)
    plain = policy_loss(LOG_RATIO.clone(), torch.zeros(2), adv, clip_range=0.05)
    assert float(plain.loss) == pytest.approx(-1.0150995, abs=1e-6)
    assert float(plain.ratio_min) == pytest.approx(0.980199, abs=1e-6)
    log_prob = LOG_RATIO.clone().requires_grad_(True)
    guard = policy_loss(
        log_prob,
        torch.zeros(2),
        adv,
        clip_range=0.05,
        ratio_norm=True,
        prev_sample_mean=MU_THETA,
        old_prev_sample_mean=MU_OLD,
        std_dev=TAU,
    )
    assert float(guard.loss.detach()) == pytest.approx(-1.025, abs=1e-6)
    assert float(guard.ratio_min) == pytest.approx(1.0, abs=1e-6) and float(guard.ratio_max) == pytest.approx(
        math.exp(0.1), abs=1e-6
    )
    assert float(guard.clip_fraction) == 0.5
    assert float(guard.approx_kl) == pytest.approx(0.5 * (0.02**2 + 0.18**2) / 2, abs=1e-7)  # of the raw ratio
    # d loss / d log_prob: unclipped sample 0: -A * ratio * tau / B = -1 * 1 * 0.5 / 2 = -0.25; sample 1 clipped: 0
    guard.loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-0.25, 0.0]), atol=1e-6, rtol=0)


def test_a_left_shifted_positive_sample_reaches_the_upper_clip_only_after_normalisation():
    # z = (0.2, 0.2), d = (0.3, 0.3), tau = 0.5: log-ratio = z d / tau - d^2 / (2 tau^2) = 0.12 - 0.18 = -0.06,
    # ratio 0.941765: below 1 - eps, where the clip never binds for a positive advantage (the sample keeps pushing).
    # Normalised: mean(z d) = 0.06, ratio 1.061837 > 1 + eps = 1.05: clipped, no gradient from that sample.
    mu_theta = torch.full((1, 2), 0.3, requires_grad=True)
    log_ratio = torch.tensor([-0.06], requires_grad=True)
    out = policy_loss(
        log_ratio,
        torch.zeros(1),
        torch.ones(1),
        clip_range=0.05,
        ratio_norm=True,
        prev_sample_mean=mu_theta,
        old_prev_sample_mean=torch.zeros(1, 2),
        std_dev=torch.tensor([TAU]),
    )
    assert float(out.ratio_max) == pytest.approx(math.exp(0.06), abs=1e-6)  # 1.061837
    assert float(out.loss.detach()) == pytest.approx(-1.05, abs=1e-6) and float(out.clip_fraction) == 1.0
    out.loss.backward()
    assert float(log_ratio.grad.abs().sum()) == 0.0 and float(mu_theta.grad.abs().sum()) == 0.0


def test_on_policy_the_normalised_ratio_is_exactly_one():
    mu = torch.randn(3, 4, 5)
    out = policy_loss(
        torch.full((3,), -1.3),
        torch.full((3,), -1.3),
        torch.tensor([1.0, -1.0, 0.5]),
        ratio_norm=True,
        prev_sample_mean=mu,
        old_prev_sample_mean=mu.clone(),
        std_dev=torch.tensor([0.2, 0.3, 0.4]),
    )
    assert float(out.ratio_min) == float(out.ratio_max) == 1.0


def test_guard_step_weights_are_one_over_dt_with_mean_one():
    # sigmas 1, 0.75, 0.25, 0: |dt| = 0.25, 0.5, 0.25 -> 1/|dt| = 4, 2, 4; over steps (0, 1) the mean is 3.
    assert guard_step_weights([1.0, 0.75, 0.25, 0.0], [0, 1]) == pytest.approx({0: 4 / 3, 1: 2 / 3})
    assert guard_step_weights([1.0, 0.75, 0.25, 0.0], [1]) == {1: 1.0}


def test_grpo_loss_weights_the_policy_term_only():
    kwargs = dict(prev_sample_mean=MU_THETA, old_prev_sample_mean=MU_OLD, std_dev=TAU, clip_range=0.05)
    ref = torch.full((2, 2), 0.2)
    out = grpo_loss(
        LOG_RATIO, torch.zeros(2), torch.ones(2), ratio_norm=True, step_weight=2.0, kl_type="reference",
        kl_coeff=0.5, ref_prev_sample_mean=ref, **kwargs,
    )  # fmt: skip
    # policy -1.025 * 2; KL = mean((0.1 - 0.2)^2) / (2 * 0.25) = 0.02, times 0.5
    assert float(out.policy_loss) == pytest.approx(-2.05, abs=1e-6)
    assert float(out.loss.detach()) == pytest.approx(-2.05 + 0.01, abs=1e-6)


def test_ratio_norm_needs_the_means():
    with pytest.raises(ValueError, match="ratio_norm=True needs prev_sample_mean, old_prev_sample_mean and std_dev"):
        policy_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), ratio_norm=True)


# -- in the trainer -------------------------------------------------------------------------------------------------


def _trainer(tmp_path, **overrides):
    from testing_utils import tiny_config, tiny_flux_trainer

    values = dict(
        method="mixgrpo", num_inference_steps=4, num_generations=4, sample_prompts_per_device=2, window_size=2,
        learning_rate=1e-3, max_train_steps=1, seed=3, ratio_norm=True,
    )  # fmt: skip
    prompts = ["a red circle on the left", "a blue square on the right"]
    return tiny_flux_trainer(tiny_config(tmp_path / "run", **{**values, **overrides}), prompts)


def test_the_rollout_records_the_means_the_training_pass_recomputes(tmp_path):
    trainer = _trainer(tmp_path)
    batch = trainer._rollout(0)
    assert batch.means is not None and batch.means.dtype == torch.float32
    assert batch.means.shape == (8, 2, *batch.latents.shape[2:])
    with torch.no_grad():
        for j, t in enumerate(batch.step_indices):
            for chunk in batch.chunks:
                _, mean, _ = trainer.pipeline.log_prob(batch, t, chunk, return_stats=True)
                assert torch.equal(mean.float(), batch.means[chunk, j])  # the same arithmetic, the same batch
    sub = batch.select(torch.tensor([5, 1]))
    assert torch.equal(sub.means, batch.means[[5, 1]])
    from diffusers_mixgrpo.training.overlap import concat_rollouts  # overlap_rewards joins the rollout's pieces

    joined = concat_rollouts([batch.select(torch.arange(4)), batch.select(torch.arange(4, 8))])
    assert torch.equal(joined.means, batch.means)


def test_a_ratio_norm_run_starts_on_policy_and_trains(tmp_path):
    # two optimiser steps per iteration: the second micro-batch sees updated weights (ratio != 1)
    trainer = _trainer(tmp_path, train_batch_size=4, gradient_accumulation_steps=1)
    before = {n: p.detach().clone() for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" in n}
    logs = trainer.train_step()
    assert logs["train/optimizer_steps"] == 2
    assert all(math.isfinite(v) for v in logs.values() if isinstance(v, float))
    after = {n: p.detach() for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" in n}
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_ratio_norm_is_refused_where_it_does_not_apply(tmp_path):
    from diffusers_mixgrpo.training.errors import ConfigError
    from testing_utils import tiny_config

    with pytest.raises(ConfigError, match="ratio_norm=True needs the Gaussian log-prob"):
        tiny_config(tmp_path, ratio_norm=True, sde_type="cps", eta=0.8, cps_log_prob="flow_grpo")
    with pytest.raises(ConfigError, match="ratio_norm=True needs a flow-matching model"):
        tiny_config(tmp_path, ratio_norm=True, model_family="sd15")


def test_tau_on_the_papers_grid_is_what_the_docs_say():
    # docs/training.md ("Loss"): ratio_norm scales the policy gradient by tau, 0.088 to 0.72 on N = 25, shift 3, eta 0.7
    from diffusers_mixgrpo.schedulers.scheduling_mix_ode_sde import MixODESDEScheduler

    sched = MixODESDEScheduler(shift=3.0, eta=0.7, sde_type="flow_grpo")
    sched.set_sde_window(0, 24)
    sched.set_timesteps(25)
    x = torch.zeros(1, 4)
    taus = [float(sched.step_log_prob(x, x, x, i)[2]) for i in range(24)]
    assert min(taus) == pytest.approx(0.0883, abs=1e-3) and max(taus) == pytest.approx(0.7151, abs=1e-3)
