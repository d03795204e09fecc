"""Advantages for the trainer: one implementation of group normalisation, reward mixing, the non-finite policy."""

import pytest
import torch

import diffusers_mixgrpo.rewards as rewards_package
from diffusers_mixgrpo.training.advantages import compute_advantages, finite_group_mask, group_advantages, mix_rewards


def test_group_advantages_has_one_home():
    assert not hasattr(rewards_package, "group_advantages")  # training.advantages is the only implementation


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


def test_advantage_aggr_is_the_weighted_mean_of_per_reward_advantages():
    groups = torch.tensor([0, 0, 1, 1])
    scores = {"a": torch.tensor([0.1, 0.3, 0.5, 0.5]), "b": torch.tensor([10.0, 0.0, 1.0, 3.0])}
    adv, per = compute_advantages(scores, groups, weights={"a": 1.0, "b": 0.5}, clip=None)
    expected_a = group_advantages(scores["a"], groups, clip=None)
    expected_b = group_advantages(scores["b"], groups, clip=None)
    torch.testing.assert_close(adv, (expected_a + 0.5 * expected_b) / 1.5)
    torch.testing.assert_close(per["a"], expected_a)
    # scale-free: multiplying a reward by 100 changes nothing in "advantage_aggr"
    adv100, _ = compute_advantages(
        {"a": scores["a"] * 100, "b": scores["b"]}, groups, weights={"a": 1, "b": 0.5}, clip=None
    )
    torch.testing.assert_close(adv100, adv, rtol=1e-5, atol=1e-5)


def test_three_rewards_are_divided_by_the_total_weight_so_the_clip_binds_as_with_one():
    """Hand-computed: a group of 12 where one image scores 1 and the others 0, on each of three rewards. Per reward,
    mean 1/12 and unbiased std sqrt(1/12), so the top image's advantage is (11/12) / sqrt(1/12) = 11 / sqrt(12) = 3.175
    and the others' -1 / sqrt(12). Their plain sum (9.53) would be clipped to 5; their mean, as the official MixGRPO
    code takes it, is 3.175 and stays unclipped, as with one reward."""
    groups = torch.zeros(12, dtype=torch.long)
    one_hot = torch.tensor([0.0] * 11 + [1.0])
    scores = {"hps": one_hot, "pickscore": one_hot * 0.02, "imagereward": one_hot * 3.0}  # scale-free per reward
    adv, _ = compute_advantages(scores, groups, weights={"hps": 1.0, "pickscore": 1.0, "imagereward": 1.0}, clip=5.0)
    expected = torch.tensor([-1 / 12**0.5] * 11 + [11 / 12**0.5])
    # float32: 0.02 is not exact; measured largest relative difference 6.0e-7 (1.9e-6 absolute on 3.175)
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=0)
    single, _ = compute_advantages({"hps": one_hot}, groups, weights={"hps": 1.0}, clip=5.0)
    torch.testing.assert_close(single, adv, rtol=1e-6, atol=0)  # one reward of weight 1: its own advantage
    # unequal weights 2 : 1 on two rewards whose advantages are +-1 (groups of 2): (2 * 1 + 1 * -1) / 3 = 1/3
    adv, _ = compute_advantages(
        {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0, 0.0])}, [0, 0], weights={"a": 2.0, "b": 1.0}
    )
    # group of 2: (r - mean) / (std + 1e-8), std = 1/sqrt(2), so A = +-1/sqrt(2) per reward
    a = 1 / 2**0.5
    torch.testing.assert_close(adv, torch.tensor([(-2 * a + a) / 3, (2 * a - a) / 3]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="sum to 0"):
        compute_advantages({"a": one_hot}, groups, weights={"a": 0.0})


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


def test_group_advantages_normalise_within_each_group():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    adv = group_advantages(r, [0, 0, 0, 1, 1, 1])
    expected = torch.tensor([-1.0, 0.0, 1.0, -1.0, 0.0, 1.0])  # (r - mean) / std (Bessel), both groups
    torch.testing.assert_close(adv, expected)
    assert adv.dtype == torch.float32


def test_group_members_need_not_be_contiguous():
    r = torch.tensor([1.0, 10.0, 2.0, 20.0, 3.0, 30.0])
    adv = group_advantages(r, torch.tensor([7, 3, 7, 3, 7, 3]))
    torch.testing.assert_close(adv, torch.tensor([-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]))


def test_global_std_uses_the_std_of_the_whole_batch():
    r = torch.tensor([1.0, 3.0, 10.0, 14.0])
    adv = group_advantages(r, [0, 0, 1, 1], std="global")
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (r.std() + 1e-8)
    torch.testing.assert_close(adv, expected)


def test_equal_rewards_give_zero_advantage_and_clip_applies():
    adv = group_advantages(torch.tensor([5.0, 5.0, 5.0]), [0, 0, 0])
    assert torch.equal(adv, torch.zeros(3))
    adv = group_advantages(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]), [0] * 10, clip=2.0)
    assert adv.max() == 2.0


def test_trim_drops_outliers_from_the_statistics():
    r = torch.tensor([1.0, 2.0, 3.0, 100.0])
    adv = group_advantages(r, [0] * 4, trim=0.25, clip=None)
    kept = torch.tensor([2.0, 3.0])  # lowest and highest quarter left out
    torch.testing.assert_close(adv, (r - kept.mean()) / (kept.std() + 1e-8))


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="std"):
        group_advantages(torch.ones(2), [0, 0], std="batch")
    with pytest.raises(ValueError, match="trim"):
        group_advantages(torch.ones(2), [0, 0], trim=0.5)
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.ones(2), [0])
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([1.0, float("nan")]), [0, 0])


def test_huge_finite_rewards_give_finite_advantages():
    """float32 rewards near its maximum overflow a float32 mean or std; the statistics are float64."""
    rewards = torch.tensor([3.0e38, -3.0e38, 1.0e38, 2.0e38], dtype=torch.float32)
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]), clip=None)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    torch.testing.assert_close(adv, torch.tensor([0.7071, -0.7071, -0.7071, 0.7071]), atol=1e-4, rtol=0)
