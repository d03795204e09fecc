"""The reward registry: names -> lazy factories, so that `load_reward("hpsv2.1")` works without importing every model.

A factory has the signature ``factory(device=None, dtype=None, **kwargs) -> Reward``. It is registered either as a
callable or as a ``"package.module:attribute"`` string that is imported only when the reward is loaded, so importing
this module (and `available_rewards()`) never pulls in transformers, open_clip or a model checkpoint.

Register your own reward (any callable ``(images, prompts) -> 1-D float tensor``)::

    from diffusers_mixgrpo.rewards.registry import register_reward


    @register_reward("my_reward")
    def make_my_reward(device=None, dtype=None, scale: float = 1.0):
        def reward(images, prompts):
            ...

        return reward


    register_reward("other", "my_package.rewards:make_other")  # lazy: imported at load_reward("other")

Packages of this project that ship a reward (the toy world) are imported on the first lookup of a name that is not yet
registered, so their module-level ``register_reward`` calls run without the user importing them first.
"""

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:  # importing the registry (e.g. for `--help`) must not import torch
    import torch

    from .base import Reward

RewardFactory = Callable[..., "Reward"]
FactoryLike = Union[RewardFactory, str]

# Built-in rewards: name -> "module:attribute" of the factory, resolved on first use.
_BUILTINS: dict[str, str] = {
    "pickscore": "diffusers_mixgrpo.rewards.pickscore:PickScoreReward",
    "hpsv2.1": "diffusers_mixgrpo.rewards.hps:HPSv21Reward",
    "imagereward": "diffusers_mixgrpo.rewards.imagereward:ImageRewardReward",
    "clipscore": "diffusers_mixgrpo.rewards.clipscore:CLIPScoreReward",
    "aesthetic": "diffusers_mixgrpo.rewards.aesthetic:AestheticReward",
    "unifiedreward": "diffusers_mixgrpo.rewards.unifiedreward:UnifiedReward",
    "vlm_judge": "diffusers_mixgrpo.rewards.vlm_judge:VLMJudgeReward",
    "ocr": "diffusers_mixgrpo.rewards.ocr:OCRReward",
    "remote": "diffusers_mixgrpo.rewards.remote:RemoteReward",
    "jpeg_compressibility": "diffusers_mixgrpo.rewards.jpeg:JpegCompressibility",
    "jpeg_incompressibility": "diffusers_mixgrpo.rewards.jpeg:JpegIncompressibility",
    # video rewards: frames (B, F, 3, H, W)
    "temporal_consistency": "diffusers_mixgrpo.rewards.video:TemporalConsistencyReward",
    "frame_mean": "diffusers_mixgrpo.rewards.video:FrameMeanReward",
}

# Modules of this package that register rewards of their own when imported (imported lazily, once, on a lookup miss).
_PLUGIN_MODULES: tuple[str, ...] = ("diffusers_mixgrpo.toy_world",)

_REGISTRY: dict[str, FactoryLike] = dict(_BUILTINS)
_plugins_loaded = False


def _normalize(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A reward name must be a non-empty string, got {name!r}.")
    return name.strip().lower()


def register_reward(
    name: str, factory: Optional[FactoryLike] = None, *, overwrite: bool = False
) -> Union[FactoryLike, Callable[[FactoryLike], FactoryLike]]:
    """Register a reward factory under `name` (case-insensitive); usable as a function or as a decorator.

    Args:
        name (`str`): the name given to `load_reward` and used in configs (`rewards: {name: weight}`).
        factory (`Callable` or `str`, *optional*): ``factory(device=None, dtype=None, **kwargs) -> Reward``, or a
            ``"module:attribute"`` string naming it (imported at load time). Omit it to use `register_reward(name)`
            as a decorator.
        overwrite (`bool`, defaults to `False`): replace an existing registration instead of raising.

    Returns:
        The factory (so the decorator form leaves the decorated function unchanged).
    """
    key = _normalize(name)

    def _register(f: FactoryLike) -> FactoryLike:
        if isinstance(f, str):
            if ":" not in f:
                raise ValueError(f"A lazy reward factory must be written 'module:attribute', got {f!r}.")
        elif not callable(f):
            raise TypeError(f"The factory of reward {name!r} must be callable or a 'module:attribute' string.")
        if key in _REGISTRY and not overwrite and _REGISTRY[key] is not f:
            raise ValueError(f"A reward named {key!r} is already registered; pass overwrite=True to replace it.")
        _REGISTRY[key] = f
        return f

    if factory is None:
        return _register
    return _register(factory)


def unregister_reward(name: str) -> None:
    """Remove a registration (built-ins included); a missing name is ignored."""
    _REGISTRY.pop(_normalize(name), None)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _PLUGIN_MODULES:
        try:
            import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the plugin exists but one of its own imports is missing: say so
                raise


def available_rewards() -> list[str]:
    """The registered reward names, sorted (built-ins plus anything registered by the user or a plugin).

    Imports nothing heavy: the built-ins and the plugins' registrations are lazy strings."""
    _load_plugins()
    return sorted(_REGISTRY)


def _resolve(factory: FactoryLike) -> RewardFactory:
    if callable(factory):
        return factory
    module, _, attr = factory.partition(":")
    obj: Any = import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def get_reward_factory(name: str) -> RewardFactory:
    """The factory registered under `name` (importing it if it was registered lazily)."""
    key = _normalize(name)
    if key not in _REGISTRY:
        _load_plugins()
    if key not in _REGISTRY:
        raise KeyError(f"Unknown reward {name!r}. Available: {', '.join(sorted(_REGISTRY))}.")
    return _resolve(_REGISTRY[key])


def load_reward(
    name_or_reward: Union[str, "Reward"],
    device: Optional[Union[str, "torch.device"]] = None,
    dtype: Optional["torch.dtype"] = None,
    **kwargs: Any,
) -> "Reward":
    """Build a reward by name, or pass a callable through unchanged.

    Args:
        name_or_reward (`str` or `Reward`): a registered name (see `available_rewards()`), or any callable
            ``(images, prompts) -> tensor`` (returned as is; `device`, `dtype` and `kwargs` must then be empty).
        device (`str` or `torch.device`, *optional*): where the reward model runs and where scores are returned.
        dtype (`torch.dtype`, *optional*): the model's compute dtype (scores are always float32).
        **kwargs: forwarded to the factory (e.g. `checkpoint=`, `batch_size=`, `base_url=`).
    """
    if not isinstance(name_or_reward, str):
        if not callable(name_or_reward):
            raise TypeError(f"A reward must be a registered name or a callable, got {type(name_or_reward).__name__}.")
        if kwargs:
            raise TypeError(f"Options {sorted(kwargs)} were given with a reward object; build it with them instead.")
        return name_or_reward
    return get_reward_factory(name_or_reward)(device=device, dtype=dtype, **kwargs)
