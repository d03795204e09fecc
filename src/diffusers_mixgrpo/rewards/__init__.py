"""Reward models for GRPO: the `Reward` protocol, a registry of built-ins (`load_reward`), and `MultiReward`, a weighted
set of rewards (its advantages: `diffusers_mixgrpo.training.advantages`).

Nothing heavy is imported here: each built-in reward's module (and its model libraries) loads on `load_reward(name)`,
and the names below load on first access, so `available_rewards()` (e.g. for a script's `--help`) imports no torch.
"""

from ..utils.lazy import lazy_exports
from .registry import available_rewards, get_reward_factory, load_reward, register_reward, unregister_reward

_import_structure = {
    ".multi": ["MultiReward"],
    ".base": ["Reward"],
}

__all__ = [
    "MultiReward",
    "Reward",
    "available_rewards",
    "get_reward_factory",
    "load_reward",
    "register_reward",
    "unregister_reward",
]

__getattr__, __dir__ = lazy_exports(__name__, _import_structure)
