"""Reward models for GRPO: the `Reward` protocol, a registry of built-ins (`load_reward`), and `MultiReward` mixing.

Nothing heavy is imported here: each built-in reward's module (and its model libraries) loads on `load_reward(name)`.
"""

from .base import Reward
from .multi import MultiReward, group_advantages
from .registry import available_rewards, get_reward_factory, load_reward, register_reward, unregister_reward

__all__ = [
    "MultiReward",
    "Reward",
    "available_rewards",
    "get_reward_factory",
    "group_advantages",
    "load_reward",
    "register_reward",
    "unregister_reward",
]
