"""`GRPOConfig`: every knob of a MixGRPO / DanceGRPO training run, as a dataclass filled from Python, YAML or the CLI.

Modelled on TRL's `GRPOConfig`: one field per knob with its help, allowed values and range in `metadata`, grouped by
prefix (`sample_*`, `window_*`, `tail_*`, `adv_*`, `kl_*`, `reward_*`, `lora_*`, `ema_*`), so the command line
(`training.arguments`) is built from the fields with no extra code. As TRL's config extends transformers'
`TrainingArguments`, this one extends `training.run_arguments.RunArguments`, which holds the fields of any training
run (output, optimiser, memory and scale-out, logging and validation, checkpointing, Hub) and the YAML / dict I/O.

What lives elsewhere, one copy each: the method presets (`training.presets`), the allowed values of the choice fields
(`training.choices`), the parsing of the reward fields (`training.reward_spec`), and how a value is read from YAML or
the command line and checked against its field's metadata (`training.fields`).
"""

import dataclasses
import logging
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..pipelines.families.registry import MODEL_FAMILIES, default_lora_target_modules
from .choices import (
    ADV_STDS,
    CPS_LOG_PROBS,
    KL_TYPES,
    LOG_PROB_REDUCTIONS,
    REWARD_DTYPES,
    REWARD_MIXES,
    SDE_STEP_LAYOUTS,
    SDE_TYPES,
    TAIL_SOLVERS,
    WINDOW_STRATEGIES,
)
from .errors import ConfigError
from .fields import check_value, coerce_value
from .presets import METHODS, apply_method_preset
from .reward_spec import (
    check_reward_device,
    check_reward_options,
    check_reward_weights,
    parse_monitor_rewards,
    parse_reward_kwargs,
    parse_reward_weights,
)
from .run_arguments import DEFAULT_NUM_VALIDATION_PROMPTS, RunArguments
from .setting_ranges import check_setting_ranges
from .step_selection import check_step_selection

__all__ = ["DEFAULT_NUM_VALIDATION_PROMPTS", "GRPOConfig", "parse_args"]

logger = logging.getLogger(__name__)


@dataclass(repr=False)  # `RunArguments.__repr__` leaves the secrets out
class GRPOConfig(RunArguments):
    r"""
    Configuration of a GRPO training run for diffusers image models with MixGRPO's sliding ODE-SDE window.

    Each field documents itself in `metadata["help"]` (shown by `--help`, grouped in sections: output and
    optimisation, memory and scale-out, prompts / logging / validation, checkpointing and Hub (`RunArguments`), then
    model, sampling, method, GRPO objective, rewards, LoRA and EMA); `metadata["choices"]` and `metadata["range"]` say which values it takes.

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
            "group": "Model",
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
        metadata={
            "help": "Noise level of the SDE. Preset: 0.7 (0.3 for DanceGRPO). At most 1 for `'cps'` and for the DDIM "
            "window of SD1.5 / SDXL, sqrt(2) for `'flow_grpo'`; above 1 warns.",
            "range": "(0, inf)",
        },
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
    sde_steps: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Instead of the sliding window: exactly these step indices are SDE (and trained) steps at every "
            "iteration, the others ODE, e.g. `0,3,5,9` (CLI `--sde_steps 0 3 5 9` or `0,3,5,9`; YAML a list). Sorted, "
            "unique, in [0, N - 2]. A Flash tail (`tail_ratio`) starts after the last one. `None`: the window.",
        },
    )
    num_sde_steps: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "Instead of the sliding window: the number K of SDE (and trained) steps, drawn per iteration "
            "uniformly from these candidates (one value: always K), placed in `sde_step_range` as "
            "`sde_step_layout` says. Seeded by (seed, step): the same on every rank and after a resume. "
            "Flow-GRPO-Fast: `2` with `sde_step_range 0 N//2`. `None`: the window.",
        },
    )
    sde_step_range: Optional[list[int]] = field(
        default=None,
        metadata={
            "help": "`num_sde_steps` only: the pool `[low, high)` of step indices the steps are drawn from, "
            "0 <= low < high <= N - 1. `None`: [0, N - 1), every trainable step.",
        },
    )
    sde_step_layout: str = field(
        default="window",
        metadata={
            "help": "`num_sde_steps` only: `'window'` (K consecutive steps from a uniformly drawn start, "
            "Flow-GRPO-Fast) or `'scattered'` (K distinct steps drawn uniformly from the pool).",
            "choices": SDE_STEP_LAYOUTS,
        },
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
    ratio_norm: bool = field(
        default=False,
        metadata={
            "help": "GRPO-Guard's regulated clipping (arXiv 2510.22319): the log importance ratio of each window step "
            "is de-biased (+ ||mu_theta - mu_old||^2 / (2 tau^2), so its mean is 0 instead of negative) and scaled "
            "by the step's noise scale tau (the same spread at every step) before the clip, and each step's loss is "
            "weighted by 1/|dt| (normalised to mean 1 over the window). Flow-matching schedulers only; the rollout "
            'then records each step\'s mean (one latent per window step). See docs/training.md, "Loss".'
        },
    )
    max_consecutive_bad_groups: int = field(
        default=5,
        metadata={
            "help": "Groups with a non-finite reward are dropped from the update with a warning; training stops with "
            "an error after this many consecutive bad groups (0: at the first).",
            "range": "[0, inf)",
        },
    )
    ratio_check_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "The consistency check: the log-probs of the rollout's own samples recomputed before any "
            "parameter change must give back the recorded ones (max |ratio - 1| <= `ratio_check_tolerance`), or "
            "the run stops. `None`: at the run's first update only; `n`: also every `n` training steps; `0`: "
            'never. See docs/training.md, "Trusting a run".',
            "range": "[0, inf)",
        },
    )
    ratio_check_tolerance: Optional[float] = field(
        default=None,
        metadata={
            "help": "The largest on-policy max |log ratio| (about max |ratio - 1|; per latent element with "
            "`log_prob_reduction='sum'`) the consistency check allows. `None`: by `mixed_precision`, 1e-4 for "
            "`'no'` (1e-3 on CUDA with `allow_tf32`), 1e-3 for `'fp16'`, 1e-2 for `'bf16'` "
            "(`training.consistency`).",
            "range": "(0, inf)",
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
    monitor_rewards: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Rewards that are scored and logged but never trained on (a reward-hacking guard): every step "
            "logs `monitor/<name>` (the mean over all rollouts) beside each trained `reward/<name>`, and the "
            "evaluation logs `eval/monitor/<name>`, so a monitor that falls while the trained reward rises shows "
            "over-optimisation. Same syntax as `rewards` (names; weights are ignored); loaded like the training "
            "rewards (`reward_device`, `reward_dtype`, `reward_kwargs`, `reward_timeout`). A monitor that fails, "
            "hangs or returns non-finite scores is logged as NaN with a warning and never stops or changes the run. "
            'See docs/training.md, "Reward hacking".'
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

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # every value as its field's type, before anything reads it
            setattr(self, f.name, coerce_value(f, getattr(self, f.name), hints[f.name]))
        apply_method_preset(self)
        self.rewards = parse_reward_weights(self.rewards)
        self.reward_kwargs = parse_reward_kwargs(self.reward_kwargs)
        self.monitor_rewards = parse_monitor_rewards(self.monitor_rewards, self.rewards)
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
        check_reward_options(self.rewards, self.reward_kwargs, self.monitor_rewards)
        check_reward_weights(self.rewards, warn=False)  # the trainer warns about a weight of 0, once (build_rewards)
        self._check_combinations()
        check_setting_ranges(self)

    def _check_combinations(self) -> None:
        """The rules that tie several fields together; each failure names the values and how to fix them."""

        def fail(message: str) -> None:
            raise ConfigError(message)

        if self.sample_share_prefix and not self.sample_same_noise:
            fail(
                "sample_share_prefix=True needs sample_same_noise=True (a group only shares its pre-window "
                "trajectory when its members start from the same noise); set one of them accordingly."
            )
        check_step_selection(self)
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
        if self.ratio_norm and self.sde_type == "cps" and self.cps_log_prob == "flow_grpo":
            fail(
                "ratio_norm=True needs the Gaussian log-prob (its bias correction is the Gaussian's); with "
                "sde_type='cps' set cps_log_prob='gaussian', or ratio_norm=False."
            )
        if self.ratio_norm and self.model_family in ("sd15", "sdxl"):
            fail(
                f"ratio_norm=True needs a flow-matching model; model_family={self.model_family!r} is VP diffusion: "
                "set ratio_norm=False."
            )
        if self.fsdp2 and self.use_ema:
            fail("use_ema=True is not supported with fsdp2=True (sharded weights); set use_ema=False.")
        self._check_run_combinations()

    # -- derived values --------------------------------------------------------------------------------------------

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
