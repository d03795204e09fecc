"""Before the merge of the two advantage paths: `MultiReward.advantages` and `compute_advantages` agree."""

import pytest
import torch

from diffusers_mixgrpo.rewards import MultiReward
from diffusers_mixgrpo.training.advantages import compute_advantages


def _const(name):
    def reward(images, prompts):
        return torch.zeros(len(prompts))

    reward.__name__ = name
    return reward


@pytest.mark.parametrize("mix", ["advantage_aggr", "reward_aggr"])
@pytest.mark.parametrize("std", ["group", "global", "none"])
@pytest.mark.parametrize("trim", [0.0, 0.25])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_multireward_advantages_equal_compute_advantages(mix, std, trim, clip):
    g = torch.Generator().manual_seed(0)
    groups = torch.tensor([3, 1, 3, 1, 3, 1, 3, 1, 2, 2, 2, 2])
    scores = {
        "a": torch.randn(12, generator=g),
        "b": torch.randn(12, generator=g) * 50,
        "c": torch.rand(12, generator=g),
    }
    weights = {"a": 1.0, "b": 0.5, "c": -0.25}
    multi = MultiReward({_const(k): w for k, w in weights.items()}, mix=mix, std=std, trim=trim, clip=clip)
    old, old_per = multi.advantages(scores, groups)
    new, new_per = compute_advantages(scores, groups, weights=weights, mix=mix, std=std, trim=trim, clip=clip)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    assert set(new_per) == set(old_per)
    for name in new_per:
        torch.testing.assert_close(new_per[name], old_per[name], rtol=0, atol=0)
