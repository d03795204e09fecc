"""Resumable training checkpoints, written atomically: a crash mid-save never leaves a checkpoint that looks usable.

A checkpoint is the folder `output_dir/checkpoint-{step}` holding what `accelerator.save_state` writes (models,
optimisers, LR schedulers, gradient scaler, dataloader samplers, the RNG states of every process, registered objects)
plus `trainer_state.pt` (the trainer's own state: global step, window schedule, data position, EMA, ...) and, written
last, the marker `checkpoint_complete.json`.

How a save stays atomic: everything is written into `output_dir/.tmp-checkpoint-{step}`, flushed to disk (fsync),
the marker is written and flushed, and only then is the folder renamed to `checkpoint-{step}` (a rename within one
folder is atomic on POSIX file systems). `latest()` only ever returns a folder that has the marker, so neither a
temporary folder nor a half-written one is picked up by `--resume_from_checkpoint latest`. Pruning to
`total_limit` runs after the new checkpoint is complete, so a crash never leaves fewer checkpoints than before.

Multi-process: call `save`/`load` on every process (accelerate writes one RNG file per process; FSDP/DeepSpeed shard
their states); the folder operations run on the main process between barriers. All processes must see the same
`output_dir` (a shared file system on multi-node runs).
"""

import json
import logging
import os
import re
import shutil
import time
from typing import Any, Optional, Union

import torch

logger = logging.getLogger(__name__)

__all__ = ["CheckpointManager", "CHECKPOINT_PREFIX", "COMPLETE_MARKER", "TRAINER_STATE_FILE"]

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "checkpoint_complete.json"
TRAINER_STATE_FILE = "trainer_state.pt"
_TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
_TRASH_PREFIX = ".trash-" + CHECKPOINT_PREFIX
_NAME_RE = re.compile(r"^" + re.escape(CHECKPOINT_PREFIX) + r"(\d+)$")


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
            raise ValueError(f"resume_from_checkpoint={value!r} is not a folder (nor one inside {self.output_dir!r}).")
        if not self.is_complete(path):
            raise ValueError(
                f"resume_from_checkpoint={value!r} is not a complete checkpoint (no {COMPLETE_MARKER}; the save was "
                f"probably interrupted); use 'latest' or another checkpoint."
            )
        return path

    # -- save / load -----------------------------------------------------------------------------------------------

    def save(self, step: int, accelerator: Any, extra_state: Optional[dict[str, Any]] = None) -> str:
        """Write `checkpoint-{step}` atomically and prune to `total_limit`; call on every process.

        Args:
            step (`int`): the training step (becomes the folder name).
            accelerator (`accelerate.Accelerator`): its `save_state` writes models, optimisers, schedulers and RNGs.
            extra_state (`dict`, *optional*): the trainer's own state, saved with `torch.save` to
                `trainer_state.pt`. Keep it to tensors and plain Python values (numbers, strings, lists, dicts), so
                that `load` can read it back with `weights_only=True`.

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
            os.makedirs(self.output_dir, exist_ok=True)
            if os.path.exists(tmp):  # left over by an earlier crash
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(tmp)
            accelerator.wait_for_everyone()
            if is_main:
                torch.save(dict(extra_state or {}), os.path.join(tmp, TRAINER_STATE_FILE))
                _fsync_tree(tmp)
                marker = {
                    "step": step,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "num_processes": int(getattr(accelerator, "num_processes", 1)),
                    "extra_state_keys": sorted(map(str, (extra_state or {}).keys())),
                }
                marker_path = os.path.join(tmp, COMPLETE_MARKER)
                with open(marker_path, "w", encoding="utf-8") as f:
                    json.dump(marker, f, indent=2)
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_path(tmp)
                self._publish(tmp, final)
        except BaseException:
            if is_main and os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if is_main:
            self.prune()
        accelerator.wait_for_everyone()
        logger.info("Saved checkpoint %s", final)
        return final

    def _publish(self, tmp: str, final: str) -> None:
        if os.path.exists(final):
            # Same step saved again (e.g. after resuming): swap, so that a crash in between keeps one copy.
            trash = os.path.join(self.output_dir, f"{_TRASH_PREFIX}{os.path.basename(final)}-{os.getpid()}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_path(self.output_dir)

    def load(self, path: Union[str, os.PathLike], accelerator: Any, **load_state_kwargs: Any) -> dict[str, Any]:
        """Restore `accelerator`'s objects and RNG states from a complete checkpoint and return its `extra_state`.

        Call on every process, after `accelerator.prepare(...)` (and after registering the same objects and hooks
        as at save time).
        """
        path = os.fspath(path)
        if not self.is_complete(path):
            raise ValueError(f"{path!r} is not a complete checkpoint (no {COMPLETE_MARKER}); refusing to load it.")
        accelerator.load_state(path, **load_state_kwargs)
        state_file = os.path.join(path, TRAINER_STATE_FILE)
        if not os.path.isfile(state_file):
            return {}
        return torch.load(state_file, map_location="cpu", weights_only=True)

    # -- housekeeping ----------------------------------------------------------------------------------------------

    def prune(self) -> list[str]:
        """Delete the oldest complete checkpoints beyond `total_limit`, and leftovers of interrupted saves.

        Returns the deleted paths. Runs on the calling process only (`save` calls it on the main process).
        """
        removed = []
        if not os.path.isdir(self.output_dir):
            return removed
        for name in os.listdir(self.output_dir):
            if name.startswith(_TMP_PREFIX) or name.startswith(_TRASH_PREFIX):
                path = os.path.join(self.output_dir, name)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        if self.total_limit is not None:
            complete = self.checkpoints()
            for path in complete[: max(0, len(complete) - self.total_limit)]:
                logger.info("Removing old checkpoint %s (checkpoints_total_limit=%d)", path, self.total_limit)
                shutil.rmtree(path)
                removed.append(path)
        return removed
