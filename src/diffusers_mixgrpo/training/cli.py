"""The training command (`mixgrpo-train`, `examples/train_mixgrpo.py`): parse, fill in defaults, check, load the model,
train, summarise.

`main()` is the command (the `mixgrpo-train` console script; `examples/train_mixgrpo.py` calls it): it prints the
errors a user can fix (`MixGRPOError`: a bad value, an unreadable prompt file, a missing model, a full disk, ...) as
one line without a traceback and exits with status 1; SIGTERM/SIGINT end the run with a checkpoint, one line, and
status 128 + the signal number. `train_from_command_line()` does the same work but raises, for use from Python.

Where each value comes from, lowest to highest priority: `GRPOConfig`'s defaults; the model folder's
`sampling_defaults.json` (`model_defaults`); when resuming, the run's saved `training_config.yaml` (so resuming needs
nothing but `--output_dir` and `--resume_from_checkpoint`); the `--config` YAML file; the flags.

Nothing heavy is imported before the arguments are parsed: `--help` answers in a fraction of a second.
"""

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

logger = logging.getLogger(__name__)

__all__ = ["main", "train_from_command_line", "resolve_run_values"]

DEFAULT_DESCRIPTION = (
    "Align a diffusers text-to-image model (FLUX.1, SD3, SD1.5, SDXL, SANA, Qwen-Image, FLUX.2 [dev] / [klein], "
    "Z-Image; or Wan text-to-video; the family is detected from the model folder, and a config's model_family "
    "refuses another) with MixGRPO: sample groups of images per prompt, score them with the rewards, and train a "
    "LoRA (or full fine-tune) on the sliding window of SDE steps. The LoRA loads into the stock pipeline with "
    "load_lora_weights. Every GRPOConfig field is a flag; --config takes a YAML file (flags win). See "
    "docs/training.md."
)

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "no": None}


def _epilog() -> str:
    from ..rewards.registry import available_rewards

    return (
        "rewards (--rewards name=weight,...): "
        + ", ".join(available_rewards())
        + ".\nreward options (--reward_kwargs name.option=value ...): e.g. hpsv2.1.checkpoint=/models/"
        "HPS_v2.1_compressed.pt, unifiedreward.base_url=http://host:8000/v1 unifiedreward.timeout=30 "
        "unifiedreward.max_retries=2; see docs/rewards.md.\n"
        "resume a run: --output_dir DIR --resume_from_checkpoint latest (the run's training_config.yaml supplies "
        "the rest)."
    )


def resolve_run_values(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Complete the values given on the command line: the saved config of the run being resumed, then the model
    folder's sampling defaults. Returns `(values, sampling defaults applied)`."""
    from .model_defaults import fill_sampling_defaults, read_sampling_defaults
    from .resume import load_saved_run_config

    values = dict(given)
    resume = values.get("resume_from_checkpoint")
    if resume:
        from .errors import ConfigError

        output_dir = values.get("output_dir")
        if resume != "latest":
            check_resume_path(os.fspath(resume), output_dir)
        if output_dir is None and resume != "latest" and os.path.isdir(resume):
            output_dir = os.path.dirname(os.path.abspath(resume))  # a checkpoint folder names its run
            values["output_dir"] = output_dir
        if output_dir is None:
            raise ConfigError(
                f"resume_from_checkpoint={resume!r} needs --output_dir, the folder of the run to resume."
            )
        saved = load_saved_run_config(output_dir)
        if saved is not None:
            for name in ("resume_from_checkpoint", "overwrite_output_dir"):  # never inherited from the last run
                saved.pop(name, None)
            logger.info("Resuming the run in %s with its saved training_config.yaml.", output_dir)
            values = {**saved, **values}
        elif not values.get("pretrained_model_name_or_path") and not _has_checkpoint(output_dir):
            # a mistyped folder: say so, not "No reward" about the settings it would have supplied
            state = "does not exist" if not os.path.exists(output_dir) else "holds no run"
            raise ConfigError(
                f"resume_from_checkpoint={resume!r}: output_dir={output_dir!r} {state} (no training_config.yaml, no "
                f"checkpoint); check the folder's name, or give the run's settings to start a new run there."
            )
        else:
            logger.warning(
                "%s holds no training_config.yaml: resuming with the values given on the command line only.",
                output_dir,
            )
    defaults = read_sampling_defaults(values.get("pretrained_model_name_or_path"), values.get("revision"))
    applied = fill_sampling_defaults(values, defaults)
    values.update(applied)
    return values, applied


def _has_checkpoint(folder: str) -> bool:
    from .checkpointing import CheckpointManager

    return os.path.isdir(folder) and CheckpointManager(folder).latest() is not None


def _is_run_folder(folder: str) -> bool:
    from .resume import RUN_CONFIG_FILE

    return os.path.isfile(os.path.join(folder, RUN_CONFIG_FILE)) or _has_checkpoint(folder)


def check_resume_path(resume: str, output_dir: Optional[str]) -> None:
    """A `resume_from_checkpoint` path (not `"latest"`) names a checkpoint folder, given as a path or as a name inside
    `output_dir`; a missing folder, or a run folder given instead of one of its checkpoints, fails in one sentence."""
    from .checkpointing import COMPLETE_MARKER
    from .errors import ConfigError

    inside = os.path.join(output_dir, resume) if output_dir else None
    path = next((p for p in (resume, inside) if p and os.path.isdir(p)), None)
    if path is None:
        where = f" (nor a folder inside output_dir={output_dir!r})" if output_dir else ""
        raise ConfigError(
            f"resume_from_checkpoint={resume!r} does not exist{where}; pass a checkpoint folder such as "
            f"OUT/checkpoint-50, or --output_dir OUT --resume_from_checkpoint latest."
        )
    if os.path.isfile(os.path.join(path, COMPLETE_MARKER)):
        return
    if _is_run_folder(path):
        raise ConfigError(
            f"resume_from_checkpoint={resume!r} is a run folder, not a checkpoint; resume it with --output_dir "
            f"{path} --resume_from_checkpoint latest."
        )
    if not any(n.startswith("model") or n.endswith((".safetensors", ".bin", ".pt")) for n in os.listdir(path)):
        raise ConfigError(
            f"resume_from_checkpoint={resume!r} is neither a checkpoint (no {COMPLETE_MARKER}) nor a run folder; "
            f"pass a checkpoint folder such as OUT/checkpoint-50, or --output_dir OUT --resume_from_checkpoint latest."
        )
    # a checkpoint without its marker: the checkpoint manager names it (an interrupted save)


def train_from_command_line(
    argv: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
    prog: Optional[str] = None,
):
    """Parse `argv` (default `sys.argv[1:]`), check everything that can be checked, load the model and train.

    The config's `model_family` (the shipped configs set it) refuses a model of another family. Frozen
    components are loaded in the mixed-precision dtype; trainable weights are kept in float32. Returns the
    `TrainOutput`; raises the library's errors.
    """
    from .arguments import parse_command_line
    from .config import GRPOConfig
    from .preflight import check_model_family, check_model_source, check_run_inputs, family_mismatch

    argv = list(sys.argv[1:] if argv is None else argv)
    given = parse_command_line(
        argv, (GRPOConfig,), description=description or DEFAULT_DESCRIPTION, epilog=_epilog(), prog=prog
    ).values
    values, applied = resolve_run_values(given)
    config = GRPOConfig(**values)
    if applied:
        logger.info(
            "Sampling defaults of %s: %s.",
            config.pretrained_model_name_or_path,
            ", ".join(f"{k}={v}" for k, v in applied.items()),
        )
    check_run_inputs(config)
    check_model_source(config.pretrained_model_name_or_path)
    if config.model_family:
        check_model_family(config.pretrained_model_name_or_path, config.model_family)

    import torch  # noqa: F401  (the first heavy import: after every check that needs no model)

    from .errors import ConfigError
    from .logging_utils import quiet_prompt_truncation
    from .trainer import GRPOTrainer, load_training_pipeline

    quiet_prompt_truncation()
    dtype = _DTYPES[config.mixed_precision]
    pipeline = load_training_pipeline(config, dtype=getattr(torch, dtype) if dtype else None)
    if config.model_family and pipeline.model_family != config.model_family:
        raise ConfigError(
            family_mismatch(config.pretrained_model_name_or_path, pipeline.model_family, config.model_family)
        )
    from .errors import StopNow

    try:
        return GRPOTrainer(config, pipeline).train()
    except StopNow as stop:
        stop.output_dir = config.output_dir  # for the command line's resume hint
        raise


def _resume_hint(output: Any) -> str:
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    command = f"python {script}" if script.endswith(".py") else "mixgrpo-train"
    return f"resume with: {command} --output_dir {output.output_dir} --resume_from_checkpoint latest"


def main(argv: Optional[Sequence[str]] = None, description: Optional[str] = None):
    """The `mixgrpo-train` command: `train_from_command_line`, with the library's errors printed as one line (status 1)
    and a signal-stopped run ending with one line and status 128 + signal number. Returns the `TrainOutput`."""
    from .errors import MixGRPOError, StopNow
    from .logging_utils import setup_script_logging

    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mixgrpo-train"
    setup_script_logging()
    try:
        output = train_from_command_line(argv, description, prog=prog)
    except MixGRPOError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except StopNow as stop:  # a second SIGTERM / SIGINT: at once, no checkpoint of the unfinished step
        from .checkpointing import CheckpointManager

        where = ""
        if stop.output_dir:
            latest = CheckpointManager(stop.output_dir).latest()
            where = (
                f" (last complete checkpoint: {latest}; {_resume_hint(stop)})" if latest else " (no checkpoint yet)"
            )
        print(
            f"Stopped at once by a second {stop.signal_name}: the unfinished step is lost{where}.",
            file=sys.stderr,
        )
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:  # Ctrl-C outside the training loop's handlers (loading the model, the final export)
        print("Interrupted by SIGINT outside the training steps; stopped without saving.", file=sys.stderr)
        raise SystemExit(130) from None
    if output.interrupted_by:
        import signal

        print(
            f"Stopped by {output.interrupted_by} at step {output.global_step}; checkpoint saved to "
            f"{output.checkpoint}; {_resume_hint(output)}",
            file=sys.stderr,
        )
        raise SystemExit(128 + int(getattr(signal, output.interrupted_by, 0)))
    return output
