"""GRPO advantages: group normalisation, multi-reward mixing and the non-finite reward policy (one implementation).

MixGRPO (section 6 of the algorithm notes): per prompt a group of G rollouts is scored; the advantage of rollout j is
``A_j = (r_j - mean_group) / (std + eps)``, clipped to ``[-clip, clip]`` (group / global / no std, optional trimmed
statistics: `group_advantages`). With several reward models (`compute_advantages`):

- ``"reward_aggr"``: ``r = sum_k w_k r_k``, then one advantage;
- ``"advantage_aggr"`` (the paper's default, all weights 1.0): ``A = sum_k w_k A_k / sum_k |w_k|`` with one advantage
  per model, so rewards on very different scales (HPS ~0.3, ImageReward ~N(0, 1)) contribute equally. Dividing by the
  total weight is what the official MixGRPO `train_grpo_flux.py` does: it keeps the mixed advantage on the scale of one
  reward's, so the [-clip, clip] clip binds as often with three rewards as with one (the plain sum is 3x larger).

Everything works on flat tensors with group ids: in a multi-process run the trainer gathers the rewards and group ids
of every process first (a group may be spread over processes), calls these functions, then keeps its own slice.
"""

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional, Union

import torch

__all__ = [
    "compute_advantages",
    "finite_group_mask",
    "group_advantages",
    "mix_rewards",
    "weighted_mean_advantage",
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


def _trimmed(values: torch.Tensor, trim: float) -> torch.Tensor:
    k = int(trim * values.numel())
    if k == 0 or values.numel() - 2 * k < 1:
        return values
    return values.sort().values[k : values.numel() - k]


def group_advantages(
    rewards: torch.Tensor,
    group_ids: GroupIds,
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
    r = _flat(rewards)
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
