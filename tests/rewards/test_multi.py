import pytest
import torch

from diffusers_mixgrpo.rewards import MultiReward, group_advantages


def _const_reward(values, name):
    def reward(images, prompts):
        return torch.tensor(values, dtype=torch.float32)

    reward.__name__ = name
    return reward


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


def test_reward_aggr_is_one_advantage_of_the_weighted_sum():
    a, b = [1.0, 2.0, 3.0, 4.0], [100.0, 0.0, 300.0, 0.0]
    multi = MultiReward({_const_reward(a, "a"): 1.0, _const_reward(b, "b"): 0.5}, mix="reward_aggr", clip=None)
    out = multi.compute(None, ["p"] * 4, [0, 0, 1, 1])
    summed = torch.tensor(a) + 0.5 * torch.tensor(b)
    torch.testing.assert_close(out.rewards, summed)
    torch.testing.assert_close(out.advantages, group_advantages(summed, [0, 0, 1, 1], clip=None))
    assert set(out.per_reward) == {"a", "b"} and out.per_reward_advantages == {}


def test_advantage_aggr_is_the_weighted_mean_of_per_model_advantages():
    a, b = [1.0, 2.0, 3.0, 4.0], [100.0, 0.0, 300.0, 0.0]
    multi = MultiReward({_const_reward(a, "a"): 1.0, _const_reward(b, "b"): 0.5}, mix="advantage_aggr")
    out = multi.compute(None, ["p"] * 4, [0, 0, 1, 1])
    adv_a = group_advantages(torch.tensor(a), [0, 0, 1, 1], clip=None)
    adv_b = group_advantages(torch.tensor(b), [0, 0, 1, 1], clip=None)
    torch.testing.assert_close(out.advantages, (adv_a + 0.5 * adv_b) / 1.5)  # divided by the total weight
    torch.testing.assert_close(out.per_reward_advantages["b"], adv_b)
    # Scale-free: multiplying one reward by 1000 changes nothing in this mode.
    big = MultiReward({_const_reward(a, "a"): 1.0, _const_reward([x * 1000 for x in b], "b"): 0.5})
    torch.testing.assert_close(big.compute(None, ["p"] * 4, [0, 0, 1, 1]).advantages, out.advantages)


def test_calling_returns_the_weighted_sum_and_keeps_per_model_scores():
    multi = MultiReward({_const_reward([1.0, 2.0], "a"): 2.0, _const_reward([3.0, 5.0], "b"): 1.0})
    torch.testing.assert_close(multi(None, ["x", "y"]), torch.tensor([5.0, 9.0]))
    torch.testing.assert_close(multi.last_scores["b"], torch.tensor([3.0, 5.0]))


def test_rewards_by_name_from_a_config_mapping():
    multi = MultiReward({"jpeg_compressibility": 1.0, "jpeg_incompressibility": 1.0}, mix="reward_aggr")
    images = torch.rand(4, 3, 16, 16)
    out = multi.compute(images, ["p"] * 4, [0, 0, 1, 1])
    torch.testing.assert_close(out.rewards, torch.zeros(4))  # the two rewards cancel exactly
    assert set(out.per_reward) == {"jpeg_compressibility", "jpeg_incompressibility"}


def test_invalid_mix_is_refused():
    with pytest.raises(ValueError, match="mix"):
        MultiReward({"jpeg_compressibility": 1.0}, mix="sum")


def test_huge_finite_rewards_give_finite_advantages():
    """float32 rewards near its maximum overflow a float32 mean or std; the statistics are float64."""
    from diffusers_mixgrpo.rewards import group_advantages

    rewards = torch.tensor([3.0e38, -3.0e38, 1.0e38, 2.0e38], dtype=torch.float32)
    adv = group_advantages(rewards, torch.tensor([0, 0, 1, 1]), clip=None)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all()
    s = 2**-0.5  # measured difference: 1.2e-8
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s]), atol=1e-7, rtol=0)
