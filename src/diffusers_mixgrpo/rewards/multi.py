"""`MultiReward`: a weighted set of reward callables, scored together.

Its `weights` and per-model `score(...)` feed the trainer's advantage computation,
`diffusers_mixgrpo.training.advantages.compute_advantages`, which mixes the rewards ("reward_aggr" / "advantage_aggr")
as described there; `mix` records which mode the set is meant for.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional, Union

import torch

from .base import ImageBatch, Reward, batch_size_of, reward_scores
from .registry import load_reward

MixMode = Literal["reward_aggr", "advantage_aggr"]


def _reward_name(reward: Callable) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


class MultiReward:
    """Several rewards with weights: registered names or callables, scored together.

    Args:
        rewards (`Mapping[str | Reward, float]`): reward -> weight. A key is a registered name (loaded with
            `load_reward(name, device=device, dtype=dtype, **reward_kwargs.get(name, {}))`) or a reward callable
            (its `name` / `__name__` labels its scores). Example: ``{"hpsv2.1": 1.0, "pickscore": 1.0}``.
        mix (`str`, defaults to `"advantage_aggr"`): how the trainer mixes the rewards into advantages:
            `"advantage_aggr"` (an advantage per model, then their weighted mean; the paper's default) or
            `"reward_aggr"` (the weighted sum of the rewards, then one advantage). See
            `training.advantages.compute_advantages`.
        device (`str` or `torch.device`, *optional*): device of the reward models and of the returned scores.
        dtype (`torch.dtype`, *optional*): compute dtype of the reward models.
        reward_kwargs (`Mapping[str, dict]`, *optional*): per-name keyword arguments for `load_reward`.

    Calling it, ``multi(images, prompts)``, returns the weighted sum of the rewards (a `Reward` itself); `score`
    returns each model's scores, also kept in `last_scores` for logging. Advantages:
    ``compute_advantages(multi.score(images, prompts), group_ids, weights=multi.weights, mix=multi.mix)``.
    """

    def __init__(
        self,
        rewards: Mapping[Union[str, Reward], float],
        mix: MixMode = "advantage_aggr",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        reward_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
    ):
        if mix not in ("reward_aggr", "advantage_aggr"):
            raise ValueError(f"mix must be 'reward_aggr' or 'advantage_aggr', got {mix!r}.")
        if not rewards:
            raise ValueError("MultiReward needs at least one reward.")
        reward_kwargs = dict(reward_kwargs or {})
        unknown = set(reward_kwargs) - {k for k in rewards if isinstance(k, str)}
        if unknown:
            raise ValueError(f"reward_kwargs given for rewards that are not in `rewards`: {sorted(unknown)}.")
        self.mix = mix
        self.device = torch.device(device) if device is not None else None
        self.rewards: dict[str, Reward] = {}
        self.weights: dict[str, float] = {}
        for key, weight in rewards.items():
            if isinstance(key, str):
                name, fn = key, load_reward(key, device=device, dtype=dtype, **reward_kwargs.get(key, {}))
            else:
                name, fn = _reward_name(key), load_reward(key)
            if name in self.rewards:
                raise ValueError(f"Two rewards are named {name!r}; give them distinct names.")
            self.rewards[name], self.weights[name] = fn, float(weight)
        self.last_scores: dict[str, torch.Tensor] = {}

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each reward's (B,) float32 scores, keyed by name (also stored in `last_scores`)."""
        scores = {}
        n = batch_size_of(images) if images is not None else len(prompts)
        for name, fn in self.rewards.items():
            s = reward_scores(name, fn(images, prompts), n)  # one float per image, or one sentence saying what came
            if self.device is not None:
                s = s.to(self.device)
            scores[name] = s
        self.last_scores = scores
        return scores

    def weighted_sum(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_k w_k r_k`` over the rewards of this `MultiReward`."""
        return sum(self.weights[name] * scores[name].to(torch.float32) for name in self.rewards)

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        return self.weighted_sum(self.score(images, prompts))

    def __repr__(self) -> str:
        return f"MultiReward({self.weights}, mix={self.mix!r})"
