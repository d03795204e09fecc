"""Advantages for the trainer: one implementation of group normalisation, reward mixing, the non-finite policy."""

import pytest
import torch

from diffusers_mixgrpo.rewards import group_advantages as rewards_group_advantages
from diffusers_mixgrpo.training.advantages import compute_advantages, finite_group_mask, group_advantages, mix_rewards


def test_group_advantages_is_the_rewards_implementation():
    assert group_advantages is rewards_group_advantages


def test_hand_computed_group_advantages():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 16.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, per = compute_advantages(rewards, groups)
    # group 0: mean 2, unbiased std 1; group 1: mean 12, unbiased std sqrt(12)
    s1 = 12**0.5
    expected = torch.tensor([-1.0, 0.0, 1.0, -2 / s1, -2 / s1, 4 / s1])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    assert per == {}


def test_groups_need_not_be_contiguous_and_flat_ids_from_several_processes_work():
    rewards = torch.tensor([1.0, 10.0, 2.0, 10.0, 3.0, 16.0])
    groups = torch.tensor([7, 3, 7, 3, 7, 3])  # as gathered from 2 processes: interleaved
    adv, _ = compute_advantages(rewards, groups)
    torch.testing.assert_close(adv[[0, 2, 4]], torch.tensor([-1.0, 0.0, 1.0]))


def test_advantages_are_clipped():
    rewards = torch.tensor([0.0] * 11 + [1.0])
    adv, _ = compute_advantages(rewards, torch.zeros(12, dtype=torch.long), clip=2.0)
    assert adv.max().item() == pytest.approx(2.0)
    assert adv.min().item() > -1.0


def test_advantage_aggr_sums_per_reward_advantages_with_weights():
    groups = torch.tensor([0, 0, 1, 1])
    scores = {"a": torch.tensor([0.1, 0.3, 0.5, 0.5]), "b": torch.tensor([10.0, 0.0, 1.0, 3.0])}
    adv, per = compute_advantages(scores, groups, weights={"a": 1.0, "b": 0.5}, clip=None)
    expected_a = group_advantages(scores["a"], groups, clip=None)
    expected_b = group_advantages(scores["b"], groups, clip=None)
    torch.testing.assert_close(adv, expected_a + 0.5 * expected_b)
    torch.testing.assert_close(per["a"], expected_a)
    # scale-free: multiplying a reward by 100 changes nothing in "advantage_aggr"
    adv100, _ = compute_advantages(
        {"a": scores["a"] * 100, "b": scores["b"]}, groups, weights={"a": 1, "b": 0.5}, clip=None
    )
    torch.testing.assert_close(adv100, adv, rtol=1e-5, atol=1e-5)


def test_reward_aggr_normalises_the_weighted_sum():
    groups = torch.tensor([0, 0, 0])
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([3.0, 0.0, 0.0])}
    adv, per = compute_advantages(scores, groups, weights={"a": 1.0, "b": 1.0}, mix="reward_aggr", clip=None)
    total = torch.tensor([4.0, 2.0, 3.0])
    torch.testing.assert_close(mix_rewards(scores, {"a": 1.0, "b": 1.0}), total)
    torch.testing.assert_close(adv, (total - 3.0) / (1.0 + 1e-8))
    assert per == {}


def test_mix_rewards_default_weights_and_missing_reward():
    scores = {"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}
    torch.testing.assert_close(mix_rewards(scores), torch.tensor([3.0]))
    with pytest.raises(KeyError, match="c"):
        mix_rewards(scores, {"c": 1.0})


def test_global_std_and_trim_are_forwarded():
    rewards = torch.tensor([0.0, 2.0, 0.0, 20.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv, _ = compute_advantages(rewards, groups, std="global", clip=None)
    std = rewards.std()
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -10.0, 10.0]) / (std + 1e-8))
    trimmed, _ = compute_advantages(torch.tensor([0.0, 1.0, 2.0, 100.0]), torch.zeros(4, dtype=torch.long), trim=0.25)
    # statistics of [1, 2] only: mean 1.5, std 0.7071
    torch.testing.assert_close(trimmed[1], torch.tensor((1.0 - 1.5) / 0.5**0.5), rtol=1e-5, atol=1e-6)


def test_finite_group_mask_drops_whole_groups():
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    a = torch.tensor([1.0, float("nan"), 1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([1.0, 1.0, 1.0, 2.0, float("inf"), 4.0])
    mask = finite_group_mask({"a": a, "b": b}, groups)
    assert mask.tolist() == [False, False, True, True, False, False]
    assert finite_group_mask(a, ["p", "p", "q", "q", "r", "r"]).tolist() == [False, False, True, True, True, True]
    adv, _ = compute_advantages(a[mask], groups[mask])
    assert torch.isfinite(adv).all()
