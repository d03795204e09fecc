"""Resuming a run: what may change on resume, the saved run configuration, and the checks done before going on.

A checkpoint stores the configuration it was trained with (`trainer_state.pt["config"]`). On resume the current
configuration is compared with it, field by field:

- fields in `APPLIED_ON_RESUME` (schedule length, learning rate, logging/validation/checkpoint cadence, Hub and
  tracker settings, reward options such as a server URL or a weights path, memory knobs) may change: the new value
  is applied from the resumed step on, logged, and recorded in `trainer_state["config_changes"]` and in
  `training_config.yaml`;
- any other difference (LoRA rank, method, window, seed, model, prompts, ...) would silently mix two runs, so the
  resume is refused with one sentence naming the field, the saved value and the new one.

`load_saved_run_config(output_dir)` reads the `training_config.yaml` a run writes when it starts, which is how the
command line resumes from nothing but the output folder.
"""

import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import torch

from .errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "APPLIED_ON_RESUME",
    "prompts_fingerprint",
    "RUN_CONFIG_FILE",
    "check_finite",
    "config_changes",
    "load_saved_run_config",
    "set_learning_rate",
]

RUN_CONFIG_FILE = "training_config.yaml"

#: Fields that may differ between a checkpoint and the run resuming it; the new value applies from then on.
APPLIED_ON_RESUME = frozenset(
    {
        "max_train_steps",
        "learning_rate",
        "logging_steps",
        "validation_steps",
        "validation_prompts",
        "validation_prompt_file",
        "validation_images_per_prompt",
        "validation_seed",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "preemption_snapshot",
        "output_dir",
        "prompt_file",  # the prompts themselves are compared (`prompts_fingerprint`): a moved file is fine
        "report_to",
        "tracker_project_name",
        "tracker_run_name",
        "logging_dir",
        "push_to_hub",
        "hub_model_id",
        "hub_private",
        "hub_base_model",
        "reward_kwargs",
        "monitor_rewards",  # watched, never trained on
        "reward_timeout",
        "reward_batch_size",
        "reward_device",
        "max_consecutive_bad_groups",
        "gradient_checkpointing",
        "sample_max_batch_size",
        "allow_tf32",
        "cache_prompt_embeds",
        "prompt_embeds_cache_dir",
        "offload_text_encoders",
        "offload_vae",
        "vae_slicing",
        "vae_tiling",
        "overlap_rewards",
    }
)


def load_saved_run_config(output_dir: str) -> Optional[dict[str, Any]]:
    """The `training_config.yaml` of a run's output folder as a dict, or `None` when there is none."""
    import yaml

    path = os.path.join(output_dir, RUN_CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        from .fields import describe_yaml_error

        raise ConfigError(
            f"{path} cannot be read ({describe_yaml_error(err)}); resume with the run's flags instead."
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of field: value pairs.")
    return values


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


_PATH_FIELDS = ("pretrained_model_name_or_path", "prompt_file")


def _comparable(name: str, value: Any) -> Any:
    if name in _PATH_FIELDS and isinstance(value, str) and os.path.exists(value):
        return os.path.abspath(value)
    return value


def config_changes(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    checkpoint: str,
    undecided_ok: bool = False,
    may_change: Iterable[str] = (),
) -> dict[str, list]:
    """`{field: [saved value, new value]}` for the fields that differ and may change on resume; a difference in any
    other field raises `CheckpointError` in one sentence. Fields missing on either side are ignored (older
    versions); local paths compare as absolute paths. `undecided_ok`: a `None` in `current` is not a difference
    (the trainer fills it from the model, e.g. `model_family`). `may_change`: fields that may also change for this
    resume (`pretrained_model_name_or_path` when the model is recognised by its fingerprint, `base_model.py`)."""
    allowed = APPLIED_ON_RESUME | frozenset(may_change)
    changes = {}
    for name, new in current.items():
        if name not in saved or _same(_comparable(name, saved[name]), _comparable(name, new)):
            continue
        if undecided_ok and new is None:
            continue
        if name not in allowed:
            raise CheckpointError(
                f"Cannot resume {checkpoint} with {name}={new!r}: it was trained with {name}={saved[name]!r}; "
                f"resume with the same value, or start a new run in another output_dir."
            )
        changes[name] = [saved[name], new]
    return changes


def prompts_fingerprint(prompts: Iterable[str]) -> str:
    """SHA-256 of the training prompts in order: a resume must see the same data, wherever the file now is."""
    import hashlib

    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


def set_learning_rate(optimizer: torch.optim.Optimizer, lr_scheduler: Any, learning_rate: float) -> None:
    """Make `learning_rate` the peak learning rate of a restored optimiser and LR schedule (the optimiser's state
    dict restores the old one); the schedule's current factor is kept."""
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's AcceleratedScheduler wraps it
    base_lrs = list(getattr(scheduler, "base_lrs", []))
    for i, group in enumerate(optimizer.param_groups):
        old_base = base_lrs[i] if i < len(base_lrs) else group.get("initial_lr", group["lr"])
        factor = group["lr"] / old_base if old_base else 1.0
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor
    if base_lrs:
        scheduler.base_lrs = [learning_rate] * len(base_lrs)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def check_finite(named_parameters: Iterable[tuple[str, torch.Tensor]], checkpoint: str) -> None:
    """Refuse to continue from weights holding NaN or inf (a run that diverged before it was saved)."""
    bad = [name for name, p in named_parameters if not torch.isfinite(p.detach()).all()]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{checkpoint} holds non-finite weights ({bad[0]}{more}); resume from an earlier checkpoint "
            f"(resume_from_checkpoint=<path>) or start a new run."
        )
