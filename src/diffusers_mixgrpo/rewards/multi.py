"""Group-normalised GRPO advantages and `MultiReward`, which mixes several rewards ("reward_aggr" / "advantage_aggr").

MixGRPO (section 6 of the algorithm notes): per prompt a group of G rollouts is scored; the advantage of rollout j is
``A_j = (r_j - mean_group) / (std + eps)``, clipped to [-clip, clip]. With several reward models:

- ``"reward_aggr"``: ``r = sum_k w_k r_k``, then one advantage;
- ``"advantage_aggr"`` (the paper's default, all weights 1.0): ``A = sum_k w_k A_k / sum_k |w_k|`` with one advantage
  per model, so rewards on very different scales (HPS ~0.3, ImageReward ~N(0, 1)) contribute equally. Dividing by the
  total weight is what the official MixGRPO `train_grpo_flux.py` does: it keeps the mixed advantage on the scale of one
  reward's, so the [-clip, clip] clip binds as often with three rewards as with one (the plain sum is 3x larger).
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import torch

from .base import ImageBatch, Reward
from .registry import load_reward

MixMode = Literal["reward_aggr", "advantage_aggr"]


def _group_index(group_ids: Union[torch.Tensor, Sequence[Any]], n: int, device: torch.device) -> torch.Tensor:
    if isinstance(group_ids, torch.Tensor) and not torch.is_floating_point(group_ids):
        ids = group_ids.reshape(-1)
        if ids.numel() != n:
            raise ValueError(f"group_ids has {ids.numel()} entries for {n} rewards.")
        return torch.unique(ids.to(device), return_inverse=True)[1]
    ids = list(group_ids)
    if len(ids) != n:
        raise ValueError(f"group_ids has {len(ids)} entries for {n} rewards.")
    index: dict[Any, int] = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in ids], dtype=torch.long, device=device)


def weighted_mean_advantage(
    per_reward: Mapping[str, torch.Tensor], weights: Mapping[str, float], clip: Optional[float] = None
) -> torch.Tensor:
    """``sum_k w_k A_k / sum_k |w_k|`` over the rewards named in `weights`, clamped to ``[-clip, clip]`` when given.

    The total weight is ``sum_k w_k`` for the usual non-negative weights (the official MixGRPO code divides by it);
    absolute values keep a penalty (a negative weight) from shrinking the denominator. One reward of weight 1: its own
    advantage, unchanged."""
    total = sum(abs(float(w)) for w in weights.values())
    if total == 0:
        raise ValueError(f"The reward weights {dict(weights)} sum to 0 in absolute value; give a reward a weight.")
    mixed = sum(float(w) * per_reward[name] for name, w in weights.items()) / total
    return mixed.clamp(-clip, clip) if clip is not None else mixed


def _trimmed(values: torch.Tensor, trim: float) -> torch.Tensor:
    k = int(trim * values.numel())
    if k == 0 or values.numel() - 2 * k < 1:
        return values
    return values.sort().values[k : values.numel() - k]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Union[torch.Tensor, Sequence[Any]],
    std: Literal["group", "global", "none"] = "group",
    trim: float = 0.0,
    eps: float = 1e-8,
    clip: Optional[float] = 5.0,
) -> torch.Tensor:
    """GRPO advantages ``(r - mean_group) / (std + eps)``, clipped to ``[-clip, clip]``; float32, same order as `rewards`.

    Args:
        rewards (`torch.Tensor`): (B,) rewards, any float dtype.
        group_ids (`torch.Tensor` or sequence): (B,) group label of each reward (one group per prompt); integer tensor
            or any hashable labels. Members of a group need not be contiguous.
        std (`str`, defaults to `"group"`): the denominator. `"group"`: each group's own std; `"global"`: the std of
            all B rewards (Flow-GRPO's option; robust to groups whose rewards are all equal); `"none"`: mean-centred
            only. Stds use Bessel's correction (like `torch.std`); a one-member group has std 0.
        trim (`float`, defaults to 0.0): fraction in [0, 0.5) of the lowest and of the highest rewards of each group
            (of the batch, for the global std) left out of the mean/std statistics (a trimmed mean/std, robust to
            outlier rewards). The advantage is still computed for every sample.
        eps (`float`, defaults to 1e-8): added to the std.
        clip (`float`, *optional*, defaults to 5.0): advantages are clamped to [-clip, clip]; `None` disables.

    Returns:
        `torch.Tensor`: (B,) float32 advantages on the device of `rewards`. A group whose rewards are all equal gets
        advantage 0 (with `std="group"`: 0 / eps). The statistics are computed in float64, so any finite float32
        rewards (even ~1e38, whose float32 sum or square overflows) give finite advantages.
    """
    if std not in ("group", "global", "none"):
        raise ValueError(f"std must be 'group', 'global' or 'none', got {std!r}.")
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}.")
    if clip is not None and clip <= 0:
        raise ValueError(f"clip must be positive or None, got {clip}.")
    r = torch.as_tensor(rewards).reshape(-1).to(torch.float32)
    if not torch.isfinite(r).all():
        raise ValueError("rewards contain NaN or inf; fix the reward model (or drop those samples) before GRPO.")
    out_device = r.device
    r = r.to("cpu" if r.device.type == "mps" else r.device, torch.float64)  # MPS has no float64
    index = _group_index(group_ids, r.numel(), r.device)

    def _std(v: torch.Tensor) -> torch.Tensor:
        return v.std() if v.numel() > 1 else v.new_zeros(())

    global_std = _std(_trimmed(r, trim)) if std == "global" else None
    adv = torch.empty_like(r)
    for g in torch.unique(index):
        members = index == g
        stats = _trimmed(r[members], trim)
        centred = r[members] - stats.mean()
        if std == "none":
            adv[members] = centred
        else:
            denom = _std(stats) if std == "group" else global_std
            adv[members] = centred / (denom + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.to(out_device, torch.float32)


@dataclass
class MultiRewardOutput:
    """What `MultiReward.compute` returns.

    Attributes:
        rewards (`torch.Tensor`): (B,) weighted sum of the rewards, ``sum_k w_k r_k`` (for logging in both modes).
        advantages (`torch.Tensor`): (B,) the mixed, clipped advantages the GRPO loss uses.
        per_reward (`dict[str, torch.Tensor]`): (B,) raw scores of each reward model.
        per_reward_advantages (`dict[str, torch.Tensor]`): (B,) unclipped advantages of each model
            ("advantage_aggr" only; empty for "reward_aggr").
    """

    rewards: torch.Tensor
    advantages: torch.Tensor
    per_reward: dict[str, torch.Tensor] = field(default_factory=dict)
    per_reward_advantages: dict[str, torch.Tensor] = field(default_factory=dict)


def _reward_name(reward: Callable) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


class MultiReward:
    """Several rewards with weights, mixed as in MixGRPO.

    Args:
        rewards (`Mapping[str | Reward, float]`): reward -> weight. A key is a registered name (loaded with
            `load_reward(name, device=device, dtype=dtype, **reward_kwargs.get(name, {}))`) or a reward callable
            (its `name` / `__name__` labels its scores). Example: ``{"hpsv2.1": 1.0, "pickscore": 1.0}``.
        mix (`str`, defaults to `"advantage_aggr"`): `"advantage_aggr"` (an advantage per model, then their weighted
            mean, ``sum_k w_k A_k / sum_k |w_k|``; the paper's default) or `"reward_aggr"` (the weighted sum of the rewards, then one advantage).
        device (`str` or `torch.device`, *optional*): device of the reward models and of the returned scores.
        dtype (`torch.dtype`, *optional*): compute dtype of the reward models.
        reward_kwargs (`Mapping[str, dict]`, *optional*): per-name keyword arguments for `load_reward`.
        std, trim, eps, clip: forwarded to `group_advantages` (see there). In "advantage_aggr" mode the per-model
            advantages are not clipped; the clip applies once, to the weighted sum.

    Calling it, ``multi(images, prompts)``, returns the weighted sum of the rewards (a `Reward` itself); the
    per-model scores of the last call are kept in `last_scores` for logging. `compute(images, prompts, group_ids)`
    returns rewards and advantages together; `advantages(scores, group_ids)` mixes precomputed per-model scores.
    """

    def __init__(
        self,
        rewards: Mapping[Union[str, Reward], float],
        mix: MixMode = "advantage_aggr",
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[torch.dtype] = None,
        reward_kwargs: Optional[Mapping[str, Mapping[str, Any]]] = None,
        std: Literal["group", "global", "none"] = "group",
        trim: float = 0.0,
        eps: float = 1e-8,
        clip: Optional[float] = 5.0,
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
        self.std, self.trim, self.eps, self.clip = std, trim, eps, clip
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
        for name, fn in self.rewards.items():
            s = torch.as_tensor(fn(images, prompts)).reshape(-1).to(torch.float32)
            if self.device is not None:
                s = s.to(self.device)
            scores[name] = s
        sizes = {name: s.numel() for name, s in scores.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Rewards returned different numbers of scores: {sizes}.")
        self.last_scores = scores
        return scores

    def weighted_sum(self, scores: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``sum_k w_k r_k`` over the rewards of this `MultiReward`."""
        return sum(self.weights[name] * scores[name].to(torch.float32) for name in self.rewards)

    def __call__(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        return self.weighted_sum(self.score(images, prompts))

    def advantages(
        self, scores: Mapping[str, torch.Tensor], group_ids: Union[torch.Tensor, Sequence[Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mixed advantages from per-model scores: ``(advantages, per-model advantages)`` (the latter empty for
        "reward_aggr")."""
        missing = set(self.rewards) - set(scores)
        if missing:
            raise KeyError(f"Scores missing for rewards {sorted(missing)}.")
        stats = {"std": self.std, "trim": self.trim, "eps": self.eps}
        if self.mix == "reward_aggr":
            return group_advantages(self.weighted_sum(scores), group_ids, clip=self.clip, **stats), {}
        per_model = {name: group_advantages(scores[name], group_ids, clip=None, **stats) for name in self.rewards}
        return weighted_mean_advantage(per_model, self.weights, self.clip), per_model

    def compute(
        self, images: ImageBatch, prompts: Sequence[str], group_ids: Union[torch.Tensor, Sequence[Any]]
    ) -> MultiRewardOutput:
        """Score a batch of grouped rollouts and return rewards, mixed advantages and the per-model values."""
        scores = self.score(images, prompts)
        adv, per_model = self.advantages(scores, group_ids)
        return MultiRewardOutput(self.weighted_sum(scores), adv, scores, per_model)

    def __repr__(self) -> str:
        return f"MultiReward({self.weights}, mix={self.mix!r})"
