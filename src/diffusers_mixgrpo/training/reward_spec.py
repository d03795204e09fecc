"""The reward fields of `GRPOConfig` as given in Python, YAML or on the command line: `rewards` (name -> weight),
`reward_kwargs` (name -> options), `reward_device`, and which reward options are credentials (used, never saved)."""

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from .choices import REWARD_DTYPES
from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "check_reward_device",
    "check_reward_options",
    "check_reward_weights",
    "is_secret_option",
    "parse_monitor_rewards",
    "parse_reward_kwargs",
    "parse_reward_weights",
]

DEVICE_HELP = "'cpu', 'cuda', 'cuda:<index>', 'mps', 'xpu:<index>' or unset for the training device"


def _json_or_items(name: str, value: Any, separator: Optional[str]) -> Any:
    """A string value read as a JSON object (when it starts with `{`) or split into items on `separator`; a blank
    string is `None`; anything else is returned as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}={value!r} is not a valid JSON object ({e.msg}).") from None
    return [part for part in text.split(separator) if part.strip()]


def parse_reward_weights(
    value: Union[None, str, Mapping[str, Any], Sequence[str]], field: str = "rewards"
) -> Optional[dict[str, float]]:
    """Normalise a `rewards` value to `{name: weight}` (`field` names the field in the error messages).

    Accepts a mapping, a JSON object string (`'{"hpsv2.1": 1.0}'`), a compact string (`"hpsv2.1=1.0,pickscore=0.5"`;
    a name without `=weight` gets 1.0), or a list of such names.
    """
    value = _json_or_items(field, value, ",")
    if value is None:
        return None
    if not isinstance(value, (Mapping, list, tuple)):
        raise ConfigError(
            f"{field}={value!r} is not allowed; give reward names with weights, e.g. "
            "{'hpsv2.1': 1.0, 'pickscore': 1.0} or 'hpsv2.1=1.0,pickscore=1.0'."
        )
    if not isinstance(value, Mapping):
        items = {}
        for part in value:
            name, _, weight = str(part).partition("=")
            items[name.strip()] = weight.strip() if weight.strip() else 1.0
        value = items
    weights = {}
    for name, weight in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{field} has an empty or non-string reward name: {name!r}.")
        if isinstance(weight, bool):
            raise ConfigError(f"{field}[{name!r}]={weight!r} is not a number; weights must be finite floats.")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{field}[{name!r}]={weight!r} is not a number; weights must be finite floats."
            ) from None
        if not math.isfinite(w):
            raise ConfigError(f"{field}[{name!r}]={weight!r} is not finite; weights must be finite floats.")
        weights[name.strip()] = w
    return weights


def parse_monitor_rewards(
    value: Union[None, str, Mapping[str, Any], Sequence[str]], rewards: Optional[Mapping[str, float]] = None
) -> Optional[list[str]]:
    """Normalise a `monitor_rewards` value to a list of reward names (the `rewards` syntax; weights are accepted and
    ignored: a monitor never enters the advantage). A name that is also a training reward (in `rewards`) fails."""
    names = parse_reward_weights(value, field="monitor_rewards")
    if names is None:
        return None
    if not names:
        raise ConfigError("monitor_rewards names no reward; give reward names, or leave monitor_rewards unset.")
    both = sorted(set(names) & set(rewards or {}))
    if both:
        raise ConfigError(
            f"monitor_rewards names {', '.join(map(repr, both))}, which is also in rewards; a reward is either "
            "trained on (rewards) or only watched (monitor_rewards), not both."
        )
    return list(names)


def check_reward_weights(weights: Optional[Mapping[str, float]], warn: bool = True) -> None:
    """Some reward must have a positive weight: all weights 0 train nothing (the LoRA stays exactly at its start) and
    only negative weights train every score down; each is a `ConfigError` naming the weights. With `warn`, a weight
    of 0 beside others is a warning naming the reward (computed, logged, not trained on)."""
    if not weights:
        return
    shown = ", ".join(f"{name!r}: {w:g}" for name, w in weights.items())
    if all(w == 0 for w in weights.values()):
        raise ConfigError(
            f"rewards={{{shown}}} gives every reward weight 0, so nothing is trained (the LoRA stays exactly at its "
            f"start); give the reward to raise a positive weight."
        )
    if not any(w > 0 for w in weights.values()):
        what = "the only reward a negative weight" if len(weights) == 1 else "no reward a positive weight"
        raise ConfigError(
            f"rewards={{{shown}}} gives {what}, which trains the model to lower its scores; give the reward to raise "
            f"a positive weight (a negative weight is for a penalty beside it)."
        )
    if warn:
        for name, w in weights.items():
            if w == 0:
                logger.warning(
                    "rewards[%r]=0: this reward is computed and logged but not trained on; remove it to save its time.",
                    name,
                )


def parse_reward_kwargs(value: Union[None, str, Mapping[str, Any], Sequence[str]]) -> Optional[dict[str, dict]]:
    """Normalise a `reward_kwargs` value to `{reward name: {option: value}}`.

    Accepts a mapping (YAML), a JSON object string, or `name.option=value` items (the command line:
    `unifiedreward.base_url=http://host:8000/v1 hpsv2.1.checkpoint=/models/HPS_v2.1_compressed.pt`; the option is
    what follows the last dot, values are read as YAML scalars, so `30` is a number and `true` a boolean).
    """
    value = _json_or_items("reward_kwargs", value, None)
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        import yaml

        items: dict[str, dict] = {}
        for part in value:
            key, sep, raw = str(part).partition("=")
            name, dot, option = key.strip().rpartition(".")
            if not sep or not dot or not name or not option:
                raise ConfigError(
                    f"reward_kwargs item {part!r} is not allowed; write it as name.option=value, e.g. "
                    "'unifiedreward.timeout=30'."
                )
            try:
                parsed = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                parsed = raw
            items.setdefault(name, {})[option] = parsed
        value = items
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"reward_kwargs={value!r} is not allowed; give {{reward name: {{option: value}}}}, e.g. "
            "{'unifiedreward': {'base_url': 'http://127.0.0.1:8000/v1', 'timeout': 30}}."
        )
    out = {}
    for name, options in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"reward_kwargs has an empty or non-string reward name: {name!r}.")
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError(
                f"reward_kwargs[{name!r}]={options!r} is not allowed; it must map option names to values."
            )
        out[name.strip()] = dict(options)
    return out


def check_reward_options(
    rewards: Optional[Mapping[str, float]],
    reward_kwargs: Optional[Mapping[str, dict]],
    monitor_rewards: Optional[Sequence[str]] = None,
) -> None:
    """The parsed `rewards`, `monitor_rewards` and `reward_kwargs` fit together: options only for named rewards
    (training or monitor), at least one reward when the mapping is given, and no per-reward `dtype` / `device`
    (`reward_dtype` / `reward_device` set them)."""
    if reward_kwargs and rewards is not None:
        named = [*rewards, *(monitor_rewards or [])]
        extra = sorted(set(reward_kwargs) - set(named))
        if extra:
            raise ConfigError(
                f"reward_kwargs names {', '.join(map(repr, extra))}, which is not among rewards or monitor_rewards "
                f"({', '.join(map(repr, named))}); fix the name or add the reward."
            )
    if rewards is not None and not rewards:
        raise ConfigError("rewards={} names no reward; give at least one name -> weight, or leave rewards unset.")
    for name, options in (reward_kwargs or {}).items():
        for option, field_name in (("dtype", "reward_dtype"), ("device", "reward_device")):
            if option in options:
                allowed = ", ".join(map(repr, REWARD_DTYPES)) if option == "dtype" else DEVICE_HELP
                raise ConfigError(
                    f"reward_kwargs[{name!r}] sets {option}={options[option]!r}; the {option} of the reward "
                    f"models is set for all of them by {field_name} (allowed: {allowed})."
                )


def check_reward_device(value: str) -> str:
    """`value` if torch reads it as a device of a known type (`"cpu"`, `"cuda"`, `"cuda:1"`, ...), else a
    `ConfigError` naming it. Whether that device exists here is checked before the model loads
    (`preflight.check_reward_device_available`), not when a config is written."""
    import torch

    text = value.strip().lower() if isinstance(value, str) else value
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"reward_device={value!r} is not a device; allowed: {DEVICE_HELP}.") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu", "npu"):
        raise ConfigError(f"reward_device={value!r} is not allowed; allowed: {DEVICE_HELP}.")
    return str(device)


def is_secret_option(name: str) -> bool:
    """A reward option that holds a credential (`api_key`, `token`, `password`, ...): used, never saved or shown."""
    words = str(name).lower().replace("-", "_").split("_")
    joined = "_".join(words)
    return bool({"token", "secret", "password", "apikey"} & set(words)) or joined.endswith("api_key")
