"""Resumable training checkpoints, written atomically: a crash mid-save never leaves a checkpoint that looks usable.

A checkpoint is the folder `output_dir/checkpoint-{step}` holding what `accelerator.save_state` writes (models,
optimisers, LR schedulers, gradient scaler, dataloader samplers, the RNG states of every process, registered objects)
plus `trainer_state.pt` (the trainer's own state: global step, window schedule, data position, EMA, ...) and, written
last, the marker `checkpoint_complete.json`.

How a save stays atomic: everything is written into `output_dir/.tmp-checkpoint-{step}`, flushed to disk (fsync),
the marker is written and flushed, and only then is the folder renamed to `checkpoint-{step}` (a rename within one
folder is atomic on POSIX file systems). `latest()` only ever returns a folder that has the marker, so neither a
temporary folder nor a half-written one is picked up by `--resume_from_checkpoint latest`. Pruning to
`total_limit` runs after the new checkpoint is complete, so a crash never leaves fewer checkpoints than before; a
pruned checkpoint is first renamed to `.trash-checkpoint-*` and then deleted, so a kill during the deletion leaves a
trash folder (removed by `cleanup()`), never a half-deleted `checkpoint-*`.

The marker lists every file of the checkpoint with its size and, for files up to `HASH_LIMIT_BYTES`, its SHA-256.
`verify()` checks them, so a truncated, corrupt or missing file is named before anything is loaded, and
`candidates("latest")` lets the trainer fall back to the previous complete checkpoint. A save that runs out of disk
space raises `DiskFullError` (torch's zip writer reports it as "unexpected pos"); the files written get the usual
permissions of the process's umask (safetensors writes 0600).

Multi-process: call `save`/`load` on every process (accelerate writes one RNG file per process; FSDP/DeepSpeed shard
their states); the folder operations run on the main process between barriers. All processes must see the same
`output_dir` (a shared file system on multi-node runs).
"""

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Any, Optional, Union

import torch

from .errors import CheckpointError, CorruptCheckpointError, DiskFullError, OutputNotWritableError

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointManager",
    "CHECKPOINT_PREFIX",
    "COMPLETE_MARKER",
    "TRAINER_STATE_FILE",
    "apply_umask",
    "raise_if_disk_full",
    "raise_if_unwritable",
]

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.pt"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
_TRASH_PREFIX = ".trash-" + CHECKPOINT_PREFIX
_NAME_RE = re.compile(r"^" + re.escape(CHECKPOINT_PREFIX) + r"(\d+)$")
#: Files up to this size get a SHA-256 in the marker (larger ones, e.g. a full model's shards, only their size).
HASH_LIMIT_BYTES = 256 * 2**20
_LOW_DISK_BYTES = 64 * 2**20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Union[str, os.PathLike]) -> None:
    """Give the files under `path` (or the file `path`) the permissions a plain `open()` would (0666 minus the
    umask). Some writers (safetensors' atomic save) create 0600 files; checkpoints and weights should not differ
    from the rest of the output folder."""
    path = os.fspath(path)
    mode = 0o666 & ~_umask()
    files = [path] if os.path.isfile(path) else [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    for file in files:
        try:
            if os.stat(file).st_mode & 0o777 != mode:
                os.chmod(file, mode)
        except OSError:
            pass


def _is_disk_full(err: BaseException, folder: str) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        text = str(err)
        if "No space left on device" in text:
            return True
        if any(k in text for k in ("unexpected pos", "file write failed", "iostream error", "PytorchStreamWriter")):
            try:
                return shutil.disk_usage(folder).free < _LOW_DISK_BYTES
            except OSError:
                return False
        err = err.__cause__ or err.__context__
    return False


def raise_if_disk_full(err: BaseException, folder: str, what: str) -> None:
    """Re-raise `err` as a `DiskFullError` naming `what` and the folder when it is a full disk (ENOSPC, or torch's
    zip writer failing with the disk nearly full); otherwise return and let the caller re-raise."""
    folder = os.fspath(folder)
    if _is_disk_full(err, folder if os.path.isdir(folder) else os.path.dirname(os.path.abspath(folder)) or "."):
        try:
            free = shutil.disk_usage(folder if os.path.isdir(folder) else os.path.dirname(folder) or ".").free
            free_text = f"{free / 2**20:.0f} MiB free"
        except OSError:
            free_text = "free space unknown"
        raise DiskFullError(
            f"The disk is full: writing {what} to {folder!r} failed ({free_text}); free some space or point "
            f"output_dir at a larger disk, then resume."
        ) from err


def _is_permission_denied(err: BaseException) -> Optional[str]:
    """The reason ("Permission denied", "Read-only file system") when `err`, or an error it was raised from, is a
    write refused by the file system; `None` otherwise."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return os.strerror(err.errno)
        for text in ("Permission denied", "Read-only file system"):
            if text in str(err):
                return text
        err = err.__cause__ or err.__context__
    return None


def raise_if_unwritable(err: BaseException, folder: str, what: str, intact: Optional[str]) -> None:
    """Re-raise `err` as an `OutputNotWritableError` naming `what`, the folder and the newest intact checkpoint
    (`intact`, `None` when there is none) when the file system refused the write; otherwise return."""
    reason = _is_permission_denied(err)
    if reason is None:
        return
    if intact:
        kept = f"the newest intact checkpoint is {intact}; make the folder writable and resume with " + (
            "--resume_from_checkpoint latest"
        )
    else:
        kept = "no checkpoint was saved before; make the folder writable and run again"
    raise OutputNotWritableError(f"Cannot write {what} to {os.fspath(folder)!r} ({reason}); {kept}.") from err


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _manifest(root: str) -> dict[str, dict[str, Any]]:
    files = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            size = os.path.getsize(path)
            files[rel] = {"size": size, "sha256": _sha256(path) if size <= HASH_LIMIT_BYTES else None}
    return files


def _fsync_path(path: str) -> None:
    """Flush a file or a directory entry to disk (best effort where the platform cannot fsync directories)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync_path(os.path.join(dirpath, name))
        _fsync_path(dirpath)


class CheckpointManager:
    """Saves, lists, prunes and restores the `checkpoint-{step}` folders of a training run.

    Args:
        output_dir (`str` or `os.PathLike`): folder holding the checkpoints (the run's `output_dir`).
        total_limit (`int`, *optional*): keep at most this many complete checkpoints; the oldest go first.
            `None` keeps all.

    Example (inside the training loop):

    ```python
    manager = CheckpointManager(config.output_dir, config.checkpoints_total_limit)
    path = manager.resolve(config.resume_from_checkpoint)  # None, or the checkpoint to resume from
    if path is not None:
        state = manager.load(path, accelerator)  # restores model/optimizer/scheduler/RNG, returns extra_state
        window.load_state_dict(state["window"])
    ...
    manager.save(global_step, accelerator, {"global_step": global_step, "window": window.state_dict()})
    ```
    """

    def __init__(self, output_dir: Union[str, os.PathLike], total_limit: Optional[int] = None):
        if total_limit is not None and total_limit < 1:
            raise ValueError(f"total_limit={total_limit} is not allowed; it must be >= 1 or None (keep all).")
        self.output_dir = os.fspath(output_dir)
        self.total_limit = total_limit

    # -- queries ---------------------------------------------------------------------------------------------------

    def path_for(self, step: int) -> str:
        """The folder of the checkpoint of `step` (whether or not it exists)."""
        return os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{int(step)}")

    @staticmethod
    def is_complete(path: Union[str, os.PathLike]) -> bool:
        """Whether `path` is a finished checkpoint folder (it holds the completion marker)."""
        return os.path.isfile(os.path.join(os.fspath(path), COMPLETE_MARKER))

    @staticmethod
    def step_of(path: Union[str, os.PathLike]) -> int:
        """The training step a checkpoint was saved at (from its marker, else from its folder name)."""
        path = os.fspath(path)
        marker = os.path.join(path, COMPLETE_MARKER)
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                return int(json.load(f)["step"])
        match = _NAME_RE.match(os.path.basename(os.path.normpath(path)))
        if match is None:
            raise ValueError(f"Cannot tell the step of {path!r}: no marker and not named '{CHECKPOINT_PREFIX}<step>'.")
        return int(match.group(1))

    def checkpoints(self) -> list[str]:
        """The complete checkpoints in `output_dir`, oldest (lowest step) first."""
        if not os.path.isdir(self.output_dir):
            return []
        found = []
        for name in os.listdir(self.output_dir):
            match = _NAME_RE.match(name)
            path = os.path.join(self.output_dir, name)
            if match is not None and os.path.isdir(path) and self.is_complete(path):
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint, or `None`. Temporary and unfinished folders are never returned."""
        found = self.checkpoints()
        return found[-1] if found else None

    def _latest_or_none(self) -> Optional[str]:
        try:
            return self.latest()
        except OSError:
            return None

    def resolve(self, resume_from_checkpoint: Optional[Union[str, os.PathLike]]) -> Optional[str]:
        """The checkpoint to resume from, given the config's `resume_from_checkpoint`.

        `None` or `""`: no resume. `"latest"`: the newest complete checkpoint, or `None` when there is none yet (a
        fresh start, as in the diffusers training scripts). Anything else is a path (absolute, relative to the
        working directory, or a folder name inside `output_dir`) that must be a complete checkpoint.
        """
        if resume_from_checkpoint is None or os.fspath(resume_from_checkpoint) == "":
            return None
        value = os.fspath(resume_from_checkpoint)
        if value == "latest":
            path = self.latest()
            if path is None:
                logger.info(
                    "resume_from_checkpoint='latest' but %s holds no checkpoint; starting fresh.", self.output_dir
                )
            return path
        candidates = [value, os.path.join(self.output_dir, value)]
        path = next((p for p in candidates if os.path.isdir(p)), None)
        if path is None:
            raise CheckpointError(
                f"resume_from_checkpoint={value!r} is not a folder (nor one inside {self.output_dir!r})."
            )
        if not self.is_complete(path):
            raise CheckpointError(
                f"resume_from_checkpoint={value!r} is not a complete checkpoint (no {COMPLETE_MARKER}; the save was "
                f"probably interrupted); use 'latest' or another checkpoint."
            )
        return path

    # -- save / load -----------------------------------------------------------------------------------------------

    def save(
        self, step: int, accelerator: Any, extra_state: Optional[dict[str, Any]] = None, **save_state_kwargs: Any
    ) -> str:
        """Write `checkpoint-{step}` atomically and prune to `total_limit`; call on every process.

        Args:
            step (`int`): the training step (becomes the folder name).
            accelerator (`accelerate.Accelerator`): its `save_state` writes models, optimisers, schedulers and RNGs.
            extra_state (`dict`, *optional*): the trainer's own state, saved with `torch.save` to
                `trainer_state.pt`. Keep it to tensors and plain Python values (numbers, strings, lists, dicts), so
                that `load` can read it back with `weights_only=True`.
            save_state_kwargs: passed to `accelerator.save_state` (DeepSpeed: to the engine's `save_checkpoint`).

        Returns:
            `str`: the path of the finished checkpoint. An existing checkpoint of the same step is replaced.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step={step} is not allowed; it must be >= 0.")
        final = self.path_for(step)
        tmp = os.path.join(self.output_dir, f"{_TMP_PREFIX}{step}")
        is_main = accelerator.is_main_process
        if is_main:
            try:
                os.makedirs(self.output_dir, exist_ok=True)
                if os.path.exists(tmp):  # left over by an earlier crash
                    shutil.rmtree(tmp)
                os.makedirs(tmp)
            except OSError as err:
                raise_if_unwritable(err, self.output_dir, f"checkpoint-{step}", self._latest_or_none())
                raise
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(tmp, **save_state_kwargs)
            accelerator.wait_for_everyone()
            if is_main:
                torch.save(dict(extra_state or {}), os.path.join(tmp, TRAINER_STATE_FILE))
                apply_umask(tmp)
                _fsync_tree(tmp)
                marker = {
                    "step": step,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "num_processes": int(getattr(accelerator, "num_processes", 1)),
                    "extra_state_keys": sorted(map(str, (extra_state or {}).keys())),
                    "files": _manifest(tmp),
                }
                marker_path = os.path.join(tmp, COMPLETE_MARKER)
                with open(marker_path, "w", encoding="utf-8") as f:
                    json.dump(marker, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_path(tmp)
                self._publish(tmp, final)
        except BaseException as err:
            if is_main and os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, Exception):
                raise_if_disk_full(err, self.output_dir, f"checkpoint-{step}")
                raise_if_unwritable(err, self.output_dir, f"checkpoint-{step}", self._latest_or_none())
            raise
        if is_main:
            self.prune()
        accelerator.wait_for_everyone()
        logger.info("Saved checkpoint %s", final)
        return final

    def _publish(self, tmp: str, final: str) -> None:
        if os.path.exists(final):
            # Same step saved again (e.g. after resuming): swap, so that a crash in between keeps one copy.
            trash = self._trash_path(final)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(self.output_dir)

    def verify(self, path: Union[str, os.PathLike]) -> None:
        """Check a checkpoint against the file list of its marker; raises `CheckpointError` naming the first missing,
        truncated or corrupt file. Checkpoints written before the list existed only need the marker."""
        path = os.fspath(path)
        if not self.is_complete(path):
            raise CorruptCheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER}).")
        try:
            with open(os.path.join(path, COMPLETE_MARKER), encoding="utf-8") as f:
                files = json.load(f).get("files", {})
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(f"{os.path.join(path, COMPLETE_MARKER)} is unreadable ({err}).") from None
        for rel, info in sorted(files.items()):
            file = os.path.join(path, *rel.split("/"))
            if not os.path.isfile(file):
                raise CorruptCheckpointError(f"{file} is missing from the checkpoint.")
            size = os.path.getsize(file)
            if size != info.get("size"):
                raise CorruptCheckpointError(
                    f"{file} is truncated or corrupt ({size} bytes, {info.get('size')} written)."
                )
            if info.get("sha256") and _sha256(file) != info["sha256"]:
                raise CorruptCheckpointError(f"{file} is corrupt (its SHA-256 differs from the one written).")

    def candidates(self, resume_from_checkpoint: Optional[Union[str, os.PathLike]]) -> list[str]:
        """The checkpoints to try, in order: for `"latest"` every complete checkpoint, newest first (the trainer
        falls back to the next one when a checkpoint fails `verify` or loading); for a path, that checkpoint alone
        (`resolve` checks it); `[]` for no resume."""
        if resume_from_checkpoint is not None and os.fspath(resume_from_checkpoint) == "latest":
            return self.checkpoints()[::-1]  # none: a fresh start (the trainer says so)
        path = self.resolve(resume_from_checkpoint)
        return [] if path is None else [path]

    def read_trainer_state(self, path: Union[str, os.PathLike]) -> dict[str, Any]:
        """The `extra_state` saved with a checkpoint (`{}` when it has none), read without touching the model."""
        state_file = os.path.join(os.fspath(path), TRAINER_STATE_FILE)
        if not os.path.isfile(state_file):
            return {}
        try:
            return torch.load(state_file, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CorruptCheckpointError(f"{state_file} cannot be read ({type(err).__name__}: {err}).") from err

    def load(self, path: Union[str, os.PathLike], accelerator: Any, **load_state_kwargs: Any) -> dict[str, Any]:
        """Restore `accelerator`'s objects and RNG states from a complete checkpoint and return its `extra_state`.

        Call on every process, after `accelerator.prepare(...)` (and after registering the same objects and hooks
        as at save time). A file that cannot be read raises `CheckpointError` naming the checkpoint.
        """
        path = os.fspath(path)
        if not self.is_complete(path):
            raise CorruptCheckpointError(
                f"{path!r} is not a complete checkpoint (no {COMPLETE_MARKER}); refusing to load it."
            )
        state = self.read_trainer_state(path)
        try:
            accelerator.load_state(path, **load_state_kwargs)
        except CheckpointError:
            raise
        except Exception as err:
            raise CorruptCheckpointError(f"{path} cannot be loaded ({type(err).__name__}: {err}).") from err
        return state

    # -- housekeeping ----------------------------------------------------------------------------------------------

    def prune(self) -> list[str]:
        """Delete the oldest complete checkpoints beyond `total_limit`, and leftovers of interrupted saves.

        Returns the deleted paths. Runs on the calling process only (`save` calls it on the main process).
        """
        removed = self.cleanup()
        if self.total_limit is not None:
            complete = self.checkpoints()
            for path in complete[: max(0, len(complete) - self.total_limit)]:
                logger.info("Removing old checkpoint %s (checkpoints_total_limit=%d)", path, self.total_limit)
                self._delete(path)
                removed.append(path)
        return removed

    def _trash_path(self, path: str) -> str:
        name = os.path.basename(os.path.normpath(path))
        return os.path.join(self.output_dir, f"{_TRASH_PREFIX}{name[len(CHECKPOINT_PREFIX) :]}-{os.getpid()}")

    def _delete(self, path: str) -> None:
        # Rename first (atomic): a kill during the deletion leaves a trash folder, never a half-deleted checkpoint.
        trash = self._trash_path(path)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def cleanup(self) -> list[str]:
        """Delete what interrupted saves and prunes left behind (`.tmp-checkpoint-*`, `.trash-checkpoint-*`).

        Runs on the calling process only; the trainer calls it on the main process before resuming. Returns the
        deleted paths."""
        removed = []
        if not os.path.isdir(self.output_dir):
            return removed
        for name in os.listdir(self.output_dir):
            if name.startswith(_TMP_PREFIX) or name.startswith(_TRASH_PREFIX):
                path = os.path.join(self.output_dir, name)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
