"""`GRPOConfig`: every knob of a MixGRPO / DanceGRPO training run, as a dataclass filled from Python, YAML or the CLI.

Modelled on TRL's `GRPOConfig`: one documented field per knob, grouped by prefix (`sample_*`, `window_*`, `tail_*`,
`adv_*`, `kl_*`, `reward_*`, `lora_*`, `ema_*`, `hub_*`), so `HfArgumentParser` builds the command line with no extra
code. Optimiser and bookkeeping flags keep the names of the diffusers training examples (`learning_rate`,
`gradient_accumulation_steps`, `checkpointing_steps`, ...).

The `method` field picks a preset (MixGRPO, MixGRPO-Flash, MixGRPO-Flash*, DanceGRPO). Preset-controlled fields
default to `None`, which means "take the preset's value"; any value given explicitly (in Python, YAML or on the
command line) wins over the preset.
"""

import dataclasses
import difflib
import importlib.util
import json
import logging
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from ..pipelines.families.registry import MODEL_FAMILIES, default_lora_target_modules
from .errors import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("mixgrpo", "flash", "flash_star", "dancegrpo")
SDE_TYPES = ("flow_grpo", "dance_grpo", "cps")
WINDOW_STRATEGIES = ("progressive", "random", "decay", "exp_decay")
TAIL_SOLVERS = ("euler", "dpmsolver++")
REPORT_TO = ("tensorboard", "wandb", "all", "none")
REWARD_DTYPES = ("float32", "bfloat16", "float16")
_DEVICE_HELP = "'cpu', 'cuda', 'cuda:<index>', 'mps', 'xpu:<index>' or unset for the training device"


def check_reward_device(value: str) -> str:
    """`value` if torch reads it as a device of a known type (`"cpu"`, `"cuda"`, `"cuda:1"`, ...), else a
    `ConfigError` naming it. Whether that device exists here is checked before the model loads
    (`preflight.check_reward_device_available`), not when a config is written."""
    import torch

    text = value.strip().lower() if isinstance(value, str) else value
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"reward_device={value!r} is not a device; allowed: {_DEVICE_HELP}.") from None
    if device.type not in ("cpu", "cuda", "mps", "xpu", "npu"):
        raise ConfigError(f"reward_device={value!r} is not allowed; allowed: {_DEVICE_HELP}.")
    return str(device)


# What each `method` fills in for the fields left at `None`. Values from the MixGRPO paper / released scripts
# (algorithm notes sections 2-4); DanceGRPO: all steps SDE with eta 0.3, a random 60% of the steps trained.
# `window_size=None` for DanceGRPO means "every trainable step" (N - 1), resolved once N is known.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "mixgrpo": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 25,
        "window_stride": 1,
        "tail_solver": "euler",
        "tail_ratio": None,
        "train_timestep_fraction": 1.0,
    },
    "flash": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 20,
        "window_stride": 1,
        "tail_solver": "dpmsolver++",
        "tail_ratio": 0.4,
        "train_timestep_fraction": 1.0,
    },
    "flash_star": {
        "sde_type": "flow_grpo",
        "eta": 0.7,
        "window_size": 4,
        "window_shift_interval": 20,
        "window_stride": 0,
        "tail_solver": "dpmsolver++",
        "tail_ratio": 0.2,
        "train_timestep_fraction": 1.0,
    },
    "dancegrpo": {
        "sde_type": "dance_grpo",
        "eta": 0.3,
        "window_size": None,
        "window_shift_interval": 25,
        "window_stride": 0,
        "tail_solver": "euler",
        "tail_ratio": None,
        "train_timestep_fraction": 0.6,
    },
}

# List fields whose items may contain commas: a string given for one of them is a single item.
_WHOLE_STRING_LISTS = frozenset({"validation_prompts"})

#: Validation prompts taken from the training prompts when `validation_prompts` is unset.
DEFAULT_NUM_VALIDATION_PROMPTS = 4

# Never written by `to_dict`/`to_yaml`, never shown by `repr`, never sent to a tracker.
SECRET_FIELDS = frozenset({"hub_token"})


def is_secret_option(name: str) -> bool:
    """A reward option that holds a credential (`api_key`, `token`, `password`, ...): used, never saved or shown."""
    words = str(name).lower().replace("-", "_").split("_")
    joined = "_".join(words)
    return bool({"token", "secret", "password", "apikey"} & set(words)) or joined.endswith("api_key")


def parse_reward_weights(value: Union[None, str, Mapping[str, Any], Sequence[str]]) -> Optional[dict[str, float]]:
    """Normalise a `rewards` value to `{name: weight}`.

    Accepts a mapping, a JSON object string (`'{"hpsv2.1": 1.0}'`), a compact string (`"hpsv2.1=1.0,pickscore=0.5"`;
    a name without `=weight` gets 1.0), or a list of such names.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"rewards={value!r} is not a valid JSON object ({e.msg}).") from None
        else:
            value = [part for part in text.split(",") if part.strip()]
    if not isinstance(value, (Mapping, list, tuple)):
        raise ConfigError(
            f"rewards={value!r} is not allowed; give reward names with weights, e.g. "
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
            raise ConfigError(f"rewards has an empty or non-string reward name: {name!r}.")
        if isinstance(weight, bool):
            raise ConfigError(f"rewards[{name!r}]={weight!r} is not a number; weights must be finite floats.")
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(
                f"rewards[{name!r}]={weight!r} is not a number; weights must be finite floats."
            ) from None
        if not math.isfinite(w):
            raise ConfigError(f"rewards[{name!r}]={weight!r} is not finite; weights must be finite floats.")
        weights[name.strip()] = w
    return weights


def parse_reward_kwargs(value: Union[None, str, Mapping[str, Any], Sequence[str]]) -> Optional[dict[str, dict]]:
    """Normalise a `reward_kwargs` value to `{reward name: {option: value}}`.

    Accepts a mapping (YAML), a JSON object string, or `name.option=value` items (the command line:
    `unifiedreward.base_url=http://host:8000/v1 hpsv2.1.checkpoint=/models/HPS_v2.1_compressed.pt`; the option is
    what follows the last dot, values are read as YAML scalars, so `30` is a number and `true` a boolean).
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"reward_kwargs={text!r} is not a valid JSON object ({e.msg}).") from None
        else:
            value = text.split()
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


_TRUE_STRINGS = ("true", "yes", "y", "on", "1")
_FALSE_STRINGS = ("false", "no", "n", "off", "0")


def _field_kind(annotation: Any) -> tuple[str, bool]:
    """What a field's annotation asks for, as `(kind, optional)`; kind is one of "bool", "int", "float", "str",
    "list", "choice" or "other"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = False
    if origin is Union:
        members = [a for a in args if a is not type(None)]
        optional = len(members) < len(args)
        if len(members) != 1:
            return "other", optional
        annotation = members[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "choice", optional
    if origin is list:
        return "list", optional
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if annotation is cls:
            return kind, optional
    return "other", optional


@dataclass
class GRPOConfig:
    r"""
    Configuration of a GRPO training run for diffusers image models with MixGRPO's sliding ODE-SDE window.

    Fields left at `None` in the *method* and *window* groups take the value of the `method` preset (see
    `METHOD_PRESETS`); an explicit value always wins. Fill it in Python (`GRPOConfig(method="flash", ...)`), from a
    YAML file (`GRPOConfig.from_yaml("config.yaml", learning_rate=2e-5)`) or from the command line
    (`parse_args(["--config", "config.yaml", "--learning_rate", "2e-5"])`).

    One *training step* is one GRPO iteration: a rollout phase (prompts x `num_generations` images, rewards,
    advantages) followed by its policy updates. `max_train_steps`, the window schedule, `logging_steps`,
    `validation_steps` and `checkpointing_steps` all count training steps.

    Parameters:
        > Model and output

        pretrained_model_name_or_path (`str`, *optional*):
            Hub id or local path of the diffusers pipeline to fine-tune (FLUX.1, SD3, SD1.5, Qwen-Image, FLUX.2 [dev]
            / [klein] or Z-Image). May be left unset when
            a pipeline object is handed to the trainer.
        revision (`str`, *optional*):
            Hub revision (branch, tag or commit) of the pretrained pipeline.
        variant (`str`, *optional*):
            Weights variant to load (e.g. `"fp16"`).
        model_family (`str`, *optional*):
            `"flux"`, `"sd3"`, `"sd15"`, `"sdxl"`, `"sana"`, `"wan"`, `"qwenimage"`, `"flux2"`, `"flux2_klein"` or
            `"zimage"`. `None`: inferred from the pipeline class by the trainer. Selects the default
            `lora_target_modules`.
        output_dir (`str`, defaults to `"mixgrpo-output"`):
            Where checkpoints, logs, the final LoRA weights and the model card are written.
        method (`str`, defaults to `"mixgrpo"`):
            Preset: `"mixgrpo"` (window K = 4, tau = 25, Euler ODE outside the window), `"flash"` (tau = 20,
            DPM-Solver++ tail compressed with r = 0.4), `"flash_star"` (Flash with r = 0.2 and the window frozen at
            the start, stride 0) or `"dancegrpo"` (every step SDE with the DanceGRPO SDE, eta 0.3, a random 60% of
            the steps trained).

        > Sampling (rollouts)

        num_inference_steps (`int`, defaults to 25):
            N, the number of sampling steps of a rollout (uncompressed grid).
        resolution (`int`, *optional*):
            Square image side; fills `height` and `width` when they are unset. `None`: the pipeline's default.
        height (`int`, *optional*):
            Image height in pixels (a multiple of 8; FLUX needs a multiple of 16).
        width (`int`, *optional*):
            Image width in pixels.
        num_frames (`int`, *optional*):
            Video families (Wan) only: frames per video, `num_frames - 1` a multiple of 4. `None`: the family's
            default (Wan: 81).
        shift (`float`, defaults to 3.0):
            Time shift s of the flow-matching grid, `sigma = s*u / (1 + (s - 1)*u)` (SANA / Wan: their `flow_shift`).
        guidance_scale (`float`, defaults to 3.5):
            FLUX.1-dev: the embedded guidance value (no CFG, one forward per step). SD3 / SD1.5: the classifier-free
            guidance scale (two forwards per step when > 1).
        max_sequence_length (`int`, *optional*):
            Text tokens of the T5 prompt encoder (FLUX, SD3). `None`: the model folder's `sampling_defaults.json`
            when it has one, else the pipeline's default (FLUX 512, SD3 256). A model trained on short prompts
            needs its own length: longer padding is input it never saw.
        num_generations (`int`, defaults to 12):
            G, the group size: images generated per prompt, normalised against each other.
        sample_prompts_per_device (`int`, defaults to 1):
            Prompts per device per training step; each device generates `sample_prompts_per_device * num_generations`
            images per step.
        sample_same_noise (`bool`, defaults to `True`):
            The members of a group start from the same initial noise (the reference default).
        sample_share_prefix (`bool`, defaults to `True`):
            Compute the deterministic pre-window ODE trajectory once per prompt and branch into the group at the
            window (needs `sample_same_noise`). Same result, fewer forwards.
        sample_max_batch_size (`int`, *optional*):
            Largest batch of images per denoiser forward during rollouts (memory cap). `None`: no cap.
        log_prob_reduction (`str`, defaults to `"mean"`):
            How a step's per-element Gaussian log-density is reduced over the non-batch dimensions: `"mean"` (the
            reference implementations) or `"sum"` (the true log-density).
        cps_log_prob (`str`, defaults to `"gaussian"`):
            Log-prob of the `"cps"` SDE: `"gaussian"` (the true density, as every other SDE type; every preset) or
            `"flow_grpo"` (Flow-GRPO's and the official MixGRPO code's `-(x - mu)^2`, which scales each step's
            log-ratio by `2 tau^2`; `examples/configs/flux_mixgrpo_cps.yaml`). See docs/schedulers.md.

        > Method: SDE and window (preset-controlled when `None`)

        sde_type (`str`, *optional*):
            SDE used inside the window: `"flow_grpo"`, `"dance_grpo"` or `"cps"`. Preset: flow_grpo (dance_grpo for
            DanceGRPO).
        eta (`float`, *optional*):
            Noise level of the SDE. Preset: 0.7 (0.3 for DanceGRPO).
        window_size (`int`, *optional*):
            K, consecutive SDE (trained) steps. Preset: 4 (DanceGRPO: N - 1, every trainable step).
        window_shift_interval (`int`, *optional*):
            tau, training steps between two window moves. Preset: 25 (20 for Flash and Flash*).
        window_stride (`int`, *optional*):
            S, steps the window moves at each shift; 0 freezes it at the start. Preset: 1 (0 for Flash* and
            DanceGRPO).
        window_strategy (`str`, defaults to `"progressive"`):
            `"progressive"` (the paper), `"random"`, `"decay"` or `"exp_decay"`; see `SlidingWindowSchedule`.
        window_roll_back (`bool`, defaults to `True`):
            Past `window_max_start` the window returns to 0 (`True`) or stays there (`False`).
        window_max_start (`int`, *optional*):
            Highest window start. `None`: N - 2, the last trainable step.
        window_min_shift_interval (`int`, *optional*):
            `"decay"` only: the interval at the last start. `None`: `max(1, window_shift_interval // 4)`.
        window_exp_decay_k (`float`, defaults to 0.1):
            `"exp_decay"` only: the decay rate k in `tau * exp(-k * max(0, w - w_thr))`.
        window_exp_decay_threshold (`int`, defaults to 13):
            `"exp_decay"` only: w_thr.
        tail_solver (`str`, *optional*):
            Solver of the ODE steps after the window: `"euler"` or `"dpmsolver++"`. Preset: euler (dpmsolver++ for
            Flash and Flash*).
        tail_solver_order (`int`, defaults to 2):
            Order of the DPM-Solver++ tail (1 or 2).
        tail_ratio (`float`, *optional*):
            r, compression of the steps after the window: `floor(max((N - e)*r, 1))` grid points. `None`: no
            compression. Preset: None (0.4 for Flash, 0.2 for Flash*).

        > GRPO objective

        train_batch_size (`int`, *optional*):
            Rollouts per forward/backward of the training pass (the training micro-batch), per device, independent of
            the rollout chunk `sample_max_batch_size`. An iteration takes
            `ceil(ceil(rollouts_per_device / train_batch_size) / gradient_accumulation_steps)` optimiser steps per inner
            epoch (`optimizer_steps_per_iteration`): the official MixGRPO recipe, 12 rollouts per GPU in micro-batches of 1
            with accumulation 3, takes 4. `None`: one micro-batch per rollout chunk, which sees the denoiser with the
            rollout's batch composition, so the first ratio is exactly 1 in float32 (a different micro-batch size leaves
            it 1 up to float rounding).
        train_timestep_fraction (`float`, *optional*):
            Fraction of the window's steps trained per rollout, drawn at random (DanceGRPO). Preset: 1.0 (0.6 for
            DanceGRPO).
        num_inner_epochs (`int`, defaults to 1):
            Passes of policy updates over each rollout batch.
        clip_range (`float`, defaults to 1e-4):
            epsilon of the clipped ratio, `clip(ratio, 1 - eps, 1 + eps)`.
        adv_clip_max (`float`, defaults to 5.0):
            Advantages are clipped to `[-adv_clip_max, adv_clip_max]`.
        adv_std (`str`, defaults to `"group"`):
            Advantage denominator: the group's std (`"group"`), the std of all rewards of the step (`"global"`), or
            none (`"none"`, mean-centred only).
        adv_trim (`float`, defaults to 0.0):
            Fraction in [0, 0.5) of the lowest and of the highest rewards left out of the mean/std statistics.
        kl_type (`str`, defaults to `"none"`):
            KL regulariser: `"none"`, `"rollout"` (`0.5 * mean(dlogp^2)` against the rollout policy) or
            `"reference"` (Flow-GRPO's closed form against the base model, LoRA disabled).
        kl_coeff (`float`, defaults to 0.0):
            Weight of the KL term.
        max_consecutive_bad_groups (`int`, defaults to 5):
            Groups with a non-finite reward are dropped from the update with a warning; training stops with an error
            after this many consecutive bad groups (0: at the first).

        > Rewards

        rewards (`dict[str, float]` or `str`, *optional*):
            Registered reward name -> weight, e.g. `{"hpsv2.1": 1.0, "pickscore": 1.0}`. On the command line: a JSON
            object or `"hpsv2.1=1.0,pickscore=1.0"`. `None`: reward functions are handed to the trainer.
        reward_mix (`str`, defaults to `"advantage_aggr"`):
            `"advantage_aggr"` (one advantage per reward, then the weighted sum; the paper) or `"reward_aggr"` (the
            weighted sum of the rewards, then one advantage).
        reward_batch_size (`int`, defaults to 8):
            Images per reward-model forward.
        reward_kwargs (`dict[str, dict]`, *optional*):
            Options of each reward, `{name: {option: value}}`: local weights (`hpsv2.1: {checkpoint: /m/hps.pt}`),
            the UnifiedReward server (`unifiedreward: {base_url: ..., timeout: 30, max_retries: 2}`), ... On the
            command line: `name.option=value` items or a JSON object. See docs/rewards.md for each reward's options.
            Credentials (`unifiedreward.api_key`, any option named like a key, token or password) are used but never
            saved (run config, checkpoints, Hub, trackers): on resume give them again, or use the environment
            (`UNIFIEDREWARD_API_KEY`).
        reward_timeout (`float`, *optional*):
            Seconds one call of a reward may take; a slower (hung) reward stops the run with its name. `None`: no
            limit.
        reward_dtype (`str`, defaults to `"float32"`):
            Weights and compute dtype of the registered reward models: `"float32"`, `"bfloat16"` (half the memory;
            see BENCHMARKS.md for the score difference) or `"float16"`. Scores are float32 whatever the dtype. Reward
            callables handed to the trainer are used as they are.
        reward_device (`str`, *optional*):
            Where the registered reward models live and run: `"cpu"`, `"cuda"` (the process's current GPU), `"cuda:1"`,
            ... `None`: the process's training device. Scores come back to the training device either way.

        > Optimisation

        optimizer (`str`, defaults to `"adamw"`):
            `"adamw"` (torch) or `"adamw8bit"` (bitsandbytes).
        learning_rate (`float`, defaults to 1e-5):
            Peak learning rate.
        adam_beta1 (`float`, defaults to 0.9), adam_beta2 (`float`, defaults to 0.999),
        adam_epsilon (`float`, defaults to 1e-8):
            AdamW coefficients.
        weight_decay (`float`, defaults to 1e-4):
            AdamW decoupled weight decay.
        lr_scheduler (`str`, defaults to `"constant"`):
            A `diffusers.optimization.get_scheduler` name (`"constant"`, `"constant_with_warmup"`, `"linear"`,
            `"cosine"`, ...).
        lr_warmup_steps (`int`, defaults to 0):
            Warm-up optimiser steps.
        max_grad_norm (`float`, defaults to 1.0):
            Gradient-norm clip.
        gradient_accumulation_steps (`int`, defaults to 3):
            Micro-batches accumulated per optimiser step.
        max_train_steps (`int`, defaults to 300):
            Training steps (GRPO iterations) to run.
        mixed_precision (`str`, defaults to `"no"`):
            `"no"`, `"fp16"` or `"bf16"` (the paper: bf16).
        gradient_checkpointing (`bool`, defaults to `False`):
            Recompute activations in the backward pass of the denoiser (the paper: on).
        allow_tf32 (`bool`, defaults to `True`):
            TF32 matmuls and cuDNN convolutions on Ampere+ GPUs: sets `torch.backends.cuda.matmul.allow_tf32` and
            `torch.backends.cudnn.allow_tf32` when the trainer starts on CUDA (`False` turns both off).
        seed (`int`, defaults to 42):
            Seed of the run (initial noise, window schedule, data order).

        > Memory and scale-out

        cache_prompt_embeds (`bool`, defaults to `False`):
            Encode every training and evaluation prompt once at start-up (`PromptEmbedsCache`, a progress bar) and
            roll out from the cached rows; the text encoders then never run during training.
        prompt_embeds_cache_dir (`str`, *optional*):
            Keep the cached rows on disk there (read lazily, for datasets whose conditioning does not fit in memory)
            and reuse them in later runs with the same prompts and text encoders. `None`: CPU memory. Needs
            `cache_prompt_embeds=True`.
        offload_text_encoders (`str`, defaults to `"none"`):
            `"none"` (on the device), `"cpu"` (in CPU memory, moved to the device for each encode) or `"free"`
            (deleted once the prompts are cached; needs `cache_prompt_embeds=True`).
        offload_vae (`bool`, defaults to `False`):
            Keep the VAE in CPU memory and move it to the device for each decode.
        vae_slicing (`bool`, defaults to `False`):
            Decode a rollout chunk one image at a time (the same images; peak memory of one decode).
        vae_tiling (`bool`, defaults to `False`):
            Decode in blended tiles (1024 px and up; images differ slightly from a full decode).
        fsdp2 (`bool`, defaults to `False`):
            Shard the denoiser with torch's FSDP2 (`fully_shard` per transformer block) under the trainer; runs on
            GPUs and on the CPU (gloo). See docs/training.md, "Scaling out".
        fsdp2_reshard_after_forward (`bool`, defaults to `True`):
            FSDP2: free a block's gathered weights after its forward (full shard, like ZeRO-3); `False`: keep them
            until the backward (like ZeRO-2: faster, more memory).
        fsdp2_cpu_offload (`bool`, defaults to `False`):
            FSDP2: keep the shards, gradients and optimiser state in CPU memory.
        overlap_rewards (`bool`, defaults to `False`):
            Score each rollout chunk in a thread while the next chunk is denoised (the same samples and scores).

        > LoRA and EMA

        use_lora (`bool`, defaults to `True`):
            Train LoRA adapters (peft); `False` fine-tunes the whole denoiser.
        lora_rank (`int`, defaults to 32):
            LoRA rank r.
        lora_alpha (`float`, defaults to 64):
            LoRA alpha (scale alpha / r).
        lora_dropout (`float`, defaults to 0.0):
            Dropout on the LoRA branch.
        lora_target_modules (`list[str]`, *optional*):
            Module-name suffixes to adapt. `None`: the family's default (`default_lora_target_modules`).
        use_ema (`bool`, defaults to `False`):
            Keep an exponential moving average of the trainable parameters (used for validation and the final save).
        ema_decay (`float`, defaults to 0.9):
            EMA decay per update (Flow-GRPO: 0.9).
        ema_update_interval (`int`, defaults to 8):
            Optimiser steps between EMA updates (Flow-GRPO: 8).

        > Prompts, logging and validation

        prompt_file (`str`, *optional*):
            Text file with one training prompt per line (or hand prompts to the trainer).
        report_to (`str`, *optional*):
            Trackers: `"tensorboard"`, `"wandb"`, `"all"`, `"none"` or a comma-separated list. `None`: tensorboard if
            installed, else none.
        tracker_project_name (`str`, defaults to `"mixgrpo"`):
            Project name given to the trackers.
        tracker_run_name (`str`, *optional*):
            Name of the wandb run. `None`: the name of `output_dir`. The run's wandb id is kept in
            `output_dir/wandb_run_id.txt`, so a resumed run logs into the same wandb run.
        logging_dir (`str`, defaults to `"logs"`):
            Tracker directory, relative to `output_dir`.
        logging_steps (`int`, defaults to 1):
            Log scalars every this many training steps.
        validation_steps (`int`, defaults to 50):
            Log a grid of sample images every this many training steps (0: never).
        validation_prompts (`list[str]`, *optional*):
            Held-out prompts of the periodic evaluation (ODE samples, `eval/reward`, a per-prompt table, an image
            grid; see docs/training.md, "Evaluation"). A single string is one prompt. Give this or
            `validation_prompt_file`, not both. Neither: the first `DEFAULT_NUM_VALIDATION_PROMPTS` (4) training
            prompts, with a warning (scores on training prompts measure fit, not generalisation).
        validation_prompt_file (`str`, *optional*):
            Text file with one held-out evaluation prompt per line (blank lines ignored), read before the model
            loads: a missing or empty file stops the run with its path.
        validation_images_per_prompt (`int`, defaults to 2):
            Images per evaluation prompt. Image `j` of prompt `i` starts from the noise of seed
            `evaluation.eval_seed(validation_seed, i, j)`, so an evaluation is the same in every run, at every step
            and for any number of processes (the prompt x image work is split across the processes and gathered).
        validation_seed (`int`, defaults to 0):
            Seed of the evaluation noise; independent of `seed`, so runs with other training seeds are scored on the
            same noise.

        > Checkpointing

        checkpointing_steps (`int`, defaults to 50):
            Save a resumable checkpoint every this many training steps (0: only at the end).
        checkpoints_total_limit (`int`, *optional*):
            Keep at most this many checkpoints (oldest deleted first). `None`: keep all.
        resume_from_checkpoint (`str`, *optional*):
            `"latest"` (the newest complete checkpoint of `output_dir`; a fresh start when there is none) or a
            checkpoint folder. `None`: a fresh run (the trainer never resumes on its own).
        preemption_snapshot (`bool`, defaults to `True`):
            Keep a CPU copy of the trained weights and optimiser state at the start of each iteration's update, so
            that SIGTERM / SIGINT stop at the next micro-batch and save the state of the iteration's start (bounded
            time: see `docs/training.md`, "Pre-emption"). Costs that copy in CPU memory (a LoRA: small; a full
            fine-tune: 3x the model in float32, per rank its shard). `False`: a signal stops at once only before
            the iteration's first optimiser step, else at the end of the iteration.

        > Hub

        push_to_hub (`bool`, defaults to `False`):
            Upload the final weights, the config and a model card to the Hub.
        hub_model_id (`str`, *optional*):
            Repository id. `None`: the name of `output_dir`.
        hub_private (`bool`, *optional*):
            Create the repository private. `None`: the Hub's default for your account/organisation.
        hub_token (`str`, *optional*):
            Token for the Hub. Prefer `hf auth login` or the `HF_TOKEN` environment variable. Never saved, logged or
            shown.
        hub_base_model (`str`, *optional*):
            Hub id of the base model, for the model card, when `pretrained_model_name_or_path` is a local folder.
            `None`: the Hub id when the model was loaded by id (or from the Hugging Face cache), else none.
    """

    # Model and output
    pretrained_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Hub id or local path of the diffusers pipeline to fine-tune."}
    )
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the pretrained pipeline."})
    variant: Optional[str] = field(default=None, metadata={"help": "Weights variant to load, e.g. 'fp16'."})
    model_family: Optional[
        Literal["flux", "sd3", "sd15", "sdxl", "sana", "wan", "qwenimage", "flux2", "flux2_klein", "zimage"]
    ] = field(
        default=None,
        metadata={
            "help": "'flux', 'sd3', 'sd15', 'sdxl', 'sana', 'wan', 'qwenimage', 'flux2', 'flux2_klein' or 'zimage'; "
            "None: inferred from the pipeline class."
        },
    )
    output_dir: str = field(
        default="mixgrpo-output", metadata={"help": "Where checkpoints, logs, weights and the model card go."}
    )
    method: Literal["mixgrpo", "flash", "flash_star", "dancegrpo"] = field(
        default="mixgrpo",
        metadata={"help": "Preset: 'mixgrpo', 'flash', 'flash_star' or 'dancegrpo'; explicit field values win."},
    )

    # Sampling
    num_inference_steps: int = field(default=25, metadata={"help": "N, sampling steps per rollout."})
    resolution: Optional[int] = field(
        default=None, metadata={"help": "Square image side; fills height/width when unset."}
    )
    height: Optional[int] = field(default=None, metadata={"help": "Image height (multiple of 8)."})
    width: Optional[int] = field(default=None, metadata={"help": "Image width (multiple of 8)."})
    num_frames: Optional[int] = field(
        default=None, metadata={"help": "Video families (wan): frames per video ((F - 1) % 4 == 0); None: 81."}
    )
    shift: Optional[float] = field(
        default=3.0,
        metadata={
            "help": "Time shift s of the flow-matching grid (paper: 3, fixed, no resolution-dependent mu). None: keep "
            "the model's own scheduler grid (e.g. FLUX dynamic shifting)."
        },
    )
    guidance_scale: float = field(
        default=3.5, metadata={"help": "FLUX: embedded guidance (no CFG); SD3/SD1.5: the CFG scale."}
    )
    max_sequence_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "T5 prompt tokens (FLUX, SD3); None: the model folder's sampling_defaults.json, else the "
            "pipeline's default (FLUX 512, SD3 256)."
        },
    )
    num_generations: int = field(default=12, metadata={"help": "G, images per prompt (group size)."})
    sample_prompts_per_device: int = field(default=1, metadata={"help": "Prompts per device per training step."})
    sample_same_noise: bool = field(
        default=True, metadata={"help": "Members of a group start from the same initial noise."}
    )
    sample_share_prefix: bool = field(
        default=True, metadata={"help": "Compute the pre-window ODE once per prompt, then branch into the group."}
    )
    sample_max_batch_size: Optional[int] = field(
        default=None, metadata={"help": "Largest batch per denoiser forward in rollouts; None: no cap."}
    )
    log_prob_reduction: Literal["mean", "sum"] = field(
        default="mean", metadata={"help": "Reduce per-element log-densities by 'mean' (reference) or 'sum'."}
    )
    cps_log_prob: Literal["gaussian", "flow_grpo"] = field(
        default="gaussian", metadata={"help": "CPS log-prob: 'gaussian' (true density) or 'flow_grpo' (-(x-mu)^2)."}
    )

    # Method: SDE and window
    sde_type: Optional[Literal["flow_grpo", "dance_grpo", "cps"]] = field(
        default=None, metadata={"help": "SDE in the window: 'flow_grpo', 'dance_grpo' or 'cps'; None: preset."}
    )
    eta: Optional[float] = field(default=None, metadata={"help": "SDE noise level; None: preset (0.7 / 0.3)."})
    window_size: Optional[int] = field(
        default=None, metadata={"help": "K, SDE (trained) steps; None: preset (4; DanceGRPO N - 1)."}
    )
    window_shift_interval: Optional[int] = field(
        default=None, metadata={"help": "tau, training steps between window moves; None: preset (25; Flash 20)."}
    )
    window_stride: Optional[int] = field(
        default=None, metadata={"help": "S, window move per shift (0 freezes it); None: preset (1; Flash* 0)."}
    )
    window_strategy: Literal["progressive", "random", "decay", "exp_decay"] = field(
        default="progressive", metadata={"help": "'progressive', 'random', 'decay' or 'exp_decay'."}
    )
    window_roll_back: bool = field(
        default=True, metadata={"help": "Past the max start, return the window to 0 (else stay)."}
    )
    window_max_start: Optional[int] = field(default=None, metadata={"help": "Highest window start; None: N - 2."})
    window_min_shift_interval: Optional[int] = field(
        default=None, metadata={"help": "'decay' only: interval at the last start; None: tau // 4."}
    )
    window_exp_decay_k: float = field(default=0.1, metadata={"help": "'exp_decay' only: decay rate k."})
    window_exp_decay_threshold: int = field(default=13, metadata={"help": "'exp_decay' only: start threshold."})
    tail_solver: Optional[Literal["euler", "dpmsolver++"]] = field(
        default=None, metadata={"help": "ODE solver after the window: 'euler' or 'dpmsolver++'; None: preset."}
    )
    tail_solver_order: int = field(default=2, metadata={"help": "DPM-Solver++ tail order (1 or 2)."})
    tail_ratio: Optional[float] = field(
        default=None, metadata={"help": "r, compression of the post-window steps; None: preset (Flash 0.4/0.2)."}
    )

    # GRPO objective
    train_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Rollouts per training micro-batch, per device; None: one micro-batch per rollout chunk."},
    )
    train_timestep_fraction: Optional[float] = field(
        default=None, metadata={"help": "Fraction of window steps trained per rollout; None: preset (1.0; 0.6)."}
    )
    num_inner_epochs: int = field(default=1, metadata={"help": "Update passes over each rollout batch."})
    clip_range: float = field(default=1e-4, metadata={"help": "epsilon of clip(ratio, 1 - eps, 1 + eps)."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "Advantages are clipped to [-max, max]."})
    adv_std: Literal["group", "global", "none"] = field(
        default="group", metadata={"help": "Advantage denominator: 'group', 'global' or 'none'."}
    )
    adv_trim: float = field(
        default=0.0, metadata={"help": "Fraction in [0, 0.5) trimmed at each end for the mean/std statistics."}
    )
    kl_type: Literal["none", "rollout", "reference"] = field(
        default="none", metadata={"help": "KL term: 'none', 'rollout' or 'reference'."}
    )
    kl_coeff: float = field(default=0.0, metadata={"help": "Weight of the KL term."})
    max_consecutive_bad_groups: int = field(
        default=5, metadata={"help": "Stop after this many consecutive groups with non-finite rewards."}
    )

    # Rewards
    rewards: Optional[Union[dict[str, float], str]] = field(
        default=None,
        metadata={"help": "Reward name -> weight: JSON object or 'hpsv2.1=1.0,pickscore=1.0'."},
    )
    reward_mix: Literal["advantage_aggr", "reward_aggr"] = field(
        default="advantage_aggr", metadata={"help": "'advantage_aggr' (paper) or 'reward_aggr'."}
    )
    reward_batch_size: int = field(default=8, metadata={"help": "Images per reward-model forward."})
    reward_kwargs: Optional[Union[dict[str, dict], str, list[str]]] = field(
        default=None,
        metadata={
            "help": "Options of each reward: name.option=value items (e.g. hpsv2.1.checkpoint=/m/hps.pt "
            "unifiedreward.base_url=http://host:8000/v1 unifiedreward.timeout=30) or a JSON object."
        },
    )
    reward_timeout: Optional[float] = field(
        default=None, metadata={"help": "Seconds one reward call may take before the run stops; None: no limit."}
    )
    reward_dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Dtype of the reward models: 'float32', 'bfloat16' or 'float16'."}
    )
    reward_device: Optional[str] = field(
        default=None,
        metadata={"help": "Device of the reward models, e.g. 'cpu', 'cuda', 'cuda:1'; None: the training device."},
    )

    # Optimisation
    optimizer: Literal["adamw", "adamw8bit"] = field(
        default="adamw", metadata={"help": "'adamw' or 'adamw8bit' (bitsandbytes)."}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    lr_scheduler: str = field(
        default="constant", metadata={"help": "diffusers.optimization.get_scheduler name, e.g. 'constant'."}
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimiser steps."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip."})
    gradient_accumulation_steps: int = field(default=3, metadata={"help": "Micro-batches per optimiser step."})
    max_train_steps: int = field(default=300, metadata={"help": "Training steps (GRPO iterations)."})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16'."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Gradient checkpointing in the denoiser."})
    allow_tf32: bool = field(default=True, metadata={"help": "Allow TF32 matmuls on Ampere+ GPUs."})
    seed: int = field(default=42, metadata={"help": "Seed of the run."})

    # Memory and scale-out
    cache_prompt_embeds: bool = field(
        default=False, metadata={"help": "Encode every prompt once at start-up; roll out from the cached rows."}
    )
    prompt_embeds_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Keep the cached prompt rows on disk here (reused by later runs)."}
    )
    offload_text_encoders: Literal["none", "cpu", "free"] = field(
        default="none",
        metadata={"help": "'none', 'cpu' (moved to the device per encode) or 'free' (needs the cache)."},
    )
    offload_vae: bool = field(default=False, metadata={"help": "VAE in CPU memory, on the device per decode."})
    vae_slicing: bool = field(default=False, metadata={"help": "Decode one image at a time."})
    vae_tiling: bool = field(default=False, metadata={"help": "Decode in blended tiles (large images)."})
    fsdp2: bool = field(default=False, metadata={"help": "Shard the denoiser with torch FSDP2 (fully_shard)."})
    fsdp2_reshard_after_forward: bool = field(
        default=True, metadata={"help": "FSDP2 full shard (ZeRO-3 like); False: ZeRO-2 like."}
    )
    fsdp2_cpu_offload: bool = field(default=False, metadata={"help": "FSDP2: shards and optimiser state on CPU."})
    overlap_rewards: bool = field(
        default=False, metadata={"help": "Score each rollout chunk while the next one is denoised."}
    )

    # LoRA and EMA
    use_lora: bool = field(default=True, metadata={"help": "Train LoRA adapters; False: full fine-tune."})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: Optional[list[str]] = field(
        default=None, metadata={"help": "Module-name suffixes to adapt; None: the model family's default."}
    )
    use_ema: bool = field(default=False, metadata={"help": "EMA of the trainable parameters."})
    ema_decay: float = field(default=0.9, metadata={"help": "EMA decay per update."})
    ema_update_interval: int = field(default=8, metadata={"help": "Optimiser steps between EMA updates."})

    # Prompts, logging and validation
    prompt_file: Optional[str] = field(default=None, metadata={"help": "Text file, one training prompt per line."})
    report_to: Optional[str] = field(
        default=None,
        metadata={"help": "'tensorboard', 'wandb', 'all', 'none' or a comma list; None: tensorboard if installed."},
    )
    tracker_project_name: str = field(default="mixgrpo", metadata={"help": "Tracker project name."})
    tracker_run_name: Optional[str] = field(
        default=None, metadata={"help": "Run name shown by wandb; None: the name of output_dir."}
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker directory, relative to output_dir."})
    logging_steps: int = field(default=1, metadata={"help": "Log scalars every this many training steps."})
    validation_steps: int = field(default=50, metadata={"help": "Log a sample grid every N steps (0: never)."})
    validation_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Held-out prompts of the periodic evaluation; None: validation_prompt_file, else the first "
            "4 training prompts (with a warning)."
        },
    )
    validation_prompt_file: Optional[str] = field(
        default=None, metadata={"help": "Text file, one held-out evaluation prompt per line."}
    )
    validation_images_per_prompt: int = field(
        default=2, metadata={"help": "Images per evaluation prompt, each from its own fixed seed."}
    )
    validation_seed: int = field(default=0, metadata={"help": "Seed of the evaluation noise (independent of seed)."})

    # Checkpointing
    checkpointing_steps: int = field(
        default=50, metadata={"help": "Save a checkpoint every N training steps (0: only at the end)."}
    )
    checkpoints_total_limit: Optional[int] = field(
        default=None, metadata={"help": "Keep at most this many checkpoints; None: all."}
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={
            "help": "'latest' or a checkpoint folder to resume from; the run's saved training_config.yaml "
            "supplies every value not given. None: a fresh run."
        },
    )
    preemption_snapshot: bool = field(
        default=True,
        metadata={
            "help": "Keep a CPU copy of the trained state at each iteration's start, so that SIGTERM/SIGINT stop at "
            "the next micro-batch and save that state (False: a signal after the first optimiser step of an "
            "iteration waits for its end)."
        },
    )

    # Hub
    push_to_hub: bool = field(default=False, metadata={"help": "Upload weights, config and model card to the Hub."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repo id; None: output_dir's name."})
    hub_private: Optional[bool] = field(
        default=None, metadata={"help": "Create the repo private; None: the Hub's default."}
    )
    hub_token: Optional[str] = field(
        default=None,
        repr=False,
        metadata={"help": "Hub token (prefer `hf auth login` or HF_TOKEN); never saved or logged."},
    )
    hub_base_model: Optional[str] = field(
        default=None, metadata={"help": "Hub id of the base model for the model card, when loaded from a folder."}
    )

    def __post_init__(self):
        self._normalize_types()
        self._apply_method_preset()
        self.rewards = parse_reward_weights(self.rewards)
        self.reward_kwargs = parse_reward_kwargs(self.reward_kwargs)
        if self.resolution is not None:
            if self.height is None:
                self.height = self.resolution
            if self.width is None:
                self.width = self.resolution
        if self.lora_target_modules is None and self.model_family is not None:
            self.lora_target_modules = default_lora_target_modules(self.model_family)
        if self.report_to is not None:
            self.report_to = self.report_to.strip().lower()
        self._validate()

    def _normalize_types(self) -> None:
        """Check every field against its declared type before anything else reads it.

        Strings that spell a boolean (`"no"`, `"true"`) become booleans; a string given for a list becomes a list
        (`validation_prompts: "a cat"` is one prompt, `lora_target_modules: "to_q,to_k"` two modules); a numeric
        string for a float field is read as a number (YAML reads `1e-4` without a dot as a string). Anything else
        of the wrong type fails with one sentence naming the field.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, optional = _field_kind(hints[f.name])
            if value is None:
                if optional or kind == "other":
                    continue
                raise ConfigError(f"{f.name}=None is not allowed; it needs a value.")
            if kind == "bool":
                if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS + _FALSE_STRINGS:
                    value = value.strip().lower() in _TRUE_STRINGS
                elif not isinstance(value, bool):
                    raise ConfigError(f"{f.name}={value!r} is not allowed; it must be true or false.")
            elif kind == "int":
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{f.name}={value!r} is not allowed; it must be an integer.")
            elif kind == "float":
                if isinstance(value, str):
                    try:
                        value = float(value)
                    except ValueError:
                        raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a number.") from None
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a number.")
                value = float(value)
            elif kind == "str":
                if not isinstance(value, str):
                    raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a string.")
            elif kind == "list":
                if isinstance(value, str):
                    value = [value] if f.name in _WHOLE_STRING_LISTS else [v.strip() for v in value.split(",")]
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise ConfigError(f"{f.name}={value!r} is not allowed; it must be a list of strings.")
                value = [v for v in value if v.strip()] if f.name not in _WHOLE_STRING_LISTS else list(value)
            setattr(self, f.name, value)

    def _apply_method_preset(self) -> None:
        if self.method not in METHOD_PRESETS:
            raise ConfigError(f"method={self.method!r} is not a known preset; allowed: {', '.join(METHODS)}.")
        for name, value in METHOD_PRESETS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.window_size is None:  # DanceGRPO: every trainable step is an SDE step
            self.window_size = max(1, self.num_inference_steps - 1)

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(message)

        def check_choice(name: str, allowed: Sequence[Any]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                fail(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}.")

        def check_int(name: str, low: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(f"{name}={value!r} is not allowed; it must be an integer >= {low}.")

        def check_float(name: str, low: float, high: float, low_open: bool, high_open: bool) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(f"{name}={value!r} is not allowed; it must be a finite number.")
            below = value <= low if low_open else value < low
            above = value >= high if high_open else value > high
            if below or above:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                fail(f"{name}={value!r} is not allowed; it must lie in {interval}.")

        inf = math.inf
        if self.model_family is not None:
            check_choice("model_family", MODEL_FAMILIES)
        check_choice("sde_type", SDE_TYPES)
        check_choice("window_strategy", WINDOW_STRATEGIES)
        check_choice("tail_solver", TAIL_SOLVERS)
        check_choice("log_prob_reduction", ("mean", "sum"))
        check_choice("cps_log_prob", ("gaussian", "flow_grpo"))
        check_choice("adv_std", ("group", "global", "none"))
        check_choice("kl_type", ("none", "rollout", "reference"))
        check_choice("reward_mix", ("advantage_aggr", "reward_aggr"))
        check_choice("optimizer", ("adamw", "adamw8bit"))
        check_choice("mixed_precision", ("no", "fp16", "bf16"))

        # Sampling
        check_int("num_inference_steps", 2)
        n = self.num_inference_steps
        for name in ("resolution", "height", "width"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8
            ):
                fail(f"{name}={value!r} is not allowed; it must be a positive multiple of 8.")
        if self.shift is not None:
            check_float("shift", 0.0, inf, True, True)
        check_float("guidance_scale", 0.0, inf, False, True)
        check_int("max_sequence_length", 1, allow_none=True)
        check_int("num_frames", 1, allow_none=True)
        check_int("num_generations", 2)
        check_int("sample_prompts_per_device", 1)
        check_int("sample_max_batch_size", 1, allow_none=True)
        if self.sample_share_prefix and not self.sample_same_noise:
            fail(
                "sample_share_prefix=True needs sample_same_noise=True (a group only shares its pre-window "
                "trajectory when its members start from the same noise); set one of them accordingly."
            )

        # Window and tail (a trained step is never the last one, so indices stop at N - 2)
        check_float("eta", 0.0, inf, True, True)
        if not (isinstance(self.window_size, int) and 1 <= self.window_size <= n - 1):
            fail(
                f"window_size={self.window_size!r} is not allowed; it must be an integer in "
                f"[1, num_inference_steps - 1] = [1, {n - 1}] (the last sampling step is never trained)."
            )
        check_int("window_shift_interval", 1)
        check_int("window_stride", 0)
        if self.window_max_start is not None and not (
            isinstance(self.window_max_start, int) and 0 <= self.window_max_start <= n - 2
        ):
            fail(
                f"window_max_start={self.window_max_start!r} is not allowed; it must lie in "
                f"[0, num_inference_steps - 2] = [0, {n - 2}]."
            )
        check_int("window_min_shift_interval", 1, allow_none=True)
        if self.window_min_shift_interval is not None and self.window_min_shift_interval > self.window_shift_interval:
            fail(
                f"window_min_shift_interval={self.window_min_shift_interval} is not allowed; it must be <= "
                f"window_shift_interval={self.window_shift_interval}."
            )
        check_float("window_exp_decay_k", 0.0, inf, False, True)
        check_int("window_exp_decay_threshold", 0)
        if self.tail_solver_order not in (1, 2):
            fail(f"tail_solver_order={self.tail_solver_order!r} is not allowed; choose 1 or 2.")
        if self.tail_ratio is not None:
            check_float("tail_ratio", 0.0, 1.0, True, False)

        # GRPO objective
        check_int("train_batch_size", 1, allow_none=True)
        check_float("train_timestep_fraction", 0.0, 1.0, True, False)
        check_int("num_inner_epochs", 1)
        check_float("clip_range", 0.0, inf, True, True)
        check_float("adv_clip_max", 0.0, inf, True, True)
        check_float("adv_trim", 0.0, 0.5, False, True)
        if self.num_generations - 2 * int(self.adv_trim * self.num_generations) < 2:
            fail(
                f"adv_trim={self.adv_trim} leaves fewer than 2 of num_generations={self.num_generations} rewards "
                f"per group for the statistics; lower adv_trim or raise num_generations."
            )
        check_float("kl_coeff", 0.0, inf, False, True)
        if self.kl_type == "none" and self.kl_coeff > 0:
            fail(
                f"kl_coeff={self.kl_coeff} has no effect with kl_type='none'; set kl_type to 'rollout' or "
                f"'reference', or kl_coeff to 0."
            )
        if self.kl_type == "reference" and not self.use_lora:
            fail(
                "kl_type='reference' needs use_lora=True (the reference policy is the base model with the LoRA "
                "switched off); use kl_type='rollout' for a full fine-tune."
            )
        if self.kl_type != "none" and self.kl_coeff == 0:
            logger.warning(
                "kl_type=%r with kl_coeff=0: the KL is computed and logged but not trained on.", self.kl_type
            )
        check_int("max_consecutive_bad_groups", 0)

        # Rewards
        check_int("reward_batch_size", 1)
        if self.reward_timeout is not None:
            check_float("reward_timeout", 0.0, inf, True, True)
        if self.reward_kwargs and self.rewards is not None:
            extra = sorted(set(self.reward_kwargs) - set(self.rewards))
            if extra:
                fail(
                    f"reward_kwargs names {', '.join(map(repr, extra))}, which is not among rewards "
                    f"({', '.join(map(repr, self.rewards))}); fix the name or add the reward."
                )
        if self.rewards is not None and not self.rewards:
            fail("rewards={} names no reward; give at least one name -> weight, or leave rewards unset.")
        check_choice("reward_dtype", REWARD_DTYPES)
        if self.reward_device is not None:
            self.reward_device = check_reward_device(self.reward_device)
        for name, options in (self.reward_kwargs or {}).items():
            for option, field_name in (("dtype", "reward_dtype"), ("device", "reward_device")):
                if option in options:
                    fail(
                        f"reward_kwargs[{name!r}] sets {option}={options[option]!r}; the {option} of the reward "
                        f"models is set for all of them by {field_name} (allowed: "
                        f"{', '.join(map(repr, REWARD_DTYPES)) if option == 'dtype' else _DEVICE_HELP})."
                    )

        # Optimisation
        check_float("learning_rate", 0.0, inf, True, True)
        check_float("adam_beta1", 0.0, 1.0, False, True)
        check_float("adam_beta2", 0.0, 1.0, False, True)
        check_float("adam_epsilon", 0.0, inf, True, True)
        check_float("weight_decay", 0.0, inf, False, True)
        from diffusers.optimization import SchedulerType

        schedulers = [s.value for s in SchedulerType]
        check_choice("lr_scheduler", schedulers)
        check_int("lr_warmup_steps", 0)
        check_float("max_grad_norm", 0.0, inf, True, True)
        check_int("gradient_accumulation_steps", 1)
        check_int("max_train_steps", 1)
        check_int("seed", 0)
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            fail("optimizer='adamw8bit' needs the bitsandbytes package; install it or use optimizer='adamw'.")

        # Memory and scale-out
        check_choice("offload_text_encoders", ("none", "cpu", "free"))
        if self.prompt_embeds_cache_dir is not None and not self.cache_prompt_embeds:
            fail(
                f"prompt_embeds_cache_dir={self.prompt_embeds_cache_dir!r} needs cache_prompt_embeds=True; set it, "
                f"or leave prompt_embeds_cache_dir unset."
            )
        if self.offload_text_encoders == "free" and not self.cache_prompt_embeds:
            fail(
                "offload_text_encoders='free' needs cache_prompt_embeds=True (the prompts must be encoded before "
                "the text encoders are deleted); set it, or use offload_text_encoders='cpu'."
            )
        if not self.fsdp2:
            if self.fsdp2_cpu_offload:
                fail(
                    "fsdp2_cpu_offload=True has no effect without fsdp2=True; set fsdp2=True or "
                    "fsdp2_cpu_offload=False."
                )
            if not self.fsdp2_reshard_after_forward:
                fail(
                    "fsdp2_reshard_after_forward=False has no effect without fsdp2=True; set fsdp2=True or leave "
                    "it True."
                )
        if self.fsdp2 and self.use_ema:
            fail("use_ema=True is not supported with fsdp2=True (sharded weights); set use_ema=False.")

        # LoRA / EMA
        check_int("lora_rank", 1)
        check_float("lora_alpha", 0.0, inf, True, True)
        check_float("lora_dropout", 0.0, 1.0, False, True)
        if self.lora_target_modules is not None and not self.lora_target_modules:
            fail("lora_target_modules=[] adapts nothing; list module-name suffixes or leave it unset.")
        check_float("ema_decay", 0.0, 1.0, False, True)
        check_int("ema_update_interval", 1)

        # Logging / checkpointing / hub
        for tracker in self.report_to_list():
            if tracker not in REPORT_TO:
                fail(f"report_to={self.report_to!r} names {tracker!r}; allowed: {', '.join(REPORT_TO)}.")
        if not self.output_dir.strip():
            fail("output_dir='' is not allowed; give the folder the run writes to.")
        check_int("logging_steps", 1)
        check_int("validation_steps", 0)
        check_int("validation_images_per_prompt", 1)
        check_int("validation_seed", 0)
        if self.validation_prompts is not None and self.validation_prompt_file is not None:
            fail(
                f"validation_prompts and validation_prompt_file={self.validation_prompt_file!r} are both set; give "
                f"the evaluation prompts one way (a list, or a file with one prompt per line)."
            )
        check_int("checkpointing_steps", 0)
        check_int("checkpoints_total_limit", 1, allow_none=True)
        if self.hub_model_id is not None and not self.hub_model_id.strip():
            fail("hub_model_id='' is not allowed; give a repository id such as 'user/flux-mixgrpo' or leave it unset.")

    # -- derived values --------------------------------------------------------------------------------------------

    def report_to_list(self) -> list[str]:
        """The trackers as a list (`report_to` split on commas). `None` stays unresolved: see `logging_utils`."""
        if self.report_to is None:
            return []
        return [t.strip() for t in self.report_to.split(",") if t.strip()]

    @property
    def rollouts_per_device(self) -> int:
        """Images generated per device per training step: `sample_prompts_per_device * num_generations`."""
        return self.sample_prompts_per_device * self.num_generations

    @property
    def train_micro_batches_per_iteration(self) -> int:
        """Training micro-batches per device and inner epoch: `ceil(rollouts_per_device / train_batch_size)`, or the
        number of rollout chunks when `train_batch_size` is `None` (a chunk holds whole groups of `num_generations`
        when they fit in `sample_max_batch_size`, else a group is split into chunks)."""
        n, g = self.rollouts_per_device, self.num_generations
        if self.train_batch_size is not None:
            return math.ceil(n / self.train_batch_size)
        per_chunk = self.sample_max_batch_size or n
        if g <= per_chunk:
            return math.ceil(self.sample_prompts_per_device / (per_chunk // g))
        return self.sample_prompts_per_device * math.ceil(g / per_chunk)

    @property
    def optimizer_steps_per_iteration(self) -> int:
        """Optimiser steps per training step (GRPO iteration) when no step is skipped: one per
        `gradient_accumulation_steps` micro-batches and one for a last, shorter group, per inner epoch (the official
        MixGRPO FLUX recipe: 12 / (1 x 3) = 4)."""
        return self.num_inner_epochs * math.ceil(
            self.train_micro_batches_per_iteration / self.gradient_accumulation_steps
        )

    @property
    def num_train_timesteps(self) -> int:
        """Window steps trained per rollout: `max(1, int(window_size * train_timestep_fraction))` (DanceGRPO: 14 of
        24 at N = 25)."""
        return max(1, int(self.window_size * self.train_timestep_fraction))

    def resolved_hub_model_id(self) -> str:
        """`hub_model_id`, or the name of `output_dir` when unset."""
        return self.hub_model_id or os.path.basename(os.path.normpath(self.output_dir))

    def sliding_window_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `SlidingWindowSchedule(**kwargs)`."""
        return {
            "num_inference_steps": self.num_inference_steps,
            "window_size": self.window_size,
            "shift_interval": self.window_shift_interval,
            "stride": self.window_stride,
            "strategy": self.window_strategy,
            "roll_back": self.window_roll_back,
            "max_start": self.window_max_start,
            "min_shift_interval": self.window_min_shift_interval,
            "exp_decay_k": self.window_exp_decay_k,
            "exp_decay_threshold": self.window_exp_decay_threshold,
            "seed": self.seed,
        }

    # -- (de)serialisation -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({items})"

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values, preset values resolved; secrets (`hub_token`, credential options in
        `reward_kwargs` such as `unifiedreward.api_key`) are left out."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in SECRET_FIELDS:
                continue
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
                if f.name == "reward_kwargs":  # an API key is used by the reward, never written
                    value = {k: {o: x for o, x in v.items() if not is_secret_option(o)} for k, v in value.items()}
            elif isinstance(value, list):
                value = list(value)
            out[f.name] = value
        return out

    def to_yaml(self, path: Optional[Union[str, os.PathLike]] = None) -> str:
        """The config as YAML (no secrets); written to `path` when given. `GRPOConfig.from_yaml` reads it back."""
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **overrides: Any) -> "GRPOConfig":
        """Build from a mapping (e.g. a loaded YAML); `overrides` win. Unknown keys fail with a suggestion."""
        merged = {**dict(values), **overrides}
        _check_known_keys(cls, merged)
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], **overrides: Any) -> "GRPOConfig":
        """Build from a YAML file of `field: value` pairs; `overrides` (keyword arguments) win over the file."""
        return cls.from_dict(_load_yaml(path), **overrides)


def _check_known_keys(cls: type, values: Mapping[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key!r} is not a {cls.__name__} field.{hint}")


def _load_yaml(path: Union[str, os.PathLike]) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{os.fspath(path)!r} must hold a mapping of field: value pairs, got {type(values).__name__}."
        )
    return values


def parse_args(
    argv: Optional[Sequence[str]] = None, dataclass_types: Sequence[type] = (GRPOConfig,)
) -> Union[GRPOConfig, tuple[Any, ...]]:
    """Parse `--config file.yaml` plus command-line flags into a `GRPOConfig` (flags override the YAML file).

    Like TRL's `TrlParser`: the YAML file gives values, the flags (default: `sys.argv[1:]`) override them, and
    `--help` lists every field. Extra dataclasses (e.g. a script's own arguments) may be given in `dataclass_types`;
    the YAML file may fill their fields too. Returns the `GRPOConfig` alone when it is the only dataclass, else a
    tuple in the order of `dataclass_types`. The parser itself lives in `training.arguments`.
    """
    import sys

    from .arguments import parse_command_line

    argv = list(sys.argv[1:] if argv is None else argv)
    given = parse_command_line(argv, dataclass_types).values
    objs = []
    for cls in dataclass_types:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        objs.append(cls(**{k: v for k, v in given.items() if k in names}))
    return objs[0] if len(objs) == 1 else tuple(objs)
