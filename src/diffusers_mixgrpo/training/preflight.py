"""Checks that run before the model loads, so that a bad input fails in seconds with one sentence, not after minutes.

`check_run_inputs(config)` covers what `GRPOConfig.__post_init__` cannot (it only sees values, not the machine):
reward names and options, the trackers (installed?), the prompt file, the output folder, and what resuming needs.
The trainer reads prompts with `read_prompt_file`, so the same messages appear from Python.
"""

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .errors import ConfigError

__all__ = [
    "check_hub_push",
    "check_model_family",
    "check_model_source",
    "check_no_finished_run",
    "check_output_dir",
    "check_resume_compatible",
    "check_reward_device_available",
    "check_reward_options",
    "check_run_inputs",
    "finished_run",
    "load_train_prompts",
    "read_prompt_file",
]


def read_prompt_file(path: str, what: str = "prompt_file") -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped (a byte-order mark, as Windows editors write, is not part of
    the first prompt). A missing file, a folder, undecodable bytes (the byte offset is named) or a file without a
    prompt fail with `ConfigError` (`what` names the setting)."""
    if not os.path.exists(path):
        raise ConfigError(f"{what}={path!r} does not exist.")
    if not os.path.isfile(path):
        raise ConfigError(f"{what}={path!r} is not a file.")
    try:
        with open(path, encoding="utf-8-sig") as f:
            prompts = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{what}={path!r} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8."
        ) from None
    except OSError as err:
        raise ConfigError(f"{what}={path!r} cannot be read ({err.strerror}).") from None
    if not prompts:
        raise ConfigError(f"{what}={path!r} holds no prompt (only blank lines); write one prompt per line.")
    return prompts


def load_train_prompts(prompts: Optional[Sequence[str]], prompt_file: Optional[str]) -> list[str]:
    """The training prompts: `prompts` when given, else those of `prompt_file`; none at all is a `ConfigError`."""
    if prompts is None and prompt_file:
        prompts = read_prompt_file(prompt_file)
    if not prompts:
        raise ConfigError("No training prompts: pass train_prompts=[...] or set prompt_file.")
    return list(prompts)


def check_output_dir(path: str, what: str = "output_dir") -> None:
    """`path` is (or can be made) a folder this process can write to (`what` names it in the message)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{what}={path!r} is a file, not a folder; choose another folder.")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ConfigError(
            f"{what}={path!r} is not writable ({err.strerror}); choose a folder you can write to."
        ) from None


def _accepted_options(factory: Any, _depth: int = 0) -> Optional[set[str]]:
    """The keyword arguments a reward factory accepts, or `None` when it takes `**kwargs` that go nowhere known.

    A factory that forwards `**kwargs` to the class it returns (`def make(device=None, **kwargs) -> MyReward`, the
    registry's usual form) accepts its own arguments plus those of the class's `__init__`."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    params = signature.parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return named
    returned = signature.return_annotation
    if isinstance(returned, str):  # postponed annotations: resolve the name in the factory's module
        returned = getattr(inspect.getmodule(factory), returned, None)
    if _depth < 3 and inspect.isclass(returned) and returned is not factory:
        forwarded = _accepted_options(returned, _depth + 1)
        return None if forwarded is None else named | forwarded
    return None


def check_reward_options(
    rewards: Mapping[str, float], reward_kwargs: Optional[Mapping[str, Mapping]], field: str = "rewards"
) -> None:
    """Every reward name is registered and every option in `reward_kwargs` is one its factory accepts (`field`: the
    config field that names the rewards, for the message)."""
    from ..rewards.registry import available_rewards, get_reward_factory

    for name in rewards:
        try:
            factory = get_reward_factory(name)
        except KeyError:
            raise ConfigError(
                f"{field} names {name!r}, which is not a registered reward; available: "
                f"{', '.join(available_rewards())}."
            ) from None
        options = dict((reward_kwargs or {}).get(name, {}))
        accepted = _accepted_options(factory)
        if accepted is None:
            continue
        unknown = sorted(set(options) - accepted)
        if unknown:
            allowed = sorted(accepted - {"device", "dtype"})
            raise ConfigError(
                f"reward_kwargs[{name!r}] has the unknown option {unknown[0]!r}; {name!r} accepts "
                f"{', '.join(allowed) or 'no options'}."
            )


def check_reward_device_available(reward_device: Optional[str]) -> None:
    """`reward_device` (already spelled right, see `GRPOConfig`) exists on this machine: a `"cuda:1"` on a one-GPU
    machine fails here, before any model loads, not when the reward models are moved there."""
    if reward_device is None:
        return
    import torch

    device = torch.device(reward_device)
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    available = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    count = backend.device_count() if available and hasattr(backend, "device_count") else 0
    if not available:
        raise ConfigError(
            f"reward_device={reward_device!r} is not available on this machine (no {device.type} device); use "
            f"'cpu' or leave reward_device unset for the training device."
        )
    if device.index is not None and device.index >= count:
        raise ConfigError(
            f"reward_device={reward_device!r} is not available: this machine has {count} {device.type} device(s) "
            f"(indices 0 to {count - 1})."
        )


def check_run_inputs(config: Any, check_rewards: bool = True) -> None:
    """Everything about a `GRPOConfig` that can be checked before the model loads (see the module docstring)."""
    from .checkpointing import CheckpointManager
    from .logging_utils import resolve_report_to

    if check_rewards:
        if not config.rewards:
            raise ConfigError("No reward: set rewards, e.g. --rewards hpsv2.1=1.0 (see --help for the names).")
        check_reward_options(config.rewards, config.reward_kwargs)
        if getattr(config, "monitor_rewards", None):
            check_reward_options(dict.fromkeys(config.monitor_rewards, 1.0), config.reward_kwargs, "monitor_rewards")
    check_reward_device_available(getattr(config, "reward_device", None))
    resolve_report_to(getattr(config, "report_to", None))  # a named tracker that is not installed fails here
    if not config.prompt_file:
        raise ConfigError("No training prompts: set prompt_file (a text file, one prompt per line).")
    read_prompt_file(config.prompt_file)
    if getattr(config, "validation_prompt_file", None):
        read_prompt_file(config.validation_prompt_file, "validation_prompt_file")
    check_output_dir(config.output_dir)
    check_hub_push(config)
    manager = CheckpointManager(config.output_dir)
    overwrite = getattr(config, "overwrite_output_dir", False)
    if config.resume_from_checkpoint:
        candidates = manager.candidates(config.resume_from_checkpoint)  # a bad explicit path fails here
        if not candidates and not overwrite:
            check_no_finished_run(config.output_dir, resuming=True)
        check_resume_compatible(config, manager, candidates)
    elif not overwrite:
        newest = manager.latest()
        if newest is not None:
            raise ConfigError(
                f"output_dir={config.output_dir!r} already holds checkpoints of a run (newest: "
                f"{os.path.basename(newest)}); resume it with --resume_from_checkpoint latest, choose another "
                f"output_dir, or pass --overwrite_output_dir to start over."
            )
        check_no_finished_run(config.output_dir)


#: What a finished run leaves in its output folder, by what it is (the first present names the run in a message).
FINISHED_RUN_FILES = (
    ("pytorch_lora_weights.safetensors", "the final LoRA"),
    ("model_index.json", "the final fine-tuned pipeline"),
    ("training_summary.json", "a run summary"),
)


def finished_run(output_dir: str) -> Optional[str]:
    """What a finished run left in `output_dir` (e.g. `"the final LoRA (pytorch_lora_weights.safetensors)"`), or
    `None` when it holds none of `FINISHED_RUN_FILES`."""
    found = [f"{what} ({name})" for name, what in FINISHED_RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]
    return " and ".join(found[:2]) if found else None


def check_no_finished_run(output_dir: str, resuming: bool = False) -> None:
    """Refuse to start a fresh run over a finished one (which holds no checkpoint when it was shorter than
    `checkpointing_steps`): its weights and summary would be replaced without a word. `resuming`: the run asked to
    resume, but there is no checkpoint to resume from."""
    held = finished_run(output_dir)
    if held is None:
        return
    if resuming:
        raise ConfigError(
            f"output_dir={output_dir!r} holds a finished run ({held}) but no checkpoint to resume from; choose "
            f"another output_dir, or pass --overwrite_output_dir to replace it with a fresh run."
        )
    raise ConfigError(
        f"output_dir={output_dir!r} already holds a finished run ({held}); choose another output_dir, or pass "
        f"--overwrite_output_dir to replace it."
    )


def check_hub_push(config: Any) -> None:
    """With `push_to_hub`, what the upload at the end of the run needs, checked before the run: a valid repository
    id, a token (`hub_token`, `HF_TOKEN` or `hf auth login`) and a connection (`HF_HUB_OFFLINE` unset)."""
    if not getattr(config, "push_to_hub", False):
        return
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = config.resolved_hub_model_id()
    what = "hub_model_id" if config.hub_model_id else "the repository id (the name of output_dir)"
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConfigError(
            f"push_to_hub: {what} {repo_id!r} is not a valid Hub repository id; set --hub_model_id to 'name' or "
            f"'user/name' (letters, digits, '-', '_' and '.', not starting or ending with '-' or '.', at most 96 "
            f"characters)."
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "push_to_hub is set but HF_HUB_OFFLINE is set, so the upload at the end of the run would fail; unset "
            "HF_HUB_OFFLINE, or train without --push_to_hub and push the output folder later."
        )
    if not (config.hub_token or _cached_hub_token()):
        raise ConfigError(
            "push_to_hub is set but no Hub token was found (no hub_token, HF_TOKEN or `hf auth login`); log in with "
            "`hf auth login` or set HF_TOKEN, or train without --push_to_hub."
        )


def _cached_hub_token() -> Optional[str]:
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception:  # an OIDC / OAuth refresh that fails: the upload will tell
        return None


def check_resume_compatible(config: Any, manager: Any, candidates: list[str]) -> None:
    """Compare the run's settings with those saved in the checkpoint it resumes (the first readable candidate), so
    that a changed LoRA rank or method fails before the model loads. A checkpoint that cannot be read is left to
    the trainer (which falls back to the previous one)."""
    from .base_model import check_base_model
    from .errors import CorruptCheckpointError
    from .resume import config_changes

    for path in candidates:
        try:
            manager.verify(path)
            saved = manager.read_trainer_state(path)
        except CorruptCheckpointError:
            continue
        moved = ("pretrained_model_name_or_path",) if check_base_model(saved, config, path) else ()
        if "config" in saved:
            config_changes(saved["config"], config.to_dict(), path, undecided_ok=True, may_change=moved)
        return


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(path_or_id: Optional[str], what: str = "pretrained_model_name_or_path") -> None:
    """A local pipeline folder (with `model_index.json`) or something that can be a Hub id; raises `ModelLoadError`
    in one sentence for a missing folder, a folder or file that is not a diffusers pipeline, or a Hub id that is not
    in the local cache while `HF_HUB_OFFLINE` is set. Imports nothing heavy."""
    from .errors import ModelLoadError

    if not path_or_id:
        raise ModelLoadError(f"{what} is required to load the model (a Hub id or a local folder).")
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelLoadError(
                f"{what}={path!r} is a folder without model_index.json, not a diffusers pipeline; pass the folder "
                "that `save_pretrained` wrote (or a Hub id)."
            )
        return
    if os.path.exists(path):
        raise ModelLoadError(f"{what}={path!r} is a file; pass a diffusers pipeline folder or a Hub id.")
    if not _HUB_ID.match(path) or path.startswith((".", "~")):
        raise ModelLoadError(
            f"{what}={path!r} does not exist (no such folder, and it is not a Hub id of the form 'org/name')."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "model_index.json"), str):
        raise ModelLoadError(
            f"{what}={path!r} is not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set; "
            f"download it first while online (`hf download {path}`) or pass a local folder."
        )


def model_family_of(path_or_id: Optional[str]) -> Optional[str]:
    """The model family of a local diffusers folder, from its `model_index.json` (`None` when it cannot be told
    without loading the model: a Hub id, an unknown pipeline class)."""
    import json

    from ..pipelines.families.registry import infer_model_family

    if not path_or_id or not os.path.isdir(path_or_id):
        return None
    try:
        with open(os.path.join(path_or_id, "model_index.json"), encoding="utf-8") as f:
            class_name = json.load(f).get("_class_name")
        return infer_model_family(class_name) if class_name else None
    except (OSError, ValueError, AttributeError):
        return None


def check_model_family(path_or_id: Optional[str], expected: Optional[str]) -> None:
    """A family-specific script refuses a model folder of another family before loading it."""
    family = model_family_of(path_or_id)
    if expected and family and family != expected:
        raise ConfigError(family_mismatch(path_or_id, family, expected))


def family_mismatch(path_or_id: Optional[str], family: str, expected: str) -> str:
    return (
        f"{path_or_id!r} is a {family!r} model but this run expects {expected!r}; use the script of that family "
        f"(or the generic examples/train_mixgrpo.py) or fix model_family."
    )
