"""`MultiReward`: a weighted set of reward callables; its scores mixed into advantages by `compute_advantages`."""

import pytest
import torch

from diffusers_mixgrpo.rewards import MultiReward
from diffusers_mixgrpo.training.advantages import compute_advantages, group_advantages


def _const_reward(values, name):
    def reward(images, prompts):
        return torch.tensor(values, dtype=torch.float32)

    reward.__name__ = name
    return reward


def test_reward_aggr_is_one_advantage_of_the_weighted_sum():
    a, b = [1.0, 2.0, 3.0, 4.0], [100.0, 0.0, 300.0, 0.0]
    multi = MultiReward({_const_reward(a, "a"): 1.0, _const_reward(b, "b"): 0.5}, mix="reward_aggr")
    scores = multi.score(None, ["p"] * 4)
    adv, per_reward_advantages = compute_advantages(
        scores, [0, 0, 1, 1], weights=multi.weights, mix=multi.mix, clip=None
    )
    summed = torch.tensor(a) + 0.5 * torch.tensor(b)
    torch.testing.assert_close(multi.weighted_sum(scores), summed)
    torch.testing.assert_close(adv, group_advantages(summed, [0, 0, 1, 1], clip=None))
    assert set(scores) == {"a", "b"} and per_reward_advantages == {}


def test_advantage_aggr_is_the_weighted_mean_of_per_model_advantages():
    a, b = [1.0, 2.0, 3.0, 4.0], [100.0, 0.0, 300.0, 0.0]
    multi = MultiReward({_const_reward(a, "a"): 1.0, _const_reward(b, "b"): 0.5}, mix="advantage_aggr")

    def advantages(multi):  # the trainer's defaults: clip 5
        return compute_advantages(multi.score(None, ["p"] * 4), [0, 0, 1, 1], weights=multi.weights, mix=multi.mix)

    adv, per_reward_advantages = advantages(multi)
    adv_a = group_advantages(torch.tensor(a), [0, 0, 1, 1], clip=None)
    adv_b = group_advantages(torch.tensor(b), [0, 0, 1, 1], clip=None)
    torch.testing.assert_close(adv, (adv_a + 0.5 * adv_b) / 1.5)  # divided by the total weight
    torch.testing.assert_close(per_reward_advantages["b"], adv_b)
    # Scale-free: multiplying one reward by 1000 changes nothing in this mode.
    big = MultiReward({_const_reward(a, "a"): 1.0, _const_reward([x * 1000 for x in b], "b"): 0.5})
    torch.testing.assert_close(advantages(big)[0], adv)


def test_calling_returns_the_weighted_sum_and_keeps_per_model_scores():
    multi = MultiReward({_const_reward([1.0, 2.0], "a"): 2.0, _const_reward([3.0, 5.0], "b"): 1.0})
    torch.testing.assert_close(multi(None, ["x", "y"]), torch.tensor([5.0, 9.0]))
    torch.testing.assert_close(multi.last_scores["b"], torch.tensor([3.0, 5.0]))


def test_rewards_by_name_from_a_config_mapping():
    multi = MultiReward({"jpeg_compressibility": 1.0, "jpeg_incompressibility": 1.0}, mix="reward_aggr")
    images = torch.rand(4, 3, 16, 16)
    scores = multi.score(images, ["p"] * 4)
    torch.testing.assert_close(multi.weighted_sum(scores), torch.zeros(4))  # the two rewards cancel exactly
    assert set(scores) == {"jpeg_compressibility", "jpeg_incompressibility"}


def test_invalid_mix_is_refused():
    with pytest.raises(ValueError, match="mix"):
        MultiReward({"jpeg_compressibility": 1.0}, mix="sum")
