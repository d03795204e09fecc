"""Reward models for GRPO: the `Reward` protocol, a registry of built-ins (`load_reward`), and `MultiReward`, a weighted
set of rewards (its advantages: `diffusers_mixgrpo.training.advantages`).

Nothing heavy is imported here: each built-in reward's module (and its model libraries) loads on `load_reward(name)`,
and the names below load on first access, so `available_rewards()` (e.g. for a script's `--help`) imports no torch.
"""

from importlib import import_module
from typing import Any

from .registry import available_rewards, get_reward_factory, load_reward, register_reward, unregister_reward

_LAZY = {
    "MultiReward": "multi",
    "Reward": "base",
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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
