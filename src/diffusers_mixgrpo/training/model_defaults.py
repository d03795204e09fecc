"""A model folder's own sampling defaults: `sampling_defaults.json` next to `model_index.json`.

A small model trained on short prompts at a small size (the toy world's base model: 16 text tokens, 32 px, 10 steps)
samples garbage with a large model's defaults (FLUX pads prompts to 512 tokens). Such a folder carries the values it
was trained with::

    {"max_sequence_length": 16, "num_inference_steps": 10, "guidance_scale": 3.5, "resolution": 32, "shift": null}

Allowed keys: `max_sequence_length`, `num_inference_steps`, `guidance_scale`, `resolution` (or `height` and `width`)
and `shift` (`null`: the model's own scheduler grid). The training scripts and `examples/eval_rewards.py` read it; a
value given on the command line or in a YAML file always wins over it, and it wins over `GRPOConfig`'s defaults.
For a Hub id the file is read from the local Hugging Face cache only (never downloaded by this module).
"""

import json
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

from .errors import ConfigError

__all__ = ["SAMPLING_DEFAULTS_FILE", "fill_sampling_defaults", "read_sampling_defaults", "write_sampling_defaults"]

SAMPLING_DEFAULTS_FILE = "sampling_defaults.json"

# key -> (allowed Python types, may be null)
_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "max_sequence_length": ((int,), False),
    "num_inference_steps": ((int,), False),
    "guidance_scale": ((int, float), False),
    "resolution": ((int,), False),
    "height": ((int,), False),
    "width": ((int,), False),
    "shift": ((int, float), True),
}
_SIZE_KEYS = ("resolution", "height", "width")


def _check(values: Any, where: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must hold a JSON object of sampling defaults, got {type(values).__name__}.")
    for key, value in values.items():
        if key not in _KEYS:
            raise ConfigError(f"{where}: {key!r} is not a sampling default; allowed: {', '.join(_KEYS)}.")
        types, nullable = _KEYS[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"{where}: {key}={value!r} is not allowed; it must be a number of the right kind.")
    return dict(values)


def _locate(model: Union[str, os.PathLike], revision: Optional[str]) -> Optional[str]:
    model = os.fspath(model)
    if os.path.isdir(model):
        path = os.path.join(model, SAMPLING_DEFAULTS_FILE)
        return path if os.path.isfile(path) else None
    if model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, SAMPLING_DEFAULTS_FILE, revision=revision)
    except Exception:  # not a valid repo id, no cache: nothing to read
        return None
    return found if isinstance(found, str) and os.path.isfile(found) else None


def read_sampling_defaults(model: Optional[Union[str, os.PathLike]], revision: Optional[str] = None) -> dict[str, Any]:
    """The sampling defaults of a model folder (or of a Hub id already in the local cache); `{}` when it has none.

    A file that is not valid JSON or holds an unknown key fails with a `ConfigError` naming the file.
    """
    if model is None:
        return {}
    path = _locate(model, revision)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not a readable JSON file ({err}); fix or delete it.") from None
    return _check(values, path)


def write_sampling_defaults(folder: Union[str, os.PathLike], **values: Any) -> str:
    """Write `sampling_defaults.json` into a model folder (e.g. right after `pipe.save_pretrained(folder)`)."""
    values = _check(values, SAMPLING_DEFAULTS_FILE)
    path = os.path.join(os.fspath(folder), SAMPLING_DEFAULTS_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(values, f, indent=2)
        f.write("\n")
    return path


def fill_sampling_defaults(given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults to apply on top of the values `given` explicitly: every key not given, except that the size
    (`resolution`, `height`, `width`) is taken from the defaults only when none of the three was given."""
    size_given = any(k in given for k in _SIZE_KEYS)
    return {k: v for k, v in defaults.items() if k not in given and not (k in _SIZE_KEYS and size_given)}
