"""`GRPOConfig`: every knob of a MixGRPO / DanceGRPO training run, as a dataclass filled from Python, YAML or the CLI.

Modelled on TRL's `GRPOConfig`: one field per knob with its help, allowed values and range in `metadata`, grouped by
prefix (`sample_*`, `window_*`, `tail_*`, `adv_*`, `kl_*`, `reward_*`, `lora_*`, `ema_*`, `hub_*`), so the command line
(`training.arguments`) is built from the fields with no extra code. Optimiser and bookkeeping flags keep the names of
the diffusers training examples (`learning_rate`, `gradient_accumulation_steps`, `checkpointing_steps`, ...).

What lives elsewhere, one copy each: the method presets (`training.presets`), the allowed values of the choice fields
(`training.choices`), the parsing of the reward fields (`training.reward_spec`), and how a value is read from YAML or
the command line and checked against its field's metadata (`training.fields`).
"""

import dataclasses
import importlib.util
import logging
import math
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..pipelines.families.registry import MODEL_FAMILIES, default_lora_target_modules
from .choices import (
    ADV_STDS,
    CPS_LOG_PROBS,
    KL_TYPES,
    LOG_PROB_REDUCTIONS,
    MIXED_PRECISIONS,
    OPTIMIZERS,
    REPORT_TO,
    REWARD_DTYPES,
    REWARD_MIXES,
    SDE_TYPES,
    TAIL_SOLVERS,
    TEXT_ENCODER_OFFLOADS,
    WINDOW_STRATEGIES,
    lr_scheduler_names,
)
from .errors import ConfigError
from .fields import check_known_keys, check_value, coerce_value, load_yaml_values
from .presets import METHODS, apply_method_preset
from .reward_spec import (
    check_reward_device,
    check_reward_options,
    is_secret_option,
    parse_reward_kwargs,
    parse_reward_weights,
)

logger = logging.getLogger(__name__)


#: Validation prompts taken from the training prompts when `validation_prompts` is unset.
DEFAULT_NUM_VALIDATION_PROMPTS = 4


@dataclass
class GRPOConfig:
    r"""
    Configuration of a GRPO training run for diffusers image models with MixGRPO's sliding ODE-SDE window.

    Each field documents itself in `metadata["help"]` (shown by `--help`, grouped in sections: model and output,
    sampling, method, GRPO objective, rewards, optimisation, memory and scale-out, LoRA and EMA, prompts / logging /
    validation, checkpointing, Hub); `metadata["choices"]` and `metadata["range"]` say which values it takes.

    The `method` field picks a preset (MixGRPO, MixGRPO-Flash, MixGRPO-Flash*, DanceGRPO; see
    `training.presets.METHOD_PRESETS`). Preset-controlled fields default to `None`, which means "take the preset's
    value"; any value given explicitly (in Python, YAML or on the command line) wins. Fill it in Python
    (`GRPOConfig(method="flash", ...)`), from a YAML file (`GRPOConfig.from_yaml("config.yaml", learning_rate=2e-5)`)
    or from the command line (`parse_args(["--config", "config.yaml", "--learning_rate", "2e-5"])`).

    One *training step* is one GRPO iteration: a rollout phase (prompts x `num_generations` images, rewards,
    advantages) followed by its policy updates. `max_train_steps`, the window schedule, `logging_steps`,
    `validation_steps` and `checkpointing_steps` all count training steps.
    """

    pretrained_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "group": "Model and output",
            "help": "Hub id or local path of the diffusers pipeline to fine-tune (FLUX.1, SD3, SD1.5, Qwen-Image, "
            "FLUX.2 [dev] / [klein] or Z-Image). May be left unset when a pipeline object is handed to the "
            "trainer.",
        },
    )
    revision: Optional[str] = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the pretrained pipeline."}
    )
    variant: Optional[str] = field(default=None, metadata={"help": "Weights variant to load (e.g. `'fp16'`)."})
    model_family: Optional[str] = field(
        default=None,
        metadata={
            "help": "The model family (one of `MODEL_FAMILIES`). `None`: inferred from the pipeline class by the "
            "trainer. Selects the default `lora_target_modules`.",
            "choices": MODEL_FAMILIES,
        },
    )
    output_dir: str = field(
        default="mixgrpo-output",
        metadata={
            "help": "Where checkpoints, logs, the final LoRA weights and the model card are written.",
            "if_empty": "is not allowed; give the folder the run writes to",
        },
    )
    method: str = field(
        default="mixgrpo",
        metadata={
            "help": "Preset: `'mixgrpo'` (window K = 4, tau = 25, Euler ODE outside the window), `'flash'` (tau = 20, "
            "DPM-Solver++ tail compressed with r = 0.4), `'flash_star'` (Flash with r = 0.2 and the window "
            "frozen at the start, stride 0) or `'dancegrpo'` (every step SDE with the DanceGRPO SDE, eta 0.3, "
            "a random 60% of the steps trained). Explicit field values win over the preset.",
            "choices": METHODS,
        },
    )
    num_inference_steps: int = field(
        default=25,
        metadata={
            "group": "Sampling (rollouts)",
            "help": "N, the number of sampling steps of a rollout (uncompressed grid).",
            "range": "[2, inf)",
        },
    )
    resolution: Optional[int] = field(
        default=None,
        metadata={
            "help": "Square image side; fills `height` and `width` when they are unset. `None`: the pipeline's "
            "default.",
            "multiple_of": 8,
        },
    )
    height: Optional[int] = field(
        default=None,
        metadata={"help": "Image height in pixels (a multiple of 8; FLUX needs a multiple of 16).", "multiple_of": 8},
    )
    width: Optional[int] = field(
        default=None,
        metadata={"help": "Image width in pixels (a multiple of 8; FLUX needs a multiple of 16).", "multiple_of": 8},
    )
    num_frames: Optional[int] = field(
        default=None,
        metadata={
            "help": "Video families (Wan) only: frames per video, `num_frames - 1` a multiple of 4. `None`: the "
            "family's default (Wan: 81).",
            "range": "[1, inf)",
        },
    )
    shift: Optional[float] = field(
        default=3.0,
        metadata={
            "help": "Time shift s of the flow-matching grid, `sigma = s*u / (1 + (s - 1)*u)` (SANA / Wan: their "
            "`flow_shift`). Paper: 3, fixed, no resolution-dependent mu. `None`: keep the model's own "
            "scheduler grid (e.g. FLUX dynamic shifting).",
            "range": "(0, inf)",
        },
    )
    guidance_scale: float = field(
        default=3.5,
        metadata={
            "help": "FLUX.1-dev: the embedded guidance value (no CFG, one forward per step). SD3 / SD1.5: the "
            "classifier-free guidance scale (two forwards per step when > 1).",
            "range": "[0, inf)",
        },
    )
    max_sequence_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Text tokens of the T5 prompt encoder (FLUX, SD3). `None`: the model folder's "
            "`sampling_defaults.json` when it has one, else the pipeline's default (FLUX 512, SD3 256). A "
            "model trained on short prompts needs its own length: longer padding is input it never saw.",
            "range": "[1, inf)",
        },
    )
    num_generations: int = field(
        default=12,
        metadata={
            "help": "G, the group size: images generated per prompt, normalised against each other.",
            "range": "[2, inf)",
        },
    )
    sample_prompts_per_device: int = field(
        default=1,
        metadata={
            "help": "Prompts per device per training step; each device generates `sample_prompts_per_device * "
            "num_generations` images per step.",
            "range": "[1, inf)",
        },
    )
    sample_same_noise: bool = field(
        default=True,
        metadata={"help": "The members of a group start from the same initial noise (the reference default)."},
    )
    sample_share_prefix: bool = field(
        default=True,
        metadata={
            "help": "Compute the deterministic pre-window ODE trajectory once per prompt and branch into the group at "
            "the window (needs `sample_same_noise`). Same result, fewer forwards."
        },
    )
    sample_max_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "Largest batch of images per denoiser forward during rollouts (memory cap). `None`: no cap.",
            "range": "[1, inf)",
        },
    )
    log_prob_reduction: str = field(
        default="mean",
        metadata={
            "help": "How a step's per-element Gaussian log-density is reduced over the non-batch dimensions: `'mean'` "
            "(the reference implementations) or `'sum'` (the true log-density).",
            "choices": LOG_PROB_REDUCTIONS,
        },
    )
    cps_log_prob: str = field(
        default="gaussian",
        metadata={
            "help": "Log-prob of the `'cps'` SDE: `'gaussian'` (the true density, as every other SDE type; every "
            "preset) or `'flow_grpo'` (Flow-GRPO's and the official MixGRPO code's `-(x - mu)^2`, which scales "
            "each step's log-ratio by `2 tau^2`; `examples/configs/flux_mixgrpo_cps.yaml`). See "
            "docs/schedulers.md.",
            "choices": CPS_LOG_PROBS,
        },
    )
    sde_type: Optional[str] = field(
        default=None,
        metadata={
            "group": "Method: SDE and window (preset-controlled when None)",
            "help": "SDE used inside the window: `'flow_grpo'`, `'dance_grpo'` or `'cps'`. Preset: flow_grpo "
            "(dance_grpo for DanceGRPO).",
            "choices": SDE_TYPES,
        },
    )
    eta: Optional[float] = field(
        default=None,
        metadata={"help": "Noise level of the SDE. Preset: 0.7 (0.3 for DanceGRPO).", "range": "(0, inf)"},
    )
    window_size: Optional[int] = field(
        default=None,
        metadata={"help": "K, consecutive SDE (trained) steps. Preset: 4 (DanceGRPO: N - 1, every trainable step)."},
    )
    window_shift_interval: Optional[int] = field(
        default=None,
        metadata={
            "help": "tau, training steps between two window moves. Preset: 25 (20 for Flash and Flash*).",
            "range": "[1, inf)",
        },
    )
    window_stride: Optional[int] = field(
        default=None,
        metadata={
            "help": "S, steps the window moves at each shift; 0 freezes it at the start. Preset: 1 (0 for Flash* and "
            "DanceGRPO).",
            "range": "[0, inf)",
        },
    )
    window_strategy: str = field(
        default="progressive",
        metadata={
            "help": "`'progressive'` (the paper), `'random'`, `'decay'` or `'exp_decay'`; see `SlidingWindowSchedule`.",
            "choices": WINDOW_STRATEGIES,
        },
    )
    window_roll_back: bool = field(
        default=True,
        metadata={"help": "Past `window_max_start` the window returns to 0 (`True`) or stays there (`False`)."},
    )
    window_max_start: Optional[int] = field(
        default=None, metadata={"help": "Highest window start. `None`: N - 2, the last trainable step."}
    )
    window_min_shift_interval: Optional[int] = field(
        default=None,
        metadata={
            "help": "`'decay'` only: the interval at the last start. `None`: `max(1, window_shift_interval // 4)`.",
            "range": "[1, inf)",
        },
    )
    window_exp_decay_k: float = field(
        default=0.1,
        metadata={
            "help": "`'exp_decay'` only: the decay rate k in `tau * exp(-k * max(0, w - w_thr))`.",
            "range": "[0, inf)",
        },
    )
    window_exp_decay_threshold: int = field(
        default=13, metadata={"help": "`'exp_decay'` only: w_thr.", "range": "[0, inf)"}
    )
    tail_solver: Optional[str] = field(
        default=None,
        metadata={
            "help": "Solver of the ODE steps after the window: `'euler'` or `'dpmsolver++'`. Preset: euler "
            "(dpmsolver++ for Flash and Flash*).",
            "choices": TAIL_SOLVERS,
        },
    )
    tail_solver_order: int = field(
        default=2, metadata={"help": "Order of the DPM-Solver++ tail (1 or 2).", "choices": (1, 2)}
    )
    tail_ratio: Optional[float] = field(
        default=None,
        metadata={
            "help": "r, compression of the steps after the window: `floor(max((N - e)*r, 1))` grid points. `None`: no "
            "compression. Preset: None (0.4 for Flash, 0.2 for Flash*).",
            "range": "(0, 1]",
        },
    )
    train_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "group": "GRPO objective",
            "help": "Rollouts per forward/backward of the training pass (the training micro-batch), per device, "
            "independent of the rollout chunk `sample_max_batch_size`. An iteration takes "
            "`ceil(ceil(rollouts_per_device / train_batch_size) / gradient_accumulation_steps)` optimiser "
            "steps per inner epoch (`optimizer_steps_per_iteration`): the official MixGRPO recipe, 12 rollouts "
            "per GPU in micro-batches of 1 with accumulation 3, takes 4. `None`: one micro-batch per rollout "
            "chunk, which sees the denoiser with the rollout's batch composition, so the first ratio is "
            "exactly 1 in float32 (a different micro-batch size leaves it 1 up to float rounding).",
            "range": "[1, inf)",
        },
    )
    train_timestep_fraction: Optional[float] = field(
        default=None,
        metadata={
            "help": "Fraction of the window's steps trained per rollout, drawn at random (DanceGRPO). Preset: 1.0 (0.6 "
            "for DanceGRPO).",
            "range": "(0, 1]",
        },
    )
    num_inner_epochs: int = field(
        default=1, metadata={"help": "Passes of policy updates over each rollout batch.", "range": "[1, inf)"}
    )
    clip_range: float = field(
        default=1e-4,
        metadata={"help": "epsilon of the clipped ratio, `clip(ratio, 1 - eps, 1 + eps)`.", "range": "(0, inf)"},
    )
    adv_clip_max: float = field(
        default=5.0,
        metadata={"help": "Advantages are clipped to `[-adv_clip_max, adv_clip_max]`.", "range": "(0, inf)"},
    )
    adv_std: str = field(
        default="group",
        metadata={
            "help": "Advantage denominator: the group's std (`'group'`), the std of all rewards of the step "
            "(`'global'`), or none (`'none'`, mean-centred only).",
            "choices": ADV_STDS,
        },
    )
    adv_trim: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 0.5) of the lowest and of the highest rewards left out of the mean/std "
            "statistics.",
            "range": "[0, 0.5)",
        },
    )
    kl_type: str = field(
        default="none",
        metadata={
            "help": "KL regulariser: `'none'`, `'rollout'` (`0.5 * mean(dlogp^2)` against the rollout policy) or "
            "`'reference'` (Flow-GRPO's closed form against the base model, LoRA disabled).",
            "choices": KL_TYPES,
        },
    )
    kl_coeff: float = field(default=0.0, metadata={"help": "Weight of the KL term.", "range": "[0, inf)"})
    max_consecutive_bad_groups: int = field(
        default=5,
        metadata={
            "help": "Groups with a non-finite reward are dropped from the update with a warning; training stops with "
            "an error after this many consecutive bad groups (0: at the first).",
            "range": "[0, inf)",
        },
    )
    rewards: Optional[Union[dict[str, float], str]] = field(
        default=None,
        metadata={
            "group": "Rewards",
            "help": 'Registered reward name -> weight, e.g. `{"hpsv2.1": 1.0, "pickscore": 1.0}`. On the command line: '
            "a JSON object or `'hpsv2.1=1.0,pickscore=1.0'`. `None`: reward functions are handed to the "
            "trainer.",
        },
    )
    reward_mix: str = field(
        default="advantage_aggr",
        metadata={
            "help": "`'advantage_aggr'` (one advantage per reward, then their weighted mean; the paper) or "
            "`'reward_aggr'` (the weighted sum of the rewards, then one advantage). See "
            "`training.advantages.compute_advantages`.",
            "choices": REWARD_MIXES,
        },
    )
    reward_batch_size: int = field(
        default=8, metadata={"help": "Images per reward-model forward.", "range": "[1, inf)"}
    )
    reward_kwargs: Optional[Union[dict[str, dict], str, list[str]]] = field(
        default=None,
        metadata={
            "help": "Options of each reward, `{name: {option: value}}`: local weights (`hpsv2.1: {checkpoint: "
            "/m/hps.pt}`), the UnifiedReward server (`unifiedreward: {base_url: ..., timeout: 30, max_retries: "
            "2}`), ... On the command line: `name.option=value` items or a JSON object. See docs/rewards.md "
            "for each reward's options. Credentials (`unifiedreward.api_key`, any option named like a key, "
            "token or password) are used but never saved (run config, checkpoints, Hub, trackers): on resume "
            "give them again, or use the environment (`UNIFIEDREWARD_API_KEY`)."
        },
    )
    reward_timeout: Optional[float] = field(
        default=None,
        metadata={
            "help": "Seconds one call of a reward may take; a slower (hung) reward stops the run with its name. "
            "`None`: no limit.",
            "range": "(0, inf)",
        },
    )
    reward_dtype: str = field(
        default="float32",
        metadata={
            "help": "Weights and compute dtype of the registered reward models: `'float32'`, `'bfloat16'` (half the "
            "memory; see BENCHMARKS.md for the score difference) or `'float16'`. Scores are float32 whatever "
            "the dtype. Reward callables handed to the trainer are used as they are.",
            "choices": REWARD_DTYPES,
        },
    )
    reward_device: Optional[str] = field(
        default=None,
        metadata={
            "help": "Where the registered reward models live and run: `'cpu'`, `'cuda'` (the process's current GPU), "
            "`'cuda:1'`, ... `None`: the process's training device. Scores come back to the training device "
            "either way."
        },
    )
    optimizer: str = field(
        default="adamw",
        metadata={
            "group": "Optimisation",
            "help": "`'adamw'` (torch) or `'adamw8bit'` (bitsandbytes).",
            "choices": OPTIMIZERS,
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate.", "range": "(0, inf)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1.", "range": "[0, 1)"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2.", "range": "[0, 1)"})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon.", "range": "(0, inf)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW decoupled weight decay.", "range": "[0, inf)"})
    lr_scheduler: str = field(
        default="constant",
        metadata={
            "help": "A `diffusers.optimization.get_scheduler` name (`'constant'`, `'constant_with_warmup'`, "
            "`'linear'`, `'cosine'`, ...).",
            "choices": lr_scheduler_names,
        },
    )
    lr_warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimiser steps.", "range": "[0, inf)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clip.", "range": "(0, inf)"})
    gradient_accumulation_steps: int = field(
        default=3, metadata={"help": "Micro-batches accumulated per optimiser step.", "range": "[1, inf)"}
    )
    max_train_steps: int = field(
        default=300, metadata={"help": "Training steps (GRPO iterations) to run.", "range": "[1, inf)"}
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "`'no'`, `'fp16'` or `'bf16'` (the paper: bf16).", "choices": MIXED_PRECISIONS}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass of the denoiser (the paper: on)."}
    )
    allow_tf32: bool = field(
        default=True,
        metadata={
            "help": "TF32 matmuls and cuDNN convolutions on Ampere+ GPUs: sets `torch.backends.cuda.matmul.allow_tf32` "
            "and `torch.backends.cudnn.allow_tf32` when the trainer starts on CUDA (`False` turns both off)."
        },
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of the run (initial noise, window schedule, data order).", "range": "[0, inf)"},
    )
    cache_prompt_embeds: bool = field(
        default=False,
        metadata={
            "group": "Memory and scale-out",
            "help": "Encode every training and evaluation prompt once at start-up (`PromptEmbedsCache`, a progress "
            "bar) and roll out from the cached rows; the text encoders then never run during training.",
        },
    )
    prompt_embeds_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Keep the cached rows on disk there (read lazily, for datasets whose conditioning does not fit in "
            "memory) and reuse them in later runs with the same prompts and text encoders. `None`: CPU memory. "
            "Needs `cache_prompt_embeds=True`."
        },
    )
    offload_text_encoders: str = field(
        default="none",
        metadata={
            "help": "`'none'` (on the device), `'cpu'` (in CPU memory, moved to the device for each encode) or "
            "`'free'` (deleted once the prompts are cached; needs `cache_prompt_embeds=True`).",
            "choices": TEXT_ENCODER_OFFLOADS,
        },
    )
    offload_vae: bool = field(
        default=False, metadata={"help": "Keep the VAE in CPU memory and move it to the device for each decode."}
    )
    vae_slicing: bool = field(
        default=False,
        metadata={"help": "Decode a rollout chunk one image at a time (the same images; peak memory of one decode)."},
    )
    vae_tiling: bool = field(
        default=False,
        metadata={"help": "Decode in blended tiles (1024 px and up; images differ slightly from a full decode)."},
    )
    fsdp2: bool = field(
        default=False,
        metadata={
            "help": "Shard the denoiser with torch's FSDP2 (`fully_shard` per transformer block) under the trainer; "
            'runs on GPUs and on the CPU (gloo). See docs/training.md, "Scaling out".'
        },
    )
    fsdp2_reshard_after_forward: bool = field(
        default=True,
        metadata={
            "help": "FSDP2: free a block's gathered weights after its forward (full shard, like ZeRO-3); `False`: keep "
            "them until the backward (like ZeRO-2: faster, more memory)."
        },
    )
    fsdp2_cpu_offload: bool = field(
        default=False, metadata={"help": "FSDP2: keep the shards, gradients and optimiser state in CPU memory."}
    )
    overlap_rewards: bool = field(
        default=False,
        metadata={
            "help": "Score each rollout chunk in a thread while the next chunk is denoised (the same samples and "
            "scores)."
        },
    )
    use_lora: bool = field(
        default=True,
        metadata={
            "group": "LoRA and EMA",
            "help": "Train LoRA adapters (peft); `False` fine-tunes the whole denoiser.",
        },
    )
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank r.", "range": "[1, inf)"})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA alpha (scale alpha / r).", "range": "(0, inf)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA branch.", "range": "[0, 1)"})
    lora_target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Module-name suffixes to adapt. `None`: the family's default targets (`pipelines.families.registry`).",
            "if_empty": "adapts nothing; list module-name suffixes or leave it unset",
        },
    )
    use_ema: bool = field(
        default=False,
        metadata={
            "help": "Keep an exponential moving average of the trainable parameters (used for validation and the final "
            "save)."
        },
    )
    ema_decay: float = field(
        default=0.9, metadata={"help": "EMA decay per update (Flow-GRPO: 0.9).", "range": "[0, 1)"}
    )
    ema_update_interval: int = field(
        default=8, metadata={"help": "Optimiser steps between EMA updates (Flow-GRPO: 8).", "range": "[1, inf)"}
    )
    prompt_file: Optional[str] = field(
        default=None,
        metadata={
            "group": "Prompts, logging and validation",
            "help": "Text file with one training prompt per line (or hand prompts to the trainer).",
        },
    )
    report_to: Optional[str] = field(
        default=None,
        metadata={
            "help": "Trackers: `'tensorboard'`, `'wandb'`, `'all'`, `'none'` or a comma-separated list. `None`: "
            "tensorboard if installed, else none."
        },
    )
    tracker_project_name: str = field(default="mixgrpo", metadata={"help": "Project name given to the trackers."})
    tracker_run_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "Name of the wandb run. `None`: the name of `output_dir`. The run's wandb id is kept in "
            "`output_dir/wandb_run_id.txt`, so a resumed run logs into the same wandb run."
        },
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker directory, relative to `output_dir`."})
    logging_steps: int = field(
        default=1, metadata={"help": "Log scalars every this many training steps.", "range": "[1, inf)"}
    )
    validation_steps: int = field(
        default=50,
        metadata={
            "help": "Log a grid of sample images every this many training steps (0: never).",
            "range": "[0, inf)",
        },
    )
    validation_prompts: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Held-out prompts of the periodic evaluation (ODE samples, `eval/reward`, a per-prompt table, an "
            'image grid; see docs/training.md, "Evaluation"). A single string is one prompt. Give this or '
            "`validation_prompt_file`, not both. Neither: the first `DEFAULT_NUM_VALIDATION_PROMPTS` (4) "
            "training prompts, with a warning (scores on training prompts measure fit, not generalisation).",
            "whole_string": True,
        },
    )
    validation_prompt_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Text file with one held-out evaluation prompt per line (blank lines ignored), read before the "
            "model loads: a missing or empty file stops the run with its path."
        },
    )
    validation_images_per_prompt: int = field(
        default=2,
        metadata={
            "help": "Images per evaluation prompt. Image `j` of prompt `i` starts from the noise of seed "
            "`evaluation.eval_seed(validation_seed, i, j)`, so an evaluation is the same in every run, at "
            "every step and for any number of processes (the prompt x image work is split across the processes "
            "and gathered).",
            "range": "[1, inf)",
        },
    )
    validation_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the evaluation noise; independent of `seed`, so runs with other training seeds are scored "
            "on the same noise.",
            "range": "[0, inf)",
        },
    )
    checkpointing_steps: int = field(
        default=50,
        metadata={
            "group": "Checkpointing",
            "help": "Save a resumable checkpoint every this many training steps (0: only at the end).",
            "range": "[0, inf)",
        },
    )
    checkpoints_total_limit: Optional[int] = field(
        default=None,
        metadata={
            "help": "Keep at most this many checkpoints (oldest deleted first). `None`: keep all.",
            "range": "[1, inf)",
        },
    )
    resume_from_checkpoint: Optional[str] = field(
        default=None,
        metadata={
            "help": "`'latest'` (the newest complete checkpoint of `output_dir`; a fresh start when there is none) or "
            "a checkpoint folder. `None`: a fresh run (the trainer never resumes on its own). The run's saved "
            "`training_config.yaml` supplies every value not given."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a fresh run in an `output_dir` that already holds a run (its checkpoints, or the final "
            "weights / `training_summary.json` of a finished run), replacing what it wrote. `False`: such a folder "
            "is refused before the model loads (resume it with `resume_from_checkpoint`, or choose another "
            "folder). Never inherited by a resume."
        },
    )
    preemption_snapshot: bool = field(
        default=True,
        metadata={
            "help": "Keep a CPU copy of the trained weights and optimiser state at the start of each iteration's "
            "update, so that SIGTERM / SIGINT stop at the next micro-batch and save the state of the "
            'iteration\'s start (bounded time: see `docs/training.md`, "Pre-emption"). Costs that copy in CPU '
            "memory (a LoRA: small; a full fine-tune: 3x the model in float32, per rank its shard). `False`: a "
            "signal stops at once only before the iteration's first optimiser step, else at the end of the "
            "iteration."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"group": "Hub", "help": "Upload the final weights, the config and a model card to the Hub."},
    )
    hub_model_id: Optional[str] = field(
        default=None,
        metadata={
            "help": "Repository id. `None`: the name of `output_dir`.",
            "if_empty": "is not allowed; give a repository id such as 'user/flux-mixgrpo' or leave it unset",
        },
    )
    hub_private: Optional[bool] = field(
        default=None,
        metadata={"help": "Create the repository private. `None`: the Hub's default for your account/organisation."},
    )
    hub_token: Optional[str] = field(
        default=None,
        repr=False,
        metadata={
            "help": "Token for the Hub. Prefer `hf auth login` or the `HF_TOKEN` environment variable. Never saved, "
            "logged or shown.",
            "secret": True,
        },
    )
    hub_base_model: Optional[str] = field(
        default=None,
        metadata={
            "help": "Hub id of the base model, for the model card, when `pretrained_model_name_or_path` is a local "
            "folder. `None`: the Hub id when the model was loaded by id (or from the Hugging Face cache), else "
            "none."
        },
    )

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # every value as its field's type, before anything reads it
            setattr(self, f.name, coerce_value(f, getattr(self, f.name), hints[f.name]))
        apply_method_preset(self)
        self.rewards = parse_reward_weights(self.rewards)
        self.reward_kwargs = parse_reward_kwargs(self.reward_kwargs)
        if self.report_to is not None:
            self.report_to = self.report_to.strip().lower()
        for f in dataclasses.fields(self):  # choices, ranges, ... as the field's metadata declares them
            check_value(f.name, getattr(self, f.name), f.metadata)
        if self.resolution is not None:
            self.height = self.resolution if self.height is None else self.height
            self.width = self.resolution if self.width is None else self.width
        if self.lora_target_modules is None and self.model_family is not None:
            self.lora_target_modules = default_lora_target_modules(self.model_family)
        if self.reward_device is not None:
            self.reward_device = check_reward_device(self.reward_device)
        check_reward_options(self.rewards, self.reward_kwargs)
        self._check_combinations()

    def _check_combinations(self) -> None:
        """The rules that tie several fields together; each failure names the values and how to fix them."""

        def fail(message: str) -> None:
            raise ConfigError(message)

        n = self.num_inference_steps  # a trained step is never the last one, so window indices stop at N - 2
        if self.sample_share_prefix and not self.sample_same_noise:
            fail(
                "sample_share_prefix=True needs sample_same_noise=True (a group only shares its pre-window "
                "trajectory when its members start from the same noise); set one of them accordingly."
            )
        if not 1 <= self.window_size <= n - 1:
            fail(
                f"window_size={self.window_size!r} is not allowed; it must be an integer in "
                f"[1, num_inference_steps - 1] = [1, {n - 1}] (the last sampling step is never trained)."
            )
        if self.window_max_start is not None and not 0 <= self.window_max_start <= n - 2:
            fail(
                f"window_max_start={self.window_max_start!r} is not allowed; it must lie in "
                f"[0, num_inference_steps - 2] = [0, {n - 2}]."
            )
        if self.window_min_shift_interval is not None and self.window_min_shift_interval > self.window_shift_interval:
            fail(
                f"window_min_shift_interval={self.window_min_shift_interval} is not allowed; it must be <= "
                f"window_shift_interval={self.window_shift_interval}."
            )
        if self.num_generations - 2 * int(self.adv_trim * self.num_generations) < 2:
            fail(
                f"adv_trim={self.adv_trim} leaves fewer than 2 of num_generations={self.num_generations} rewards "
                f"per group for the statistics; lower adv_trim or raise num_generations."
            )
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
        if self.optimizer == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
            fail("optimizer='adamw8bit' needs the bitsandbytes package; install it or use optimizer='adamw'.")
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
        if not self.fsdp2 and self.fsdp2_cpu_offload:
            fail("fsdp2_cpu_offload=True has no effect without fsdp2=True; set fsdp2=True or fsdp2_cpu_offload=False.")
        if not self.fsdp2 and not self.fsdp2_reshard_after_forward:
            fail(
                "fsdp2_reshard_after_forward=False has no effect without fsdp2=True; set fsdp2=True or leave it True."
            )
        if self.fsdp2 and self.use_ema:
            fail("use_ema=True is not supported with fsdp2=True (sharded weights); set use_ema=False.")
        for tracker in self.report_to_list():
            if tracker not in REPORT_TO:
                fail(f"report_to={self.report_to!r} names {tracker!r}; allowed: {', '.join(REPORT_TO)}.")
        if self.validation_prompts is not None and self.validation_prompt_file is not None:
            fail(
                f"validation_prompts and validation_prompt_file={self.validation_prompt_file!r} are both set; give "
                f"the evaluation prompts one way (a list, or a file with one prompt per line)."
            )

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
            if f.metadata.get("secret"):
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
        check_known_keys(merged, (cls,))
        return cls(**merged)

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike], **overrides: Any) -> "GRPOConfig":
        """Build from a YAML file of `field: value` pairs; `overrides` (keyword arguments) win over the file."""
        return cls.from_dict(load_yaml_values(path, (cls,)), **overrides)


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
