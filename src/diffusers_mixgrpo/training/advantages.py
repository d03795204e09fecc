"""GRPO advantages for the trainer: group normalisation, multi-reward mixing and the non-finite reward policy.

The group-normalised advantage itself, ``A_j = (r_j - mean_group) / (std + 1e-8)`` clipped to
``[-adv_clip_max, adv_clip_max]`` (group / global / no std, optional trimmed statistics), has a single implementation:
`diffusers_mixgrpo.rewards.group_advantages`, re-exported here. This module adds what the training loop needs around
it, on flat tensors: in a multi-process run the trainer gathers the rewards and group ids of every process first (a
group may be spread over processes), calls these functions, then keeps its own slice.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, Union

import torch

from ..rewards.multi import group_advantages, weighted_mean_advantage

__all__ = [
    "compute_advantages",
    "finite_group_mask",
    "group_advantages",
    "mix_rewards",
]

GroupIds = Union[torch.Tensor, Sequence[Any]]


def _flat(values: Any) -> torch.Tensor:
    return torch.as_tensor(values).reshape(-1).to(torch.float32)


def _group_index(group_ids: GroupIds, n: int, device: torch.device) -> torch.Tensor:
    if isinstance(group_ids, torch.Tensor) and not torch.is_floating_point(group_ids):
        ids = group_ids.reshape(-1).to(device)
    else:
        labels: dict[Any, int] = {}
        ids = torch.tensor([labels.setdefault(g, len(labels)) for g in group_ids], dtype=torch.long, device=device)
    if ids.numel() != n:
        raise ValueError(f"group_ids has {ids.numel()} entries for {n} rewards.")
    return torch.unique(ids, return_inverse=True)[1]


def finite_group_mask(rewards: Union[torch.Tensor, Mapping[str, torch.Tensor]], group_ids: GroupIds) -> torch.Tensor:
    """`(B,)` bool: `True` for the samples whose whole group has finite rewards (for every reward model).

    The trainer's NaN policy: a group with any NaN/inf reward is dropped from the update (its samples are removed
    before `compute_advantages`) and counted towards `max_consecutive_bad_groups`; `(~mask)` gives the samples to drop.
    """
    scores = list(rewards.values()) if isinstance(rewards, Mapping) else [rewards]
    if not scores:
        raise ValueError("finite_group_mask needs at least one reward tensor.")
    first = _flat(scores[0])
    finite = torch.ones_like(first, dtype=torch.bool)
    for s in scores:
        s = _flat(s)
        if s.numel() != first.numel():
            raise ValueError(f"Reward tensors have different sizes: {s.numel()} and {first.numel()}.")
        finite &= torch.isfinite(s)
    index = _group_index(group_ids, first.numel(), first.device)
    bad_groups = torch.zeros(int(index.max()) + 1 if index.numel() else 0, dtype=torch.bool, device=first.device)
    bad_groups.index_fill_(0, index[~finite], True)
    return ~bad_groups[index]


def mix_rewards(rewards: Mapping[str, torch.Tensor], weights: Optional[Mapping[str, float]] = None) -> torch.Tensor:
    """``sum_k w_k r_k`` as a `(B,)` float32 tensor ("reward_aggr"; also what is logged as the total reward).

    `weights=None` gives every reward weight 1.0. Every weighted reward must be present in `rewards`.
    """
    if not rewards:
        raise ValueError("mix_rewards needs at least one reward tensor.")
    weights = {name: 1.0 for name in rewards} if weights is None else dict(weights)
    missing = set(weights) - set(rewards)
    if missing:
        raise KeyError(f"No scores for the weighted rewards {sorted(missing)}.")
    return sum(float(w) * _flat(rewards[name]) for name, w in weights.items())


def compute_advantages(
    rewards: Union[torch.Tensor, Mapping[str, torch.Tensor]],
    group_ids: GroupIds,
    weights: Optional[Mapping[str, float]] = None,
    mix: Literal["advantage_aggr", "reward_aggr"] = "advantage_aggr",
    std: Literal["group", "global", "none"] = "group",
    trim: float = 0.0,
    clip: Optional[float] = 5.0,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The advantages the GRPO loss uses, from one reward tensor or several named ones.

    Args:
        rewards (`torch.Tensor` or `Mapping[str, torch.Tensor]`): `(B,)` rewards, or reward name -> `(B,)` scores.
        group_ids (`torch.Tensor` or sequence): `(B,)` group (prompt) label of each sample.
        weights (`Mapping[str, float]`, *optional*): reward name -> weight (config `rewards`); `None`: all 1.0.
        mix (`str`, defaults to `"advantage_aggr"`): `"advantage_aggr"` (the paper): ``A = sum_k w_k A_k / sum_k
            |w_k|`` with an unclipped advantage per reward (divided by the total weight, as the official MixGRPO
            code does, so that the clip acts on the scale of one reward's advantage); `"reward_aggr"`: one advantage of ``sum_k w_k r_k``. A single tensor is
            the same in both modes.
        std, trim, eps: statistics of `group_advantages` (config `adv_std`, `adv_trim`).
        clip (`float`, *optional*, defaults to 5.0): the final advantages are clamped to ``[-clip, clip]``
            (config `adv_clip_max`); `None` disables.

    Returns:
        `(advantages, per_reward_advantages)`: `(B,)` float32 advantages, and reward name -> `(B,)` unclipped
        per-reward advantages ("advantage_aggr" with a mapping; empty otherwise), for logging.

    Rewards must be finite: drop bad groups first with `finite_group_mask`.
    """
    if mix not in ("advantage_aggr", "reward_aggr"):
        raise ValueError(f"mix={mix!r} is not allowed; choose 'advantage_aggr' or 'reward_aggr'.")
    stats = {"std": std, "trim": trim, "eps": eps}
    if not isinstance(rewards, Mapping):
        return group_advantages(_flat(rewards), group_ids, clip=clip, **stats), {}
    if mix == "reward_aggr":
        return group_advantages(mix_rewards(rewards, weights), group_ids, clip=clip, **stats), {}
    weights = {name: 1.0 for name in rewards} if weights is None else dict(weights)
    missing = set(weights) - set(rewards)
    if missing:
        raise KeyError(f"No scores for the weighted rewards {sorted(missing)}.")
    per_reward = {name: group_advantages(_flat(rewards[name]), group_ids, clip=None, **stats) for name in weights}
    return weighted_mean_advantage(per_reward, weights, clip), per_reward
