"""The identity of a run's base model, recorded in its checkpoints, so that a resume tells a moved model folder (the same
model: allowed) from another model at the same path (refused), before the model loads.

A local diffusers folder's fingerprint is a SHA-256 over `model_index.json` and the files of each component it lists
(relative path, size, and the bytes: whole files up to 2 MiB, else the first and last MiB, which hold a safetensors
file's header and its last tensors). It reads at most 2 MiB per file, whatever the model's size, and ignores where the
folder is, its modification times and files beside the components (`sampling_defaults.json`, notes). A Hub id's
fingerprint is the id and revision (nothing is downloaded).
"""

import hashlib
import json
import os
from functools import lru_cache
from typing import Any, Optional

from .errors import CheckpointError

__all__ = ["BASE_MODEL_KEY", "base_model_fingerprint", "base_model_record", "check_base_model"]

#: The key of the base model's record (`{"path", "revision", "fingerprint"}`) in a checkpoint's trainer state.
BASE_MODEL_KEY = "base_model"
_EDGE = 2**20


def _hash_file(h: "hashlib._Hash", path: str) -> None:
    size = os.path.getsize(path)
    h.update(f"{size}\0".encode())
    with open(path, "rb") as f:
        if size <= 2 * _EDGE:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))


def _model_files(folder: str) -> Optional[tuple[tuple[str, int, int], ...]]:
    """`(relative path, size, mtime_ns)` of `model_index.json` and every file of the components it lists."""
    index = os.path.join(folder, "model_index.json")
    try:
        with open(index, encoding="utf-8") as f:
            components = sorted(k for k in json.load(f) if not k.startswith("_"))
        paths = [index]
        for name in components:
            for dirpath, dirnames, filenames in os.walk(os.path.join(folder, name)):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                paths += [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
        stats = [os.stat(p) for p in paths]
    except (OSError, ValueError, AttributeError):
        return None
    return tuple((os.path.relpath(p, folder), s.st_size, s.st_mtime_ns) for p, s in zip(paths, stats))


@lru_cache(maxsize=8)
def _hash_files(folder: str, files: tuple[tuple[str, int, int], ...]) -> Optional[str]:
    """The fingerprint of `files` (cached on their sizes and times: a checkpoint every step reads nothing again)."""
    h = hashlib.sha256()
    try:
        for rel, _, _ in files:
            h.update(rel.replace(os.sep, "/").encode() + b"\0")
            _hash_file(h, os.path.join(folder, rel))
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def _local_fingerprint(folder: str) -> Optional[str]:
    files = _model_files(folder)
    return None if files is None else _hash_files(folder, files)


def base_model_fingerprint(path_or_id: Optional[str], revision: Optional[str] = None) -> Optional[str]:
    """The fingerprint of a local diffusers folder (see the module docstring) or `"hub:<id>@<revision>"` for a Hub
    id; `None` when there is no model, or a local folder that cannot be read."""
    if not path_or_id:
        return None
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return _local_fingerprint(os.path.realpath(path))
    if os.path.exists(path) or path.startswith((".", "/", "~")):
        return None
    return f"hub:{path}@{revision or 'main'}"


def base_model_record(config: Any) -> dict[str, Any]:
    """What a checkpoint records of its base model: `{"path", "revision", "fingerprint"}`."""
    path = config.pretrained_model_name_or_path
    return {
        "path": path,
        "revision": config.revision,
        "fingerprint": base_model_fingerprint(path, config.revision),
    }


def check_base_model(saved_state: dict[str, Any], config: Any, checkpoint: str) -> bool:
    """Whether the model `config` names is the one the checkpoint was trained on, by fingerprint: `True` when it is
    (wherever it now is), `False` when the checkpoint recorded none (older checkpoints: the caller compares the
    paths). Another model, or a folder that no longer exists, raises `CheckpointError` in one sentence naming the
    model and the checkpoint."""
    recorded = saved_state.get(BASE_MODEL_KEY) or {}
    if not recorded.get("fingerprint"):
        return False
    path = config.pretrained_model_name_or_path
    current = base_model_fingerprint(path, getattr(config, "revision", None))
    if current == recorded["fingerprint"]:
        return True
    if current is None and path and not os.path.exists(path) and path == recorded.get("path"):
        raise CheckpointError(
            f"Cannot resume {checkpoint}: its base model folder {path!r} no longer exists; pass the folder's new "
            f"location with --pretrained_model_name_or_path (the model is recognised by its files, not its path)."
        )
    if current is None:
        raise CheckpointError(
            f"Cannot resume {checkpoint}: the base model {path!r} cannot be read (trained on {recorded.get('path')!r}); "
            f"pass the folder of the model it was trained on with --pretrained_model_name_or_path."
        )
    raise CheckpointError(
        f"Cannot resume {checkpoint}: the base model {path!r} is not the model it was trained on "
        f"({recorded.get('path')!r}; other files or revision); pass that model with --pretrained_model_name_or_path, "
        f"or start a new run in another output_dir."
    )
