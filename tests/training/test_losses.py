"""The clipped GRPO loss and the KL terms on hand-made batches with hand-computed values."""

import math

import pytest
import torch

from diffusers_mixgrpo.training.losses import grpo_loss, policy_loss, reference_kl, rollout_kl


def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage():
    log_prob = torch.tensor([-1.3, 0.2, -0.7, 2.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.25])
    out = policy_loss(log_prob, log_prob.detach().clone(), adv, clip_range=1e-4)
    assert out.loss.item() == pytest.approx(-adv.mean().item(), abs=0)
    assert out.clip_fraction.item() == 0.0
    assert out.ratio_mean.item() == out.ratio_min.item() == out.ratio_max.item() == 1.0
    assert out.approx_kl.item() == 0.0


def test_on_policy_gradient_raises_log_prob_of_positive_advantages():
    log_prob = torch.tensor([-1.0, -1.0, -1.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0, 0.0])
    out = policy_loss(log_prob, log_prob.detach(), adv)
    out.loss.backward()
    # d loss / d log_prob_b = -A_b * ratio_b / B
    torch.testing.assert_close(log_prob.grad, -adv / 3)
    # a gradient-descent step moves log-probs in the direction of the advantage
    new = log_prob.detach() - 0.1 * log_prob.grad
    assert new[0] > -1.0 and new[1] < -1.0 and new[2] == -1.0


def test_hand_computed_clipped_loss():
    eps = 0.1
    old = torch.zeros(4)
    # ratios: 1.2 (A>0: clipped at 1.1), 0.8 (A>0: unclipped, smaller), 1.2 (A<0: unclipped, larger), 0.8 (A<0: clip 0.9)
    log_prob = torch.log(torch.tensor([1.2, 0.8, 1.2, 0.8])).requires_grad_(True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    out = policy_loss(log_prob, old, adv, clip_range=eps)
    # per-sample max(-A r, -A clip(r)): [-1.1, -0.8, 1.2, 0.9]
    assert out.loss.item() == pytest.approx((-1.1 - 0.8 + 1.2 + 0.9) / 4, rel=1e-6)
    assert out.clip_fraction.item() == 1.0  # every |r - 1| = 0.2 > eps
    assert out.ratio_min.item() == pytest.approx(0.8) and out.ratio_max.item() == pytest.approx(1.2)
    assert out.ratio_mean.item() == pytest.approx(1.0)
    expected_kl = 0.5 * (2 * math.log(1.2) ** 2 + 2 * math.log(0.8) ** 2) / 4
    assert out.approx_kl.item() == pytest.approx(expected_kl, rel=1e-6)
    out.loss.backward()
    # clipped samples (0 and 3) get no gradient; unclipped ones get -A * r / B
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, -0.8 / 4, 1.2 / 4, 0.0]))


def test_stats_are_detached_and_loss_is_a_scalar():
    log_prob = torch.randn(5, requires_grad=True)
    out = policy_loss(log_prob, torch.randn(5), torch.randn(5))
    assert out.loss.ndim == 0 and out.loss.requires_grad
    assert all(not v.requires_grad and v.ndim == 0 for v in out.stats().values())


def test_policy_loss_rejects_bad_shapes_and_clip_range():
    with pytest.raises(ValueError, match="same"):
        policy_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        policy_loss(torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="clip_range"):
        policy_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), clip_range=0.0)


def test_low_precision_inputs_are_computed_in_float32():
    log_prob = torch.tensor([-1.0, -2.0], dtype=torch.bfloat16)
    out = policy_loss(log_prob, log_prob, torch.tensor([1.0, 3.0], dtype=torch.bfloat16))
    assert out.loss.dtype == torch.float32 and out.loss.item() == -2.0


def test_rollout_kl_value_and_gradient():
    log_prob = torch.tensor([0.5, -0.5, 1.0], requires_grad=True)
    old = torch.tensor([0.0, 0.0, 0.0])
    kl = rollout_kl(log_prob, old)
    assert kl.item() == pytest.approx(0.5 * (0.25 + 0.25 + 1.0) / 3)
    kl.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.5, -0.5, 1.0]) / 3)


def test_reference_kl_is_mean_squared_distance_over_two_tau_squared():
    mean = torch.zeros(2, 1, 2, 2)
    mean[0] = 1.0  # sample 0: every element differs by 1
    mean[1, 0, 0, 0] = 2.0  # sample 1: one of 4 elements differs by 2
    ref = torch.zeros_like(mean)
    tau = 0.5
    per_sample = reference_kl(mean, ref, tau, reduce=False)
    torch.testing.assert_close(per_sample, torch.tensor([1.0 / (2 * 0.25), (4.0 / 4) / (2 * 0.25)]))
    assert reference_kl(mean, ref, tau).item() == pytest.approx(2.0)
    # a (B,) std is broadcast per sample
    per_sample = reference_kl(mean, ref, torch.tensor([0.5, 1.0]), reduce=False)
    torch.testing.assert_close(per_sample, torch.tensor([2.0, 0.5]))
    assert reference_kl(ref, ref, tau).item() == 0.0


def test_reference_kl_gradient_flows_to_current_mean_only():
    mean = torch.ones(2, 3, requires_grad=True)
    ref = torch.zeros(2, 3, requires_grad=True)
    reference_kl(mean, ref, 1.0).backward()
    torch.testing.assert_close(mean.grad, torch.full((2, 3), 1.0 / 6))  # d/dmu mean((mu-ref)^2/2) = (mu-ref)/(B*D)
    assert ref.grad is None


def test_grpo_loss_adds_the_weighted_kl():
    log_prob = torch.tensor([0.1, -0.1], requires_grad=True)
    old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    base = grpo_loss(log_prob, old, adv, clip_range=0.2)
    assert base.kl.item() == 0.0 and base.loss.item() == base.policy_loss.item()
    with_kl = grpo_loss(log_prob, old, adv, clip_range=0.2, kl_type="rollout", kl_coeff=0.5)
    assert with_kl.loss.item() == pytest.approx(base.policy_loss.item() + 0.5 * 0.5 * 0.01)
    mean = torch.ones(2, 4)
    ref_out = grpo_loss(
        log_prob, old, adv, kl_type="reference", kl_coeff=2.0, prev_sample_mean=mean,
        ref_prev_sample_mean=torch.zeros(2, 4), std_dev=1.0,
    )  # fmt: skip
    assert ref_out.kl.item() == pytest.approx(0.5)
    assert ref_out.loss.item() == pytest.approx(ref_out.policy_loss.item() + 1.0)
    assert set(ref_out.stats()) >= {"policy_loss", "kl", "clip_fraction", "approx_kl", "ratio_mean"}
    with pytest.raises(ValueError, match="prev_sample_mean"):
        grpo_loss(log_prob, old, adv, kl_type="reference", kl_coeff=1.0)
    with pytest.raises(ValueError, match="kl_type"):
        grpo_loss(log_prob, old, adv, kl_type="forward")
