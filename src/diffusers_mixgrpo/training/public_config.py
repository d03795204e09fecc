"""What of a run's configuration may leave the machine (model card, uploaded config, tracker hyper-parameters).

The run's own `training_config.yaml` keeps every value, local paths included, because resuming needs them. What is
pushed to the Hub or sent to a tracker must not reveal the user's folders: `public_config_dict` names the base model by
its Hub id when it has one (given, loaded by id, or found in the Hugging Face cache's `models--org--name` folders;
`hub_base_model` overrides) and otherwise drops it, keeps only the file name of the prompt file, the output folder and
reward weight files, and never holds the Hub token.
"""

import os
import re
from collections.abc import Mapping
from typing import Any, Optional

__all__ = ["base_model_hub_id", "is_hub_id", "public_config_dict"]

_CACHE_FOLDER = re.compile(r"(?:^|[/\\])models--([^/\\]+?)--([^/\\]+?)(?:[/\\]|$)")
_LOCAL_ONLY_FIELDS = ("resume_from_checkpoint",)


def is_hub_id(name: Optional[str]) -> bool:
    """`org/name` that is not a local path."""
    if not name or os.path.exists(name) or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") == 1 and all(part.strip() for part in name.split("/"))


def base_model_hub_id(path_or_id: Optional[str], hub_base_model: Optional[str] = None) -> Optional[str]:
    """The Hub id of the base model: `hub_base_model` when given, `path_or_id` when it is one, the `org/name` of a
    Hugging Face cache folder (`.../models--org--name/snapshots/<sha>`), else `None`."""
    if hub_base_model:
        return hub_base_model
    if not path_or_id:
        return None
    if is_hub_id(path_or_id):
        return path_or_id
    match = _CACHE_FOLDER.search(os.fspath(path_or_id))
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _looks_local(value: str) -> bool:
    return os.path.isabs(value) or value.startswith(("~", "./", "../")) or os.path.exists(value)


def _strip_paths(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.basename(os.path.normpath(value)) if _looks_local(value) else value
    if isinstance(value, Mapping):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strip_paths(v) for v in value]
    return value


def public_config_dict(config: Any) -> dict[str, Any]:
    """The config (a `GRPOConfig` or a mapping) without secrets or local paths (see the module docstring)."""
    values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    values = {k: v for k, v in values.items() if "token" not in k.lower()}
    out = {}
    for key, value in values.items():
        if key == "pretrained_model_name_or_path":
            out[key] = base_model_hub_id(value, values.get("hub_base_model"))
        elif key in _LOCAL_ONLY_FIELDS:
            out[key] = value if value in (None, "latest") else None
        elif key == "validation_prompts":
            out[key] = value  # prompts are text, not paths
        else:
            out[key] = _strip_paths(value)
    return out
