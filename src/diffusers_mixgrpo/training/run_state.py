"""The state of a run beyond the model: the config it records, what its checkpoints hold besides the weights and how a
run resumes from them, and the pre-emption bookkeeping of an iteration (what a stop rewinds to, and the save on stop).

`resume.py` holds the rules of a resume (what may change, the non-finite weights check); `interrupts.py` the signal
handling and the snapshots; this module applies them to a run."""

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..pipelines.families.registry import default_lora_target_modules
from .backends import max_over_ranks
from .base_model import BASE_MODEL_KEY, base_model_record, check_base_model
from .checkpointing import CheckpointManager, raise_if_unwritable
from .config import GRPOConfig
from .distributed import local_tensor
from .errors import CheckpointError, CorruptCheckpointError
from .interrupts import GracefulInterrupt, IterationStart, Preempted, RestorePoint, signal_name
from .preflight import finished_run
from .resume import RUN_CONFIG_FILE, check_finite, config_changes, prompts_fingerprint, set_learning_rate
from .reward_runner import is_registered_reward

logger = logging.getLogger(__name__)

#: The copy of the training prompts a run writes when they were handed over as a list.
PROMPTS_FILE = "train_prompts.txt"


def record_run_inputs(
    config: GRPOConfig,
    pipeline: Any,
    reward_weights: dict,
    eval_prompts: Optional[Sequence[str]],
    prompts_given: bool,
) -> GRPOConfig:
    """The config completed with what was handed over as objects (pipeline, rewards, prompts, prompt length), so that
    the `training_config.yaml` a run writes reproduces it and a resume can compare against it."""
    cfg, updates = config, {}
    name = cfg.pretrained_model_name_or_path or getattr(pipeline, "name_or_path", None)
    if name and os.path.isdir(name) and name != os.path.abspath(name):
        name = os.path.abspath(name)  # a resume may start from another working directory
    if name and name != cfg.pretrained_model_name_or_path:
        updates["pretrained_model_name_or_path"] = name
    if cfg.prompt_file and cfg.prompt_file != os.path.abspath(cfg.prompt_file):
        updates["prompt_file"] = os.path.abspath(cfg.prompt_file)
    if cfg.model_family is None:
        updates["model_family"] = pipeline.model_family
    if cfg.max_sequence_length is None and getattr(pipeline, "max_sequence_length", None):
        updates["max_sequence_length"] = int(pipeline.max_sequence_length)
    if cfg.rewards is None:
        updates["rewards"] = dict(reward_weights)
        unregistered = [n for n in reward_weights if not is_registered_reward(n)]
        if unregistered:
            logger.info(
                "The saved training_config.yaml names the reward function(s) %s, which are not registered: "
                "register them (rewards.register_reward) to rerun the config from the command line.",
                ", ".join(map(repr, unregistered)),
            )
    if eval_prompts is not None and list(eval_prompts) != cfg.validation_prompts:
        updates["validation_prompts"] = list(eval_prompts)
        updates["validation_prompt_file"] = None
    elif cfg.validation_prompt_file and cfg.validation_prompt_file != os.path.abspath(cfg.validation_prompt_file):
        updates["validation_prompt_file"] = os.path.abspath(cfg.validation_prompt_file)
    if prompts_given and cfg.prompt_file is None:
        updates["prompt_file"] = os.path.abspath(os.path.join(cfg.output_dir, PROMPTS_FILE))
    if cfg.use_lora and cfg.lora_target_modules is None:
        updates["lora_target_modules"] = default_lora_target_modules(pipeline.model_family)
    return dataclasses.replace(cfg, **updates) if updates else cfg


def write_run_config(config: GRPOConfig, train_prompts: list[str], prompts_given: bool) -> None:
    """`training_config.yaml` (and the prompts, when they were handed over as a list) at the start of a run, so that an
    interrupted run can be resumed from its output folder alone. Main process only."""
    try:
        os.makedirs(config.output_dir, exist_ok=True)
        if prompts_given and config.prompt_file == os.path.abspath(os.path.join(config.output_dir, PROMPTS_FILE)):
            with open(config.prompt_file, "w", encoding="utf-8") as f:
                f.write("\n".join(train_prompts) + "\n")
        config.to_yaml(os.path.join(config.output_dir, RUN_CONFIG_FILE))
    except OSError as err:
        raise_if_unwritable(err, config.output_dir, RUN_CONFIG_FILE, CheckpointManager(config.output_dir).latest())
        raise


def resume_latest_usable(
    checkpoints: CheckpointManager, resume_from_checkpoint: Any, output_dir: str, resume_from: Callable[[str], None]
) -> bool:
    """Call `resume_from` on the checkpoint `resume_from_checkpoint` names; returns whether one was loaded.

    `"latest"` tries the complete checkpoints newest first: one whose files are missing, truncated or corrupt is
    named in a warning and the previous one is used."""
    candidates = checkpoints.candidates(resume_from_checkpoint)
    if not candidates:
        names = ("pytorch_lora_weights.safetensors", "model_index.json")  # LoRA, full fine-tune
        final = next((p for p in (os.path.join(output_dir, n) for n in names) if os.path.isfile(p)), None)
        logger.warning(
            "resume_from_checkpoint=%r but %s holds no checkpoint; starting fresh%s.",
            os.fspath(resume_from_checkpoint),
            output_dir,
            f" (the weights of the finished run, {final}, will be replaced)" if final else "",
        )
    failures = []
    for path in candidates:
        try:
            resume_from(path)
            return True
        except CorruptCheckpointError as err:
            if resume_from_checkpoint != "latest":
                raise
            failures.append(str(err))
            logger.warning("%s Falling back to the previous checkpoint.", err)
    if failures:
        raise CheckpointError(
            f"No usable checkpoint in {output_dir!r}: {failures[-1]} (and every earlier checkpoint failed too); "
            f"start a new run in another output_dir."
        )
    return False


def load_checkpoint(
    checkpoints: CheckpointManager,
    path: str,
    accelerator: Any,
    config: GRPOConfig,
    train_prompts: list[str],
    denoiser: Any,
    load_kwargs: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """Load the checkpoint `path` into the accelerator's objects; returns its trainer state and the settings that
    changed since it was written. Refuses other training prompts, settings that may not change and non-finite
    trained weights (`CheckpointError`)."""
    checkpoints.verify(path)
    saved = checkpoints.read_trainer_state(path)
    moved = ("pretrained_model_name_or_path",) if check_base_model(saved, config, path) else ()
    changes = config_changes(saved["config"], config.to_dict(), path, may_change=moved) if "config" in saved else {}
    fingerprint = prompts_fingerprint(train_prompts)
    if saved.get("prompts_sha256", fingerprint) != fingerprint:
        raise CheckpointError(
            f"Cannot resume {path}: the {len(train_prompts)} training prompts (prompt_file={config.prompt_file!r}) "
            f"are not those it was trained with; resume with the same prompts, or start a new run in another "
            f"output_dir."
        )
    state = checkpoints.load(path, accelerator, **load_kwargs)
    check_finite(((n, local_tensor(p)) for n, p in denoiser.named_parameters() if p.requires_grad), path)
    return state, changes


def note_config_changes(config_changes: list[dict[str, Any]], changes: dict[str, tuple[Any, Any]], step: int) -> None:
    """Record the settings a resume changed (`{name: (old, new)}`, applied from `step` on) in `config_changes` (the
    run summary lists them) and say so in a warning; where the run resumes from is no change."""
    changes.pop("resume_from_checkpoint", None)
    if not changes:
        return
    config_changes.append({"step": step, "changes": changes})
    logger.warning(
        "Resumed with changed settings, applied from step %d on: %s.",
        step,
        ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
    )


def trainer_state(
    global_step: int,
    window: Any,
    bad_group_streak: int,
    history: dict[str, list[tuple[int, float]]],
    config: GRPOConfig,
    config_changes: list[dict[str, Any]],
    train_prompts: list[str],
    ema: Any = None,
    base_model: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """What a checkpoint holds besides what `accelerator.save_state` writes (`GRPOTrainer.save_checkpoint`).
    `base_model`: the run's `base_model_record`, hashed once per run by the caller (default: hashed here)."""
    state = {
        "global_step": global_step,
        "window": window.state_dict(),
        "bad_group_streak": bad_group_streak,
        "history": {k: [list(p) for p in v] for k, v in history.items()},
        "config": config.to_dict(),
        "config_changes": list(config_changes),
        "prompts_sha256": prompts_fingerprint(train_prompts),
        BASE_MODEL_KEY: base_model if base_model is not None else base_model_record(config),
    }
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def apply_trainer_state(
    state: dict[str, Any],
    changes: dict[str, tuple[Any, Any]],
    path: str,
    config: GRPOConfig,
    window: Any,
    health: Any,
    ema: Any,
    optimizer: Any,
    lr_scheduler: Any,
) -> tuple[int, dict[str, list[tuple[int, float]]], list[dict[str, Any]]]:
    """Continue from the trainer state of the checkpoint `path` (`load_checkpoint`): the window, the bad-group streak,
    the EMA and a changed learning rate are restored in place; returns its step, reward history and config changes
    (with this resume's `changes` noted, `note_config_changes`)."""
    global_step = int(state["global_step"])
    window.load_state_dict(state["window"])
    health.bad_group_streak = int(state.get("bad_group_streak", 0))
    history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
    if ema is not None and "ema" in state:
        ema.load_state_dict(state["ema"])
    recorded = list(state.get("config_changes", []))
    if "learning_rate" in changes:
        set_learning_rate(optimizer, lr_scheduler, config.learning_rate)
    logger.info("Resuming from %s at step %d of %d.", path, global_step, config.max_train_steps)
    note_config_changes(recorded, changes, global_step)
    return global_step, history, recorded


def resume_or_start_fresh(
    checkpoints: CheckpointManager, accelerator: Any, config: GRPOConfig, resume: Callable[[Any], bool]
) -> None:
    """The start of `train()`: the leftovers of an interrupted save or prune removed, then `resume(...)` when
    `resume_from_checkpoint` is set, else a warning when the output folder already holds checkpoints (this fresh run
    replaces those of the same steps)."""
    if accelerator.is_main_process:
        checkpoints.cleanup()
    accelerator.wait_for_everyone()
    if config.resume_from_checkpoint:
        resume(config.resume_from_checkpoint)
    elif checkpoints.latest() is not None:
        logger.warning(
            "%s already holds checkpoints (newest: %s); this run starts fresh (resume_from_checkpoint is unset) "
            "and replaces those of the same steps.",
            config.output_dir,
            os.path.basename(checkpoints.latest()),
        )
    elif accelerator.is_main_process and not config.overwrite_output_dir and (held := finished_run(config.output_dir)):
        logger.warning(
            "%s already holds a finished run (%s); this run replaces it (the command line refuses this without "
            "--overwrite_output_dir).",
            config.output_dir,
            held,
        )


class Preemption:
    """The pre-emption bookkeeping of a running `train()` (`interrupts.py`): the signal handler, what the current
    iteration would rewind to, its optimiser steps so far, and the checkpoints this run wrote (step -> path; a stop at
    that state reuses them)."""

    def __init__(self):
        self.interrupt: Optional[GracefulInterrupt] = None
        self.iteration_start: Optional[IterationStart] = None
        self.restore_point: Optional[RestorePoint] = None
        self.optimizer_steps = 0
        self.saved: dict[int, str] = {}

    def start_iteration(self, owner: Any, counters: Sequence[str]) -> None:
        """A stop before this iteration ends rewinds to here: the RNGs and `owner`'s `counters` change on the way."""
        self.iteration_start = IterationStart(owner, counters=counters)
        self.optimizer_steps = 0

    def snapshot(self, *args: Any) -> None:
        """A `RestorePoint(*args)`, so that a stop after the update's first optimiser step can still rewind."""
        self.restore_point = RestorePoint(*args)

    def end_iteration(self) -> None:
        self.iteration_start = self.restore_point = None  # the iteration is complete: nothing to rewind

    def agreed_stop(self, accelerator: Any) -> Optional[int]:
        """The signal that asks this run to stop, agreed by every process (a signal may reach only some ranks): the
        largest signal number any rank received, 0 for none, as `None`. Collective when there are several ranks."""
        signum = (self.interrupt.requested or 0) if self.interrupt is not None else 0
        return max_over_ranks(accelerator, signum) or None

    def check(self, accelerator: Any, where: str) -> None:
        """A boundary of the run: raise `Preempted` on every rank when any rank received SIGTERM / SIGINT. Only inside
        `train()` (on every rank alike), so the ranks call it, and all-reduce, the same number of times."""
        if self.interrupt is None:
            return
        signum = self.agreed_stop(accelerator)
        if signum is not None:
            raise Preempted(signum, where)

    def rewind(self, optimizer: Any) -> bool:
        """Undo an unfinished iteration (its optimiser steps, RNG draws and counters); returns whether there was one."""
        optimizer.zero_grad(set_to_none=True)
        unfinished = self.iteration_start is not None
        if self.restore_point is not None:
            self.restore_point.restore()
        if self.iteration_start is not None:
            self.iteration_start.restore()
        self.end_iteration()
        return unfinished

    def save_on_stop(
        self,
        stop: Preempted,
        optimizer: Any,
        checkpoints: CheckpointManager,
        save_checkpoint: Callable[[], str],
        global_step: int,
        max_train_steps: int,
        is_main_process: bool,
    ) -> str:
        """Rewind to the start of the interrupted iteration and save its state (a checkpoint this run already wrote of
        that state is reused), with one log line: the signal, the iteration, where it stopped, what was saved."""
        undone = self.optimizer_steps if self.restore_point is not None else 0
        rewound = self.rewind(optimizer)  # the step counter only moves when an iteration completes
        step = global_step
        t0 = time.perf_counter()
        reused = checkpoints.is_complete(self.saved.get(step, "-"))
        path = self.saved[step] if reused else save_checkpoint()
        timing = ["already saved" if reused else f"saved in {time.perf_counter() - t0:.1f} s"]
        if self.interrupt is not None and self.interrupt.received_at is not None:
            timing.append(f"{time.monotonic() - self.interrupt.received_at:.1f} s after the signal")
        if rewound:
            what = f"stopped step {step + 1} of {max_train_steps} during {stop.where}" + (
                f" and undid its {undone} optimiser step(s)" if undone else ""
            )
        else:
            what = f"stopped after step {step} of {max_train_steps} ({stop.where})"
        if is_main_process:
            logger.warning(
                "%s: %s; the state after step %d is at %s (%s).",
                signal_name(stop.signum),
                what,
                step,
                path,
                ", ".join(timing),
            )
        return path
