"""`GRPOTrainer`: the MixGRPO training loop (rollout -> rewards -> advantages -> clipped GRPO update) on accelerate."""

import concurrent.futures
import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..pipelines.prompt_cache import PromptEmbedsCache
from ..pipelines.rollout_batch import PromptEmbeds, RolloutBatch
from ..rewards import MultiReward
from ..schedulers.sliding_window import SlidingWindowSchedule
from .advantages import compute_advantages, finite_group_mask
from .checkpointing import CheckpointManager, apply_umask, raise_if_disk_full
from .config import DEFAULT_NUM_VALIDATION_PROMPTS, GRPOConfig, default_lora_target_modules
from .distributed import (
    FSDP2Options,
    apply_fsdp2,
    cast_trainable_shards,
    clip_grad_norm,
    configure_deepspeed,
    fsdp2_options_from_accelerate,
    full_state_dict,
    grads_finite,
    is_sharded,
    is_zero3_partitioned,
    load_sharded_state,
    local_tensor,
    save_sharded_state,
    unsharded_copy,
    zero3_full_state_dict,
)
from .ema import ParameterEMA
from .errors import (
    CheckpointError,
    ConfigError,
    CorruptCheckpointError,
    ModelLoadError,
    RewardLoadError,
    TrainingStopped,
)
from .evaluation import EvaluationResult, eval_items, eval_seed, gather_items, shard_items
from .interrupts import GracefulInterrupt, IterationStart, Preempted, RestorePoint, signal_name
from .logging_utils import (
    count_truncated_prompts,
    init_trackers,
    log_image_grid,
    log_table,
    plot_reward_curve,
    quiet_prompt_truncation,
    resolve_report_to,
)
from .losses import grpo_loss
from .model_defaults import read_sampling_defaults
from .preflight import check_reward_device_available, read_prompt_file
from .resume import RUN_CONFIG_FILE, check_finite, config_changes, prompts_fingerprint, set_learning_rate
from .run_summary import RunSummary

logger = logging.getLogger(__name__)

RewardSpec = Union[MultiReward, Mapping[Union[str, Callable], float], Callable]

#: Training steps in a row whose rewards leave every advantage at 0 before the run warns.
CONSTANT_REWARD_WARN_STEPS = 3
PROMPTS_FILE = "train_prompts.txt"
#: Prompts of the evaluation whose images make the logged grid (one row per prompt).
VALIDATION_GRID_PROMPTS = 8


@dataclass
class TrainOutput:
    """What `GRPOTrainer.train` returns: the step reached, the logged curves, the end-of-run summary, and the signal
    that stopped the run early (`None` when it ran to `max_train_steps`)."""

    global_step: int
    reward_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    output_dir: Optional[str] = None
    summary: Optional[RunSummary] = None
    interrupted_by: Optional[str] = None
    checkpoint: Optional[str] = None


def _is_registered_reward(name: str) -> bool:
    from ..rewards.registry import get_reward_factory

    try:
        get_reward_factory(name)
    except (KeyError, ValueError):
        return False
    return True


def _reward_options(name: str, config: GRPOConfig) -> dict[str, Any]:
    """Keyword arguments for a registered reward: `reward_batch_size` (when the factory takes `batch_size`) and
    the reward's `reward_kwargs`."""
    from ..rewards.registry import get_reward_factory
    from .preflight import _accepted_options

    options: dict[str, Any] = {}
    try:
        accepted = _accepted_options(get_reward_factory(name))
    except (KeyError, ValueError):
        return dict((config.reward_kwargs or {}).get(name, {}))
    if accepted is not None and "batch_size" in accepted:
        options["batch_size"] = config.reward_batch_size
    options.update((config.reward_kwargs or {}).get(name, {}))
    return options


def apply_tf32(allow: bool, device: Union[str, torch.device]) -> None:
    """`allow_tf32`: TF32 matmuls and cuDNN convolutions on (True) or off (False) when training on CUDA (Ampere and
    newer GPUs; float32 matmuls then round their inputs to 10 mantissa bits). Other devices are left alone."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(allow)
        torch.backends.cudnn.allow_tf32 = bool(allow)


def load_training_pipeline(
    config: GRPOConfig, dtype: Optional[torch.dtype] = None, torch_dtype: Optional[torch.dtype] = None
) -> GRPOTrainingPipeline:
    """Load `config.pretrained_model_name_or_path` (Hub id or local folder) as a `GRPOTrainingPipeline`, in `dtype`
    (`torch_dtype` is the old name of the argument). A model that cannot be loaded raises `ModelLoadError`."""
    dtype = dtype if dtype is not None else torch_dtype
    from diffusers import DiffusionPipeline

    path = config.pretrained_model_name_or_path
    if path is None:
        raise ModelLoadError(
            "pretrained_model_name_or_path is required to load the model (a Hub id or a local folder)."
        )
    try:
        stock = DiffusionPipeline.from_pretrained(path, revision=config.revision, variant=config.variant, dtype=dtype)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"Could not load the pipeline {path!r} ({first_line}); if it is a Hub id, download it first while "
            f"online (`hf download {path}`), else pass a local folder written by `save_pretrained`."
        ) from err
    pipeline = GRPOTrainingPipeline.from_pipe(stock)
    if config.max_sequence_length is not None:
        pipeline.max_sequence_length = config.max_sequence_length
    return pipeline


class GRPOTrainer:
    r"""
    MixGRPO / MixGRPO-Flash / Flash* / DanceGRPO-style training of a text-to-image model on accelerate.

    One training step (a "GRPO iteration"): every process rolls out `sample_prompts_per_device` prompts x
    `num_generations` images with the current SDE window, scores them, the rewards are gathered across processes and
    turned into group-normalised advantages, and the window steps are trained with the clipped GRPO loss (micro-batches
    of `train_batch_size`, or one per rollout chunk; an optimiser step every `gradient_accumulation_steps`
    micro-batches and at the end of the iteration). The window then moves by the `SlidingWindowSchedule`. Every
    decision to skip a backward or an optimiser step is the same on all ranks (see `_update`).

    Args:
        config (`GRPOConfig`): every hyper-parameter.
        pipeline (`GRPOTrainingPipeline`, *optional*): the model; loaded from `config.pretrained_model_name_or_path`
            when omitted.
        rewards (`MultiReward`, mapping or callable, *optional*): `{name_or_callable: weight}`, a `MultiReward`, or
            one callable `(images, prompts) -> (B,)`; default: `config.rewards`.
        train_prompts (`Sequence[str]`, *optional*): the prompt dataset; default: `config.prompt_file`.
        eval_prompts (`Sequence[str]`, *optional*): held-out prompts of the periodic evaluation (`evaluate`:
            deterministic ODE samples, `validation_images_per_prompt` per prompt from fixed seeds, split across the
            processes; `eval/reward`, per-reward means, a per-prompt table and an image grid logged); default:
            `config.validation_prompts`, else `config.validation_prompt_file`, else the first
            `DEFAULT_NUM_VALIDATION_PROMPTS` (4) training prompts, with a warning.
        accelerator (`Accelerator`, *optional*): bring your own; otherwise built from the config.
        overlap_rewards (`bool`, *optional*): score each rollout chunk in a thread while the next chunk is
            denoised (`training/overlap.py`); the same samples and scores as without. Worth it when the reward model
            runs on another device or behind `RemoteReward`. `None`: `config.overlap_rewards`.
        fsdp2 (`FSDP2Options` or `bool`, *optional*): shard the denoiser with torch's FSDP2 (`fully_shard` per
            transformer block) instead of accelerate's DDP; works on GPUs and on the CPU (gloo). A launch with
            accelerate's FSDP2 config (`examples/accelerate/fsdp2.yaml`) takes this path too, with the config's
            settings. See `training/distributed.py`. `None`: `config.fsdp2` (with `fsdp2_reshard_after_forward`,
            `fsdp2_cpu_offload`), else the launch config.
    """

    def __init__(
        self,
        config: GRPOConfig,
        pipeline: Optional[GRPOTrainingPipeline] = None,
        rewards: Optional[RewardSpec] = None,
        train_prompts: Optional[Sequence[str]] = None,
        eval_prompts: Optional[Sequence[str]] = None,
        accelerator: Optional[Accelerator] = None,
        fsdp2: Optional[Union[bool, "FSDP2Options"]] = None,
        overlap_rewards: Optional[bool] = None,
    ):
        self.config = config
        self.overlap_rewards = config.overlap_rewards if overlap_rewards is None else bool(overlap_rewards)
        if fsdp2 is None and config.fsdp2:
            fsdp2 = FSDP2Options(
                reshard_after_forward=config.fsdp2_reshard_after_forward, cpu_offload=config.fsdp2_cpu_offload
            )
        self.fsdp2 = (FSDP2Options() if fsdp2 is True else fsdp2) or None
        self.accelerator = accelerator or Accelerator(
            mixed_precision=config.mixed_precision,
            log_with=resolve_report_to(config.report_to),
            project_config=ProjectConfiguration(
                project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
            ),
        )
        set_seed(config.seed)
        apply_tf32(config.allow_tf32, self.accelerator.device)
        check_reward_device_available(config.reward_device)  # before FLUX loads, not after
        file_prompts = None
        if eval_prompts is None and config.validation_prompts is None and config.validation_prompt_file:
            file_prompts = read_prompt_file(config.validation_prompt_file, "validation_prompt_file")
        self.pipeline = pipeline if pipeline is not None else load_training_pipeline(config)
        self.pipeline.set_progress_bar_config(disable=True)
        self._apply_model_defaults()
        self._prompts_given = train_prompts is not None
        self.train_prompts = self._load_prompts(train_prompts)
        if eval_prompts is not None:
            self.eval_prompts, self.eval_prompts_source = list(eval_prompts), "eval_prompts"
        elif config.validation_prompts is not None:
            self.eval_prompts, self.eval_prompts_source = list(config.validation_prompts), "validation_prompts"
        elif file_prompts is not None:
            self.eval_prompts = file_prompts
            self.eval_prompts_source = f"validation_prompt_file={config.validation_prompt_file}"
        else:
            self.eval_prompts = self.train_prompts[:DEFAULT_NUM_VALIDATION_PROMPTS]
            self.eval_prompts_source = f"the first {len(self.eval_prompts)} training prompts"
            if config.validation_steps:
                logger.warning(
                    "Neither validation_prompts nor validation_prompt_file is set: the periodic evaluation scores "
                    "the first %d training prompts, which measures fit, not generalisation. Set "
                    "validation_prompt_file to a file of held-out prompts.",
                    len(self.eval_prompts),
                )
        self.reward = self._build_rewards(rewards)
        self.config = self._record_run_inputs(eval_prompts)
        self.window = SlidingWindowSchedule(**config.sliding_window_kwargs())
        self.checkpoints = CheckpointManager(config.output_dir, config.checkpoints_total_limit)
        self.global_step = 0
        self.bad_group_streak = 0
        self.skipped_update_streak = 0
        self.constant_reward_streak = 0
        self.config_changes: list[dict[str, Any]] = []
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._reward_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        # Pre-emption (`interrupts.py`): the signal handler of the running `train()`, what the current iteration
        # would rewind to, and the checkpoints this run wrote (step -> path; a stop at that state reuses them).
        self._interrupt: Optional[GracefulInterrupt] = None
        self._iteration_start: Optional[IterationStart] = None
        self._restore_point: Optional[RestorePoint] = None
        self._iteration_optimizer_steps = 0
        self._saved_this_run: dict[int, str] = {}
        self._setup_model()
        self.prompt_cache: Optional[PromptEmbedsCache] = None
        self._setup_frozen_modules()
        self._announce_truncation()
        self._bar = None
        # Replaces the periodic evaluation when set: called with the trainer every `validation_steps` (and before
        # the first step), returns scalars logged as `eval/<name>`; its "reward" is the `eval_reward` curve. The
        # toy task uses it to score held-out prompts with held-out noise (`toy_world.evaluation`).
        self.evaluation_hook: Optional[Callable[[GRPOTrainer], Mapping[str, float]]] = None

    # ------------------------------------------------------------------ setup
    def _load_prompts(self, prompts: Optional[Sequence[str]]) -> list[str]:
        if prompts is None and self.config.prompt_file:
            prompts = read_prompt_file(self.config.prompt_file)
        if not prompts:
            raise ConfigError("No training prompts: pass train_prompts=[...] or set prompt_file.")
        return list(prompts)

    def _apply_model_defaults(self) -> None:
        """Prompt length: `max_sequence_length`, else the model folder's `sampling_defaults.json`. The folder's other
        sampling defaults only warn when the config differs (the config's values may have been chosen on purpose;
        the command line applies them to the values not given)."""
        cfg, pipe = self.config, self.pipeline
        try:
            defaults = read_sampling_defaults(getattr(pipe, "name_or_path", None))
        except ConfigError as err:
            logger.warning("%s", err)
            defaults = {}
        if cfg.max_sequence_length is not None:
            pipe.max_sequence_length = cfg.max_sequence_length
        elif "max_sequence_length" in defaults and pipe.max_sequence_length is None:
            pipe.max_sequence_length = int(defaults["max_sequence_length"])
        size = defaults.get("resolution")
        expected = {
            "num_inference_steps": defaults.get("num_inference_steps"),
            "guidance_scale": defaults.get("guidance_scale"),
            "height": defaults.get("height", size),
            "width": defaults.get("width", size),
        }
        differ = {k: v for k, v in expected.items() if v is not None and getattr(cfg, k) != v}
        if differ:
            logger.warning(
                "The model folder's sampling_defaults.json has %s; this run uses %s.",
                ", ".join(f"{k}={v}" for k, v in differ.items()),
                ", ".join(f"{k}={getattr(cfg, k)}" for k in differ),
            )

    def _record_run_inputs(self, eval_prompts: Optional[Sequence[str]]) -> GRPOConfig:
        """The config completed with what was handed over as objects (pipeline, rewards, prompts, prompt length),
        so that the `training_config.yaml` a run writes reproduces it and a resume can compare against it."""
        cfg, pipe = self.config, self.pipeline
        updates: dict[str, Any] = {}
        name = cfg.pretrained_model_name_or_path or getattr(pipe, "name_or_path", None)
        if name and os.path.isdir(name) and name != os.path.abspath(name):
            name = os.path.abspath(name)  # a resume may start from another working directory
        if name and name != cfg.pretrained_model_name_or_path:
            updates["pretrained_model_name_or_path"] = name
        if cfg.prompt_file and cfg.prompt_file != os.path.abspath(cfg.prompt_file):
            updates["prompt_file"] = os.path.abspath(cfg.prompt_file)
        if cfg.model_family is None:
            updates["model_family"] = pipe.model_family
        if cfg.max_sequence_length is None and getattr(pipe, "max_sequence_length", None):
            updates["max_sequence_length"] = int(pipe.max_sequence_length)
        if cfg.rewards is None:
            updates["rewards"] = dict(self.reward.weights)
            unregistered = [n for n in self.reward.weights if not _is_registered_reward(n)]
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
        if self._prompts_given and cfg.prompt_file is None:
            updates["prompt_file"] = os.path.abspath(os.path.join(cfg.output_dir, PROMPTS_FILE))
        if cfg.use_lora and cfg.lora_target_modules is None:
            updates["lora_target_modules"] = default_lora_target_modules(pipe.model_family)
        return dataclasses.replace(cfg, **updates) if updates else cfg

    def _announce_truncation(self) -> None:
        """Say once that long prompts are truncated (the pipelines warn at every call, dumping `<pad>` tokens)."""
        quiet_prompt_truncation()
        if not self.accelerator.is_main_process:
            return
        prompts = list(dict.fromkeys(self.train_prompts + self.eval_prompts))
        limit = self.pipeline.max_sequence_length or getattr(self.pipeline.family, "max_sequence_length", None)
        for slot, max_len, n, example in count_truncated_prompts(self.pipeline, prompts, limit):
            logger.warning(
                "%d of %d prompts are longer than the %d tokens of %s and are truncated (e.g. %r).",
                n,
                len(prompts),
                max_len,
                slot,
                example[:80],
            )

    @property
    def reward_device(self) -> torch.device:
        """Where the registered reward models run: `reward_device`, else this process's training device."""
        device = self.config.reward_device
        return torch.device(device) if device is not None else self.accelerator.device

    def _build_rewards(self, rewards: Optional[RewardSpec]) -> MultiReward:
        """The run's `MultiReward`; registered names are loaded on `reward_device` in `reward_dtype` (callables and a
        ready `MultiReward` are used as given)."""
        cfg = self.config
        if rewards is None:
            rewards = cfg.rewards
        if rewards is None:
            raise ConfigError("No reward: pass rewards={...} or set `rewards` in the config.")
        if isinstance(rewards, MultiReward):
            return rewards
        if callable(rewards) and not isinstance(rewards, Mapping):
            rewards = {rewards: 1.0}
        names = [k for k in rewards if isinstance(k, str)]
        options = {name: _reward_options(name, cfg) for name in names}
        try:
            return MultiReward(
                rewards,
                mix=cfg.reward_mix,
                device=self.reward_device,
                dtype=getattr(torch, cfg.reward_dtype),
                reward_kwargs={k: v for k, v in options.items() if v},
                std=cfg.adv_std,
                trim=cfg.adv_trim,
                clip=cfg.adv_clip_max,
            )
        except (OSError, KeyError, TypeError) as err:
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            raise RewardLoadError(f"Could not load the rewards {names}: {message}") from err

    def _setup_model(self) -> None:
        cfg, acc, pipe = self.config, self.accelerator, self.pipeline
        # None unless launched with a DeepSpeed config
        self.zero_stage = configure_deepspeed(acc, cfg, fsdp2=self.fsdp2 is not None)
        from_launch = fsdp2_options_from_accelerate(acc)  # accelerate launch with fsdp2.yaml: the same path as fsdp2
        if from_launch is not None and self.fsdp2 is None:
            self.fsdp2, activation_checkpointing = from_launch
            if activation_checkpointing:
                pipe.enable_gradient_checkpointing()
        offload = (["text_encoders"] if cfg.offload_text_encoders in ("cpu", "free") else []) + (
            ["vae"] if cfg.offload_vae else []
        )
        if offload:  # the offloaded modules never visit the device as a whole model set (a 24 GB card would OOM)
            pipe.enable_model_cpu_offload(device=acc.device, modules=offload)
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module) or name in pipe.offloaded_modules:
                continue
            if self.fsdp2 is not None and module is pipe.denoiser:
                continue  # `fully_shard` moves it to the device one wrap unit at a time, as shards
            module.to(acc.device)
        scheduler_overrides = {
            "sde_type": cfg.sde_type,
            "eta": cfg.eta,
            "log_prob_reduction": cfg.log_prob_reduction,
        }
        if pipe.family.scheduler_kind == "flow":
            # The paper's grid: a fixed shift s (no resolution-dependent `mu`), Flash tail per the method preset.
            if cfg.shift is not None and pipe.scheduler.config.get("use_flow_sigmas", False):
                scheduler_overrides.update(flow_shift=cfg.shift)  # SANA / Wan: the DPM-Solver / UniPC grid's shift
            elif cfg.shift is not None:
                scheduler_overrides.update(shift=cfg.shift, use_dynamic_shifting=False)
            scheduler_overrides.update(
                cps_log_prob=cfg.cps_log_prob,
                tail_solver=cfg.tail_solver,
                tail_solver_order=cfg.tail_solver_order,
                tail_ratio=cfg.tail_ratio,
            )
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **scheduler_overrides)
        pipe.family.stock.scheduler = pipe.scheduler

        for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        denoiser = pipe.denoiser
        denoiser.eval()  # no dropout: the rollout and the training pass must be the same function
        if cfg.use_lora:
            from peft import LoraConfig

            denoiser.requires_grad_(False)
            targets = cfg.lora_target_modules or default_lora_target_modules(pipe.model_family)
            lora = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                init_lora_weights="gaussian",
            )
            try:
                denoiser.add_adapter(lora)
            except ValueError as err:  # peft's NoMatchingPeftModuleError derives from ValueError
                raise ConfigError(
                    f"lora_target_modules={list(targets)} match no layer of the {type(denoiser).__name__} "
                    f"({str(err).strip().splitlines()[0]}); the {pipe.model_family} default is "
                    f"{default_lora_target_modules(pipe.model_family)}."
                ) from err
        else:
            denoiser.requires_grad_(True)
        if cfg.gradient_checkpointing:
            pipe.enable_gradient_checkpointing()
        if not any(p.requires_grad for p in denoiser.parameters()):
            raise ValueError("The denoiser has no trainable parameter; check lora_target_modules.")
        # Trained weights are float32 even in a bf16 model (LoRA weights, or every weight of a full fine-tune).
        if self.fsdp2 is not None:
            if cfg.use_ema:
                raise ConfigError("use_ema is not supported with fsdp2 (sharded weights); set use_ema=False.")
            # Shard in the load dtype first, then cast each rank's own shard: no rank ever holds the whole denoiser
            # in float32 (FLUX.1-dev: 48 GB). No reference to the unsharded parameters may outlive `fully_shard`.
            apply_fsdp2(denoiser, self.fsdp2)
            cast_trainable_shards(denoiser, torch.float32)
            self.trainable = [p for p in denoiser.parameters() if p.requires_grad]
        else:
            self.trainable = [p for p in denoiser.parameters() if p.requires_grad]
            for p in self.trainable:
                p.data = p.data.float()

        optimizer_cls = torch.optim.AdamW
        if cfg.optimizer == "adamw8bit":
            try:
                import bitsandbytes as bnb
            except ImportError as err:
                raise ImportError("optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes") from err
            optimizer_cls = bnb.optim.AdamW8bit
        optimizer = optimizer_cls(
            self.trainable,
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            weight_decay=cfg.weight_decay,
        )
        from diffusers.optimization import get_scheduler

        lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=self._optimizer_steps_per_iteration() * cfg.max_train_steps * acc.num_processes,
        )
        if self.fsdp2 is not None:
            # The sharded model and its optimiser stay out of accelerate (which would save rank 0's shards only);
            # the scheduler is prepared as in DDP runs, so the learning-rate curve is the same.
            wrapped, self.optimizer, self.lr_scheduler = denoiser, optimizer, acc.prepare(lr_scheduler)
            acc.register_save_state_pre_hook(self._save_sharded_hook)
            acc.register_load_state_pre_hook(self._load_sharded_hook)
        else:
            wrapped, self.optimizer, self.lr_scheduler = acc.prepare(denoiser, optimizer, lr_scheduler)
        pipe.family.forward_module = wrapped if wrapped is not denoiser else None
        self.model = wrapped
        self.ema = (
            ParameterEMA(self.trainable, decay=cfg.ema_decay, update_interval=cfg.ema_update_interval)
            if cfg.use_ema
            else None
        )
        if cfg.use_lora and self.fsdp2 is None:
            acc.register_save_state_pre_hook(self._save_lora_hook)
            acc.register_load_state_pre_hook(self._load_lora_hook)

    def _setup_frozen_modules(self) -> None:
        """The memory options of the modules that are not trained (their placement is set in `_setup_model`): VAE
        slicing / tiling and the prompt-embedding cache, after which the text encoders may be freed."""
        cfg, acc, pipe = self.config, self.accelerator, self.pipeline
        if cfg.vae_slicing:
            pipe.enable_vae_slicing()
        if cfg.vae_tiling:
            pipe.enable_vae_tiling()
        if not cfg.cache_prompt_embeds:
            return
        prompts = list(dict.fromkeys([*self.train_prompts, *self.eval_prompts]))
        kwargs = dict(guidance_scale=cfg.guidance_scale, cache_dir=cfg.prompt_embeds_cache_dir, device=acc.device)
        with pipe.onloaded(pipe.TEXT_ENCODER_NAMES):  # offloaded encoders move to the device once, not per batch
            if cfg.prompt_embeds_cache_dir is not None and acc.num_processes > 1:
                if acc.is_main_process:  # the main process writes the shards; the others read them
                    self.prompt_cache = PromptEmbedsCache(pipe, prompts, **kwargs)
                acc.wait_for_everyone()
                if not acc.is_main_process:
                    self.prompt_cache = PromptEmbedsCache(pipe, prompts, read_only=True, progress=False, **kwargs)
            else:
                self.prompt_cache = PromptEmbedsCache(pipe, prompts, progress=acc.is_local_main_process, **kwargs)
        state = "loaded from" if self.prompt_cache.loaded_from_disk else "encoded into"
        logger.info(
            "Prompt embeddings of %d prompts %s %s.",
            len(self.prompt_cache),
            state,
            cfg.prompt_embeds_cache_dir or "CPU memory",
        )
        if cfg.offload_text_encoders == "free":
            pipe.free_text_encoders()

    def _cached_embeds(self, prompts: Sequence[str]) -> Optional[PromptEmbeds]:
        """The cached rows of `prompts`, or `None` (no cache, or a prompt it does not hold: encoded as usual)."""
        if self.prompt_cache is None or self.prompt_cache.missing(prompts):
            return None
        return self.prompt_cache.rows(prompts)

    def _optimizer_steps_per_iteration(self) -> int:
        cfg = self.config
        micro = cfg.train_micro_batches_per_iteration
        if cfg.gradient_accumulation_steps > micro:
            logger.warning(
                "gradient_accumulation_steps=%d but an iteration has only %d training micro-batch(es) per device "
                "(train_batch_size=%s, %d rollouts per device): each iteration takes %d optimiser step(s). Set "
                "train_batch_size to train in smaller micro-batches (the official MixGRPO recipe: train_batch_size 1, "
                "gradient_accumulation_steps 3, 4 steps per iteration).",
                cfg.gradient_accumulation_steps,
                micro,
                cfg.train_batch_size,
                cfg.rollouts_per_device,
                cfg.optimizer_steps_per_iteration,
            )
        return cfg.optimizer_steps_per_iteration

    # fsdp2 checkpoints: the trained parameters (LoRA: the adapters only) and the optimiser, sharded (collective).
    def _save_sharded_hook(self, models, weights, output_dir):
        save_sharded_state(self.pipeline.denoiser, self.optimizer, output_dir)
        while weights:
            weights.pop()

    def _load_sharded_hook(self, models, input_dir):
        load_sharded_state(self.pipeline.denoiser, self.optimizer, input_dir)

    # Checkpoints of LoRA runs hold the adapter weights only (not the frozen base model).
    def _save_lora_hook(self, models, weights, output_dir):
        from peft.utils import get_peft_model_state_dict

        if self._accelerate_shards():
            return  # accelerate's FSDP / DeepSpeed save the sharded model and optimiser themselves (every rank)

        if self.accelerator.is_main_process:
            state = get_peft_model_state_dict(self.accelerator.unwrap_model(self.pipeline.denoiser))
            from safetensors.torch import save_file

            save_file(
                {k: v.detach().float().contiguous().cpu() for k, v in state.items()},
                os.path.join(output_dir, "lora_adapter.safetensors"),
            )
        while weights:
            weights.pop()

    def _accelerate_shards(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def _checkpoint_kwargs(self, load: bool) -> dict[str, Any]:
        """DeepSpeed LoRA runs: the engine's checkpoint leaves the frozen base weights out (and loads without them)."""
        if self.zero_stage is None or not self.config.use_lora:
            return {}
        return {"load_module_strict": False} if load else {"exclude_frozen_parameters": True}

    def _load_lora_hook(self, models, input_dir):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        if self._accelerate_shards():
            return

        while models:
            models.pop()
        path = os.path.join(input_dir, "lora_adapter.safetensors")
        try:
            state = load_file(path)
        except Exception as err:
            raise CorruptCheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}).") from err
        ranks = {int(v.shape[0]) for k, v in state.items() if "lora_A" in k and v.ndim >= 1}
        if ranks and ranks != {self.config.lora_rank}:
            raise CheckpointError(
                f"{input_dir} holds LoRA rank {min(ranks)} but this run has lora_rank={self.config.lora_rank}; "
                f"resume with --lora_rank {min(ranks)} or start a new run in another output_dir."
            )
        result = set_peft_model_state_dict(self.pipeline.denoiser, state)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(
                f"{path} holds LoRA weights for other modules than this run adapts ({result.unexpected_keys[0]}, "
                f"...); resume with the run's lora_target_modules."
            )

    # ------------------------------------------------------------------ data
    def _prompt_indices(self, step: int) -> list[int]:
        """Global prompt indices of training step `step` for this process: a seeded permutation per epoch, so the
        data position is a function of the step (exact resume) and of nothing process-specific."""
        cfg, acc = self.config, self.accelerator
        per_step = cfg.sample_prompts_per_device * acc.num_processes
        n = len(self.train_prompts)
        out = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, pos = divmod(k, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 1000003 * epoch))
            out.append(int(perm[pos]))
        lo = acc.process_index * cfg.sample_prompts_per_device
        return out[lo : lo + cfg.sample_prompts_per_device]

    def _prompt_generators(self, step: int, global_slots: Sequence[int]) -> list[torch.Generator]:
        """One generator per prompt slot of the global batch: a group's noise depends on (seed, step, slot) only."""
        base = self.config.seed * 1_000_003 + step * 7919
        return [torch.Generator().manual_seed(base + 31 * slot) for slot in global_slots]

    def _global_slot_offset(self) -> int:
        return self.accelerator.process_index * self.config.sample_prompts_per_device

    # ------------------------------------------------------------------ one iteration
    def _rollout(self, step: int, piece: Optional[slice] = None) -> RolloutBatch:
        """The rollout of step `step` (this process's prompts; `piece`: a slice of them, e.g. one chunk's)."""
        cfg = self.config
        piece = piece or slice(None)
        positions = list(range(cfg.sample_prompts_per_device))[piece]
        idx = [self._prompt_indices(step)[j] for j in positions]
        prompts = [self.train_prompts[i] for i in idx]
        start, size = self.window.current()
        slots = [self._global_slot_offset() + j for j in positions]
        return self.pipeline.rollout(
            prompts,
            prompt_embeds=self._cached_embeds(prompts),
            num_generations=cfg.num_generations,
            num_inference_steps=cfg.num_inference_steps,
            sde_window=(start, size),
            guidance_scale=cfg.guidance_scale,
            height=cfg.height or cfg.resolution,
            width=cfg.width or cfg.resolution,
            generator=self._prompt_generators(step, slots),
            share_prefix=cfg.sample_share_prefix,
            same_initial_noise=cfg.sample_same_noise,
            max_batch_size=cfg.sample_max_batch_size,
            autocast_dtype=self._autocast_dtype(),
            step_callback=lambda: self._check_stop("its rollout"),
            **self._video_kwargs(),
        )

    def _video_kwargs(self) -> dict:
        """`num_frames` for a video family's rollouts (image families take none)."""
        if self.pipeline.family.is_video:
            return {"num_frames": self.config.num_frames}
        if self.config.num_frames is not None:
            raise ConfigError(
                f"num_frames={self.config.num_frames} is for video families (wan); this run's family is "
                f"{self.pipeline.model_family!r}: leave num_frames unset."
            )
        return {}

    def _autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.mixed_precision)

    def _call_reward(self, name: str, fn: Callable, images: Any, prompts: list[str]) -> Any:
        """`fn(images, prompts)`, within `reward_timeout` seconds when set (a hung reward stops the run)."""
        timeout = self.config.reward_timeout
        if timeout is None:
            return fn(images, prompts)
        if self._reward_pool is None:
            self._reward_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reward")
        future = self._reward_pool.submit(fn, images, prompts)
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            self._reward_pool.shutdown(wait=False, cancel_futures=True)
            self._reward_pool = None  # the hung call keeps its thread; the next call gets a fresh one
            raise TrainingStopped(
                f"Reward {name!r} did not answer within reward_timeout={timeout:g} s at step {self.global_step}; "
                f"stopping. The last complete checkpoint is {self.checkpoints.latest()}."
            ) from None

    def _score(self, batch: RolloutBatch) -> dict[str, torch.Tensor]:
        scores = {}
        for name, fn in self.reward.rewards.items():
            try:
                raw = self._call_reward(name, fn, batch.images, batch.prompts)
                s = torch.as_tensor(raw).reshape(-1).float().to(self.accelerator.device)
            except TrainingStopped:
                raise
            except Exception as err:  # a reward model that raises stops the run, naming the model and the prompt
                raise TrainingStopped(
                    f"Reward model {name!r} failed at step {self.global_step} on prompts "
                    f"{sorted(set(batch.prompts))[:4]}: {type(err).__name__}: {err}"
                ) from err
            if s.numel() != batch.batch_size:
                raise TrainingStopped(
                    f"Reward model {name!r} returned {s.numel()} scores for {batch.batch_size} images."
                )
            scores[name] = s
        return scores

    def _advantages(self, batch: RolloutBatch, scores: dict[str, torch.Tensor]):
        """Gather scores of every process (global group ids), drop non-finite groups, normalise; this rank's slice."""
        acc, cfg = self.accelerator, self.config
        group_ids = (batch.group_ids + self._global_slot_offset()).to(acc.device)
        all_groups = acc.gather(group_ids)
        all_scores = {k: acc.gather(v.contiguous()) for k, v in scores.items()}
        keep = finite_group_mask(all_scores, all_groups)
        adv = torch.zeros_like(all_groups, dtype=torch.float32)
        per_reward = {}
        if keep.any():
            kept_adv, per_reward = compute_advantages(
                {k: v[keep] for k, v in all_scores.items()},
                all_groups[keep],
                weights=self.reward.weights,
                mix=self.reward.mix,
                std=cfg.adv_std,
                trim=cfg.adv_trim,
                clip=cfg.adv_clip_max,
            )
            adv[keep] = kept_adv
        self._all_advantages_zero = bool(keep.any() and (adv[keep] == 0).all())
        n_local = batch.batch_size
        lo = acc.process_index * n_local  # every process rolls out the same number of samples
        return adv[lo : lo + n_local], keep[lo : lo + n_local], all_scores, keep, per_reward

    def _num_train_steps(self, num_window_steps: int) -> int:
        """K, the window steps trained per sample: all of them, or `train_timestep_fraction` of them (at least 1)."""
        return min(num_window_steps, max(1, int(num_window_steps * self.config.train_timestep_fraction)))

    def _train_steps(self, batch: RolloutBatch, step: int) -> list[list[int]]:
        """The window steps each sample trains this iteration (one sorted list per local sample).

        All of them, or (DanceGRPO, `train_timestep_fraction` < 1) a random subset drawn per sample, as the official
        DanceGRPO code does (a `randperm` of the timesteps for each sample). The draw is seeded by the run's seed, the
        training step and the sample's global index (its position among all processes' rollouts), so it is the same on
        every rank and for the same global batch split over any number of processes."""
        steps = list(batch.step_indices)
        k = self._num_train_steps(len(steps))
        if k >= len(steps):
            return [steps] * batch.batch_size
        first = self.accelerator.process_index * batch.batch_size
        chosen = []
        for i in range(batch.batch_size):
            g = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 1_000_033 + first + i)
            chosen.append([steps[j] for j in torch.randperm(len(steps), generator=g)[:k].sort().values.tolist()])
        return chosen

    @contextmanager
    def _reference_policy(self):
        """The base model for the Flow-GRPO reference KL: LoRA disabled (full fine-tune: not available)."""
        denoiser = self.pipeline.denoiser
        denoiser.disable_adapters()
        try:
            yield
        finally:
            denoiser.enable_adapters()

    def _micro_batches(self, batch: RolloutBatch, order: torch.Generator) -> list[torch.Tensor]:
        """This inner epoch's training micro-batches (sample indices), in training order.

        The same on every rank: every rank rolls out the same number of samples and draws the order from the same
        seeded generator, so all ranks enter the same sequence of forward / backward / optimiser steps (a rank that
        ran one collective fewer would hang the others). `train_batch_size=None`: the rollout's own chunks, shuffled;
        else a shuffled partition of the samples into micro-batches of `train_batch_size`."""
        size = self.config.train_batch_size
        if size is None:
            return [batch.chunks[i].cpu() for i in torch.randperm(len(batch.chunks), generator=order).tolist()]
        return list(torch.randperm(batch.batch_size, generator=order).split(size))

    def _all_ranks(self, ok: bool) -> bool:
        """`ok` on every rank (one all-reduce): a decision that changes which collectives or optimiser steps a rank
        takes must be the same on all of them, or the job hangs (DDP, FSDP2, ZeRO) or the replicas drift."""
        if self.accelerator.num_processes == 1:
            return ok
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.accelerator.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _update(self, batch: RolloutBatch, advantages: torch.Tensor, all_keep: torch.Tensor, step: int) -> dict:
        """The clipped GRPO update on this iteration's rollouts: micro-batches of `train_batch_size`, an optimiser step
        every `gradient_accumulation_steps` of them.

        Samples of dropped groups (`all_keep` False, non-finite rewards) count as samples with advantage 0: they add
        nothing to the gradient and leave the weight of the others unchanged (a micro-batch's loss is the sum over
        its kept samples divided by its full size). Every skip is decided identically on all ranks: `all_keep` is
        the gathered mask, so each rank knows which micro-batches any rank trains; one that no rank trains is left
        out by all, and a rank with nothing kept in a micro-batch that others train runs it with a zeroed loss (the
        gradient reduction needs every rank's backward). A non-finite loss or gradient on any rank skips that
        accumulation group's optimiser step on every rank."""
        cfg, acc = self.config, self.accelerator
        train_steps = self._train_steps(batch, step)
        k = len(train_steps[0])
        n = batch.batch_size
        kept_by_rank = all_keep.reshape(acc.num_processes, n).cpu()
        local_keep = kept_by_rank[acc.process_index]
        accum = cfg.gradient_accumulation_steps
        autocast = self._autocast_dtype()
        deepspeed = self.zero_stage is not None
        stats: dict[str, list[float]] = {}
        taken = skipped = 0
        order = torch.Generator().manual_seed(cfg.seed + step)
        if cfg.preemption_snapshot and not deepspeed:
            self._restore_point = RestorePoint(
                self.trainable, self.optimizer, self.lr_scheduler, self.ema, getattr(acc, "scaler", None)
            )
        micro_done = 0
        for _ in range(cfg.num_inner_epochs):
            micro = self._micro_batches(batch, order)
            micro_total = cfg.num_inner_epochs * len(micro)
            for start in range(0, len(micro), accum):
                group = micro[start : start + accum]
                runs = [m for m in group if bool(kept_by_rank[:, m].any())]
                if not runs:
                    continue  # no rank keeps a sample of this accumulation group: no backward, no optimiser step
                non_finite = 0
                for i, m in enumerate(runs):
                    kept = m[local_keep[m]]
                    idx = kept if len(kept) else m[:1]
                    # sum over the kept samples / the micro-batch's full size / (micro-batches in the group x steps)
                    weight = len(kept) / (len(m) * len(group) * k)
                    pieces = self._step_pieces(train_steps, idx)
                    position = micro_done + start + next(j for j, g in enumerate(group) if g is m) + 1
                    for pi, (t, sub) in enumerate(pieces):
                        # A stop here rewinds the iteration: possible while no optimiser step was taken, or with the
                        # restore point. DeepSpeed steps inside its boundary backward: no rewind, the step finishes.
                        if not deepspeed and (taken == 0 or self._restore_point is not None):
                            self._check_stop(f"its update (micro-batch {position} of {micro_total})")
                        # Only the last backward of the accumulation group (its last micro-batch that runs, that
                        # micro-batch's last piece) reduces the gradients (DDP) or is DeepSpeed's boundary; every
                        # other backward accumulates locally. The same on every rank: `runs` and `pieces` are.
                        sync = i == len(runs) - 1 and pi == len(pieces) - 1
                        with self._gradient_sync(sync):
                            out = self._window_step_loss(batch, t, sub, advantages, autocast)
                            loss = out.loss * (weight * len(sub) / len(idx))
                            finite_loss = bool(torch.isfinite(loss))
                            if not finite_loss:
                                # The backward still runs (the other ranks wait for this rank's gradients); the
                                # group's optimiser step is skipped below on every rank. DeepSpeed skips it itself
                                # on non-finite gradients, so a non-finite loss must give non-finite gradients.
                                non_finite += 1
                                loss = loss * float("nan")
                            if deepspeed:
                                self._deepspeed_backward(loss, boundary=sync)
                            else:
                                acc.backward(loss)
                        if finite_loss and len(kept):
                            for key, value in {"loss": out.loss, "kl": out.kl, **out.policy.stats()}.items():
                                stats.setdefault(key, []).append(
                                    float(value.detach() if torch.is_tensor(value) else value)
                                )
                # DeepSpeed: the engine has already clipped, stepped and zeroed at the boundary backward, or skipped the
                # step (a non-finite gradient norm); its optimiser's step / zero_grad are no-ops.
                finite = not self.optimizer.step_was_skipped if deepspeed else grads_finite(self.trainable)
                if self._all_ranks(finite and non_finite == 0):
                    if deepspeed:
                        grad_norm = self.model.get_global_grad_norm()
                    elif self.fsdp2 is not None:
                        grad_norm = clip_grad_norm(self.trainable, cfg.max_grad_norm)
                    else:
                        grad_norm = acc.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                    stats.setdefault("grad_norm", []).append(float(grad_norm))
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    if self.ema is not None:
                        self.ema.step(self.trainable)
                    taken += 1
                    self._iteration_optimizer_steps = taken
                else:
                    skipped += 1
                    logger.warning("Step %d: non-finite loss or gradient on a rank; optimiser step skipped.", step)
                self.optimizer.zero_grad(set_to_none=True)
            micro_done += len(micro)
        logs = {k: sum(v) / len(v) for k, v in stats.items()}
        logs["optimizer_steps"] = taken
        if skipped:
            logs["skipped_updates"] = skipped
        return logs

    @staticmethod
    def _step_pieces(train_steps: list[list[int]], idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """The forwards of one micro-batch: `(window step, samples)` pairs, K of them when every sample of `idx`
        trains the same steps; with per-sample steps (DanceGRPO), the j-th trained step of each sample, samples that
        share it batched together."""
        rows = [train_steps[j] for j in idx.tolist()]
        pieces = []
        for j in range(len(rows[0])):
            column = torch.tensor([r[j] for r in rows])
            for t in sorted(set(column.tolist())):
                pieces.append((t, idx[column == t]))
        return pieces

    def _gradient_sync(self, sync: bool):
        """The context of one forward + backward: DDP's `no_sync` unless this backward is the one that reduces the
        gradients. DeepSpeed decides at the backward (`_deepspeed_backward`), and the FSDP2 model (torch's
        `fully_shard`, outside accelerate) reduce-scatters at every backward, which accumulates correctly."""
        acc = self.accelerator
        if sync or acc.num_processes == 1 or self.zero_stage is not None or self.fsdp2 is not None:
            return nullcontext()
        return acc.no_sync(self.model)

    def _window_step_loss(self, batch, t, idx, advantages, autocast):
        """`grpo_loss` of the samples `idx` at window step `t`, recomputing their log-probs under the current weights
        (and, with the reference KL, under the base model)."""
        cfg, pipe = self.config, self.pipeline
        logp, mean, std = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
        ref_mean = None
        if cfg.kl_type == "reference" and cfg.kl_coeff > 0:
            with torch.no_grad(), self._reference_policy():
                _, ref_mean, _ = pipe.log_prob(batch, t, idx, autocast_dtype=autocast, return_stats=True)
        return grpo_loss(
            logp,
            batch.log_probs[idx, batch.step_position(t)].to(logp.device),
            advantages[idx.to(advantages.device)],
            clip_range=cfg.clip_range,
            kl_type=cfg.kl_type if cfg.kl_coeff > 0 else "none",
            kl_coeff=cfg.kl_coeff,
            prev_sample_mean=mean,
            ref_prev_sample_mean=ref_mean,
            std_dev=std,
        )

    def _deepspeed_backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """One backward under DeepSpeed: only the last backward of an accumulation group is the engine's gradient
        accumulation boundary (where it reduces, clips with `max_grad_norm`, steps the optimiser and zeroes the
        gradients); the loss is already scaled by the trainer, so the engine does not divide it again. The boundary
        is what accelerate's `backward` reads from `gradient_state.sync_gradients` (set here as its own `accumulate`
        context sets it)."""
        state = self.accelerator.gradient_state
        state._set_sync_gradients(boundary)
        try:
            self.accelerator.backward(loss, scale_wrt_gas=False)
        finally:
            state._set_sync_gradients(True)

    def train_step(self) -> dict[str, float]:
        """One GRPO iteration; returns the logged scalars."""
        cfg, step = self.config, self.global_step
        # A stop before this iteration ends rewinds to here (`_rewind`): the RNGs and counters changed on the way.
        self._iteration_start = IterationStart(self, counters=("bad_group_streak",))
        self._iteration_optimizer_steps = 0
        times = {}
        t0 = time.perf_counter()
        start, size = self.window.current()
        self._phase("rollout")
        per_piece = max(1, (cfg.sample_max_batch_size or cfg.rollouts_per_device) // cfg.num_generations)
        if self.overlap_rewards and cfg.sample_prompts_per_device > per_piece:
            from .overlap import rollout_with_rewards_alongside

            pieces = [slice(p, p + per_piece) for p in range(0, cfg.sample_prompts_per_device, per_piece)]
            batch, scores, waited = rollout_with_rewards_alongside(
                pieces, lambda piece: self._rollout(step, piece), self._score
            )
            times["time/rollout"] = time.perf_counter() - t0 - waited
            times["time/reward"] = waited  # the reward time not hidden behind the rollout
        else:
            batch = self._rollout(step)
            times["time/rollout"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            self._phase("reward")
            scores = self._score(batch)
            times["time/reward"] = time.perf_counter() - t0
        self._check_stop("its rewards")
        advantages, keep, all_scores, all_keep, per_reward = self._advantages(batch, scores)
        dropped = int((~all_keep).sum())
        if dropped:
            self.bad_group_streak += 1
            logger.warning("Step %d: %d samples in groups with non-finite rewards were dropped.", step, dropped)
            if self.bad_group_streak >= cfg.max_consecutive_bad_groups:
                raise TrainingStopped(
                    f"{self.bad_group_streak} training steps in a row had non-finite rewards "
                    f"(max_consecutive_bad_groups={cfg.max_consecutive_bad_groups}); stopping. The last good "
                    f"checkpoint is {self.checkpoints.latest()}."
                )
        else:
            self.bad_group_streak = 0
        t0 = time.perf_counter()
        self._phase("update")
        # `all_keep` (gathered) and not this rank's `keep`: a rank whose groups were all dropped still takes part in
        # the update while another rank trains, or that rank would wait for it in the gradient reduction forever.
        update_stats = self._update(batch, advantages, all_keep, step) if all_keep.any() else {"optimizer_steps": 0}
        times["time/update"] = time.perf_counter() - t0
        finite = {k: v[all_keep] for k, v in all_scores.items()}
        total = sum(self.reward.weights[k] * finite[k] for k in finite)
        self._check_update_health(step, bool(all_keep.any()), update_stats, finite)
        self.window.step()
        self.global_step += 1
        self._iteration_start = self._restore_point = None  # the iteration is complete: nothing to rewind

        logs = {f"train/{k}": v for k, v in update_stats.items()}
        if all_keep.any():
            logs["reward/mean"] = float(total.mean())
            logs["reward/std"] = float(total.std()) if total.numel() > 1 else 0.0
            for k, v in finite.items():
                logs[f"reward/{k}"] = float(v.mean())
            for k, v in per_reward.items():
                logs[f"advantage/{k}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        logs.update(
            {
                "advantage/mean": float(advantages[keep].mean()) if keep.any() else 0.0,
                "advantage/abs_mean": float(advantages[keep].abs().mean()) if keep.any() else 0.0,
                "window/start": start,
                "window/size": size,
                "nfe/rollout_per_image": batch.nfe / batch.batch_size,
                "nfe/train_per_image": self._num_train_steps(len(batch.step_indices)) * cfg.num_inner_epochs,
                "data/dropped_samples": dropped,
                "lr": self.lr_scheduler.get_last_lr()[0],
                **times,
            }
        )
        if "reward/mean" in logs:
            self.history.setdefault("train_reward", []).append((self.global_step, logs["reward/mean"]))
        return logs

    def _check_update_health(
        self, step: int, any_kept: bool, update_stats: dict, scores: dict[str, torch.Tensor]
    ) -> None:
        """Stop when no optimiser step was taken for `max_consecutive_bad_groups` steps in a row (non-finite losses or
        gradients: the LoRA would silently stay untrained); warn loudly when the rewards leave every advantage at 0
        for `CONSTANT_REWARD_WARN_STEPS` steps in a row (nothing is learned)."""
        cfg = self.config
        if any_kept and "grad_norm" not in update_stats:
            self.skipped_update_streak += 1
            if self.skipped_update_streak >= max(1, cfg.max_consecutive_bad_groups):
                described = ", ".join(
                    f"{k} mean {float(v.double().mean()):.3g} (max |r| {float(v.abs().max()):.3g})"
                    for k, v in scores.items()
                    if v.numel()
                )
                raise TrainingStopped(
                    f"{self.skipped_update_streak} training steps in a row skipped every optimiser step (non-finite "
                    f"loss or gradients) up to step {step}; rewards: {described}. Lower the learning rate or rescale "
                    f"the reward; the last complete checkpoint is {self.checkpoints.latest()}."
                )
        elif any_kept:
            self.skipped_update_streak = 0
        if any_kept and getattr(self, "_all_advantages_zero", False):
            self.constant_reward_streak += 1
            if self.constant_reward_streak == CONSTANT_REWARD_WARN_STEPS:
                constant = {k: float(v[0]) for k, v in scores.items() if v.numel() and bool((v == v[0]).all())}
                what = (
                    "every image got the same reward (" + ", ".join(f"{k}={v:.4g}" for k, v in constant.items()) + ")"
                    if constant and len(constant) == len(scores)
                    else "every image of each group got the same reward"
                )
                logger.warning(
                    "!!! For %d training steps in a row %s, so every advantage is 0 and nothing is learned. Look at "
                    "the samples (all black or identical? a prompt length the model was not trained with, see "
                    "max_sequence_length) and at the reward.",
                    self.constant_reward_streak,
                    what,
                )
        elif any_kept:
            self.constant_reward_streak = 0

    def _phase(self, name: str) -> None:
        """Show the current phase (rollout / reward / update / eval) on the run's progress bar."""
        if self._bar is not None:
            self._bar.set_description(f"MixGRPO [{name}]")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self,
        prompts: Optional[Sequence[str]] = None,
        num_images_per_prompt: Optional[int] = None,
        seed: Optional[int] = None,
        grid_prompts: int = VALIDATION_GRID_PROMPTS,
    ) -> Optional[EvaluationResult]:
        """Score deterministic (ODE, no SDE window) samples of `prompts` (default: `eval_prompts`) with every reward.

        Image `j` of prompt `i` starts from the noise of `eval_seed(seed, i, j)` (`seed` default:
        `validation_seed`; `num_images_per_prompt` default: `validation_images_per_prompt`); the prompt x image items
        are split across the processes (`evaluation.shard_items`) and the scores gathered, so every process returns
        the same `EvaluationResult` and the scores do not depend on the number of processes. The result keeps the
        images of the first `grid_prompts` prompts. Uses the EMA weights when EMA is on. `None` without prompts."""
        cfg, acc = self.config, self.accelerator
        prompts = list(prompts if prompts is not None else self.eval_prompts)
        if not prompts:
            return None
        n = int(num_images_per_prompt or cfg.validation_images_per_prompt)
        seed = cfg.validation_seed if seed is None else int(seed)
        items = eval_items(len(prompts), n)
        slots = shard_items(len(items), acc.process_index, acc.num_processes)
        # padding slots repeat this process's first item (a process with no item of its own repeats item 0)
        real = [k for k in slots if k is not None]
        run = [k if k is not None else (real[0] if real else 0) for k in slots]
        chunk = cfg.sample_max_batch_size or cfg.rollouts_per_device
        scored, pictures = [], []
        ctx = self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext()
        with ctx:
            for lo in range(0, len(run), chunk):
                keys, live = run[lo : lo + chunk], slots[lo : lo + chunk]
                item_prompts = [prompts[items[k][0]] for k in keys]
                batch = self.pipeline.rollout(
                    item_prompts,
                    prompt_embeds=self._cached_embeds(item_prompts),
                    num_generations=1,
                    num_inference_steps=cfg.num_inference_steps,
                    sde_window=(0, 0),
                    guidance_scale=cfg.guidance_scale,
                    height=cfg.height or cfg.resolution,
                    width=cfg.width or cfg.resolution,
                    generator=[torch.Generator().manual_seed(eval_seed(seed, *items[k])) for k in keys],
                    max_batch_size=cfg.sample_max_batch_size,
                    autocast_dtype=self._autocast_dtype(),
                    step_callback=lambda: self._check_stop("an evaluation"),
                    **self._video_kwargs(),
                )
                scores = {name: v.detach().float().cpu() for name, v in self._score(batch).items()}
                images = None
                for row, k in enumerate(live):
                    if k is None:
                        continue
                    scored.append((k, {name: float(v[row]) for name, v in scores.items()}))
                    if items[k][0] < grid_prompts:
                        images = images if images is not None else batch.pil_images()
                        pictures.append((k, images[row]))
        scored, pictures = gather_items(scored), gather_items(pictures)
        names = list(self.reward.rewards)
        return EvaluationResult(
            prompts=prompts,
            images_per_prompt=n,
            seeds=[eval_seed(seed, i, j) for i, j in items],
            scores={name: [values[name] for _, values in scored] for name in names},
            weights=dict(self.reward.weights),
            images=[image for _, image in pictures],
            seed=seed,
            prompts_source=self.eval_prompts_source if prompts == self.eval_prompts else "evaluate(prompts=...)",
        )

    def _log_eval(self) -> Optional[float]:
        self._phase("eval")
        if self.evaluation_hook is not None:
            scalars = dict(self.evaluation_hook(self))
            for name, value in scalars.items():
                self.history.setdefault(f"eval_{name}", []).append((self.global_step, float(value)))
            self.accelerator.log({f"eval/{k}": v for k, v in scalars.items()}, step=self.global_step)
            return scalars.get("reward")
        result = self.evaluate()
        if result is None:
            return None
        total = result.reward
        self.history.setdefault("eval_reward", []).append((self.global_step, total))
        self.accelerator.log(
            {"eval/reward": total, **{f"eval/{k}": v for k, v in result.means.items()}}, step=self.global_step
        )
        if self.accelerator.is_main_process:
            log_table(
                self.accelerator, "eval/per_prompt", result.table_columns(), result.table_rows(), self.global_step
            )
            if result.images:
                captions = result.item_prompts[: len(result.images)]
                log_image_grid(
                    self.accelerator,
                    result.images,
                    self.global_step,
                    tag="validation",
                    captions=captions,
                    cols=result.images_per_prompt,
                )
        return total

    # ------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        state = {
            "global_step": self.global_step,
            "window": self.window.state_dict(),
            "bad_group_streak": self.bad_group_streak,
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "config": self.config.to_dict(),
            "config_changes": list(self.config_changes),
            "prompts_sha256": prompts_fingerprint(self.train_prompts),
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def save_checkpoint(self) -> str:
        path = self.checkpoints.save(
            self.global_step, self.accelerator, self._trainer_state(), **self._checkpoint_kwargs(load=False)
        )
        self._saved_this_run[self.global_step] = path
        return path

    def resume(self, resume_from_checkpoint: Optional[str]) -> bool:
        """Resume from `"latest"` or a checkpoint folder; returns whether a checkpoint was loaded.

        `"latest"` tries the complete checkpoints newest first: one whose files are missing, truncated or corrupt
        is named in a warning and the previous one is used. A checkpoint trained with other settings (see
        `resume.APPLIED_ON_RESUME`) or holding non-finite weights stops with `CheckpointError`."""
        candidates = self.checkpoints.candidates(resume_from_checkpoint)
        if not candidates:
            names = ("pytorch_lora_weights.safetensors", "model_index.json")  # LoRA, full fine-tune
            final = next(
                (p for p in (os.path.join(self.config.output_dir, n) for n in names) if os.path.isfile(p)), None
            )
            logger.warning(
                "resume_from_checkpoint=%r but %s holds no checkpoint; starting fresh%s.",
                os.fspath(resume_from_checkpoint),
                self.config.output_dir,
                f" (the weights of the finished run, {final}, will be replaced)" if final else "",
            )
        failures = []
        for path in candidates:
            try:
                self._resume_from(path)
                return True
            except CorruptCheckpointError as err:
                if resume_from_checkpoint != "latest":
                    raise
                failures.append(str(err))
                logger.warning("%s Falling back to the previous checkpoint.", err)
        if failures:
            raise CheckpointError(
                f"No usable checkpoint in {self.config.output_dir!r}: {failures[-1]} (and every earlier checkpoint "
                f"failed too); start a new run in another output_dir."
            )
        return False

    def _resume_from(self, path: str) -> None:
        cfg, acc = self.config, self.accelerator
        self.checkpoints.verify(path)
        saved = self.checkpoints.read_trainer_state(path)
        changes = config_changes(saved["config"], cfg.to_dict(), path) if "config" in saved else {}
        if saved.get("prompts_sha256", prompts_fingerprint(self.train_prompts)) != prompts_fingerprint(
            self.train_prompts
        ):
            raise CheckpointError(
                f"Cannot resume {path}: the {len(self.train_prompts)} training prompts (prompt_file="
                f"{cfg.prompt_file!r}) are not those it was trained with; resume with the same prompts, or start a "
                f"new run in another output_dir."
            )
        state = self.checkpoints.load(path, acc, **self._checkpoint_kwargs(load=True))
        check_finite(
            ((n, local_tensor(p)) for n, p in self.pipeline.denoiser.named_parameters() if p.requires_grad), path
        )
        self.global_step = int(state["global_step"])
        self.window.load_state_dict(state["window"])
        self.bad_group_streak = int(state.get("bad_group_streak", 0))
        self.history = {k: [tuple(p) for p in v] for k, v in state.get("history", {}).items()}
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.config_changes = list(state.get("config_changes", []))
        if "learning_rate" in changes:
            set_learning_rate(self.optimizer, self.lr_scheduler, cfg.learning_rate)
        logger.info("Resuming from %s at step %d of %d.", path, self.global_step, cfg.max_train_steps)
        if changes:
            changes.pop("resume_from_checkpoint", None)
        if changes:
            self.config_changes.append({"step": self.global_step, "changes": changes})
            logger.warning(
                "Resumed with changed settings, applied from step %d on: %s.",
                self.global_step,
                ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()),
            )

    def _write_run_config(self) -> None:
        """`training_config.yaml` (and the prompts, when they were handed over as a list) at the start of a run, so
        that an interrupted run can be resumed from its output folder alone."""
        cfg = self.config
        if not self.accelerator.is_main_process:
            return
        os.makedirs(cfg.output_dir, exist_ok=True)
        if self._prompts_given and cfg.prompt_file == os.path.abspath(os.path.join(cfg.output_dir, PROMPTS_FILE)):
            with open(cfg.prompt_file, "w", encoding="utf-8") as f:
                f.write("\n".join(self.train_prompts) + "\n")
        cfg.to_yaml(os.path.join(cfg.output_dir, RUN_CONFIG_FILE))

    def _agreed_stop(self) -> Optional[int]:
        """The signal that asks this run to stop, agreed by every process (a signal may reach only some ranks): the
        largest signal number any rank received, 0 for none, as `None`. Collective when there are several ranks."""
        interrupt = self._interrupt
        signum = (interrupt.requested or 0) if interrupt is not None else 0
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            flag = torch.tensor([signum], dtype=torch.int32, device=self.accelerator.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum or None

    def _check_stop(self, where: str) -> None:
        """A boundary of the run: raise `Preempted` on every rank when any rank received SIGTERM / SIGINT. Only
        inside `train()` (on every rank alike), so the ranks call it, and all-reduce, the same number of times."""
        if self._interrupt is None:
            return
        signum = self._agreed_stop()
        if signum is not None:
            raise Preempted(signum, where)

    def _rewind(self) -> bool:
        """Undo an unfinished iteration (its optimiser steps, RNG draws and counters); returns whether there was one."""
        self.optimizer.zero_grad(set_to_none=True)
        unfinished = self._iteration_start is not None
        if self._restore_point is not None:
            self._restore_point.restore()
        if self._iteration_start is not None:
            self._iteration_start.restore()
        self._iteration_start = self._restore_point = None
        return unfinished

    def _save_on_stop(self, stop: Preempted) -> str:
        """Rewind to the start of the interrupted iteration and save its state (a checkpoint this run already wrote of
        that state is reused), with one log line: the signal, the iteration, where it stopped, what was saved."""
        cfg = self.config
        undone = self._iteration_optimizer_steps if self._restore_point is not None else 0
        rewound = self._rewind()
        t0 = time.perf_counter()
        reused = self.checkpoints.is_complete(self._saved_this_run.get(self.global_step, "-"))
        path = self._saved_this_run[self.global_step] if reused else self.save_checkpoint()
        interrupt = self._interrupt
        timing = ["already saved" if reused else f"saved in {time.perf_counter() - t0:.1f} s"]
        if interrupt is not None and interrupt.received_at is not None:
            timing.append(f"{time.monotonic() - interrupt.received_at:.1f} s after the signal")
        if rewound:
            what = f"stopped step {self.global_step + 1} of {cfg.max_train_steps} during {stop.where}" + (
                f" and undid its {undone} optimiser step(s)" if undone else ""
            )
        else:
            what = f"stopped after step {self.global_step} of {cfg.max_train_steps} ({stop.where})"
        if self.accelerator.is_main_process:
            logger.warning(
                "%s: %s; the state after step %d is at %s (%s).",
                signal_name(stop.signum),
                what,
                self.global_step,
                path,
                ", ".join(timing),
            )
        return path

    # ------------------------------------------------------------------ the run
    def train(self) -> TrainOutput:
        """Run to `max_train_steps`: resume if asked, checkpoint, evaluate, log; save (and push) the result.

        SIGTERM / SIGINT during the run stop at the next boundary (a denoiser call, a trained micro-batch: see
        `interrupts.py`), rewind the unfinished iteration, write a complete checkpoint of the state at its start and
        return early (`TrainOutput.interrupted_by`, `TrainOutput.checkpoint`); a second signal stops at once."""
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        if acc.is_main_process:
            self.checkpoints.cleanup()  # leftovers of an interrupted save or prune
        acc.wait_for_everyone()
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)
        elif self.checkpoints.latest() is not None:
            logger.warning(
                "%s already holds checkpoints (newest: %s); this run starts fresh (resume_from_checkpoint is unset) "
                "and replaces those of the same steps.",
                cfg.output_dir,
                os.path.basename(self.checkpoints.latest()),
            )
        start_step = self.global_step
        interrupted, checkpoint = None, None
        # logging_redirect_tqdm: a warning during the run gets a line of its own instead of being glued to the bar
        with GracefulInterrupt() as interrupt, logging_redirect_tqdm():
            self._interrupt = interrupt
            try:
                self._run_loop()
            except Preempted as stop:
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
                checkpoint = self._save_on_stop(stop)
                interrupted = signal_name(stop.signum)
            finally:
                self._interrupt = None
        weights = None
        if interrupted is None:
            weights = self.save_model(cfg.output_dir)
            acc.wait_for_everyone()
            if cfg.push_to_hub and acc.is_main_process:
                self.push_to_hub()
        acc.end_training()
        summary = self._summarize(start_step, time.perf_counter() - started, weights, interrupted, checkpoint)
        return TrainOutput(self.global_step, dict(self.history), cfg.output_dir, summary, interrupted, checkpoint)

    def _run_loop(self) -> None:
        """`train()`'s steps: evaluations, logs and checkpoints; a stop signal raises `Preempted` at a boundary."""
        cfg, acc = self.config, self.accelerator
        self._write_run_config()
        init_trackers(acc, cfg, resuming=self.global_step > 0)
        evaluated = any(k.startswith("eval_") for k in self.history)  # a resume from checkpoint-0 has its eval
        if self.global_step == 0 and self.eval_prompts and cfg.validation_steps and not evaluated:
            self._log_eval()
        self._bar = bar = tqdm(
            total=cfg.max_train_steps,
            initial=self.global_step,
            desc="MixGRPO",
            disable=not acc.is_local_main_process,
        )
        while self.global_step < cfg.max_train_steps:
            logs = self.train_step()
            if self.global_step % cfg.logging_steps == 0:
                acc.log(logs, step=self.global_step)
            bar.update(1)
            bar.set_postfix(reward=f"{logs.get('reward/mean', float('nan')):.3f}", window=logs["window/start"])
            self._check_stop("the end of the step")
            if cfg.validation_steps and self.eval_prompts and self.global_step % cfg.validation_steps == 0:
                self._log_eval()
            if cfg.checkpointing_steps and self.global_step % cfg.checkpointing_steps == 0:
                self.save_checkpoint()
        bar.close()
        self._bar = None
        evals = self.history.get("eval_reward", [])
        if cfg.validation_steps and self.eval_prompts and (not evals or evals[-1][0] != self.global_step):
            self._log_eval()  # the summary's evaluation reward is that of the weights being saved

    def _summarize(self, start_step, seconds, weights, interrupted, checkpoint) -> RunSummary:
        summary = RunSummary.from_history(
            self.history,
            output_dir=self.config.output_dir,
            weights=weights,
            steps=self.global_step,
            max_train_steps=self.config.max_train_steps,
            seconds=seconds,
            interrupted_by=interrupted,
            checkpoint=checkpoint,
            config_changes=list(self.config_changes),
        )
        if self.accelerator.is_main_process:
            for line in summary.lines():
                logger.info(line)
            try:
                summary.write()
            except OSError as err:
                logger.warning("Could not write the run summary: %s", err)
        return summary

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str) -> Optional[str]:
        """LoRA: the family's diffusers LoRA file (`pytorch_lora_weights.safetensors`, loadable by a stock pipeline's
        `load_lora_weights`); full fine-tune: the whole pipeline folder. Plus the reward curve and config. Returns
        the path of the weights (on the main process). A full disk raises `DiskFullError`."""
        acc = self.accelerator
        acc.wait_for_everyone()
        gathered = None
        if is_sharded(self.trainable):  # every rank takes part in gathering the full weights (rank 0 gets them)
            gathered = full_state_dict(self.pipeline.denoiser, trainable_only=self.config.use_lora)
        elif is_zero3_partitioned(self.pipeline.denoiser.parameters()):
            gathered = zero3_full_state_dict(self.pipeline.denoiser, trainable_only=self.config.use_lora)
        if not acc.is_main_process:
            return None
        try:
            weights = self._save_weights(output_dir, gathered)
        except Exception as err:
            raise_if_disk_full(err, output_dir, "the final weights")
            raise
        self.config.to_yaml(os.path.join(output_dir, RUN_CONFIG_FILE))
        if self.history:
            plot_reward_curve(self.history, os.path.join(output_dir, "reward_curve.png"))
        apply_umask(output_dir if not self.config.use_lora else weights)
        return weights

    def _save_weights(self, output_dir: str, gathered: Optional[dict[str, torch.Tensor]] = None) -> str:
        """`gathered`: the full weights of a sharded denoiser (`full_state_dict`), written instead of its shards."""
        os.makedirs(output_dir, exist_ok=True)
        denoiser = self.accelerator.unwrap_model(self.pipeline.denoiser)
        ctx = self.ema.average_parameters(self.trainable) if self.ema is not None else nullcontext()
        with ctx:
            if self.config.use_lora:
                from diffusers.utils import convert_state_dict_to_diffusers
                from peft.utils import get_peft_model_state_dict

                layers = get_peft_model_state_dict(denoiser, state_dict=gathered)
                if self.pipeline.family.lora_legacy_keys:
                    layers = convert_state_dict_to_diffusers(layers)
                key = self.pipeline.family.denoiser_name  # "unet" or "transformer"
                kwargs = {f"{key}_lora_layers": layers}
                # The adapter's config (rank, lora_alpha, targets) goes into the file: without it a stock pipeline
                # loads the LoRA with lora_alpha = rank, i.e. at rank / lora_alpha of its trained strength.
                if (
                    f"{key}_lora_adapter_metadata"
                    in inspect.signature(type(self.pipeline.stock_pipeline).save_lora_weights).parameters
                ):
                    kwargs[f"{key}_lora_adapter_metadata"] = denoiser.peft_config["default"].to_dict()
                self.pipeline.save_lora_weights(output_dir, **kwargs, safe_serialization=True)
                return os.path.join(output_dir, "pytorch_lora_weights.safetensors")
            stock = self.pipeline.stock_pipeline
            if gathered is None:
                stock.save_pretrained(output_dir, safe_serialization=True)
                return output_dir
            # Swap a plain copy in for the save (object.__setattr__: the pipeline's config keeps its class names).
            name = next(k for k, v in stock.components.items() if v is self.pipeline.denoiser)
            object.__setattr__(stock, name, unsharded_copy(self.pipeline.denoiser, gathered))
            try:
                stock.save_pretrained(output_dir, safe_serialization=True)
            finally:
                object.__setattr__(stock, name, self.pipeline.denoiser)
            return output_dir

    def push_to_hub(self) -> str:
        """Model card + weights to `hub_model_id` (token from huggingface_hub's usual mechanisms).

        What is uploaded is staged in `output_dir/.hub-upload` (hard links): the weights, the reward curve and the
        logs, plus a model card and a `training_config.yaml` without local paths (`public_config_dict`); the run's
        own config, summary and prompt copy stay local."""
        from .hub import push_folder_to_hub, stage_upload_folder, write_model_card

        cfg = self.config
        repo_id = cfg.resolved_hub_model_id()
        staging = stage_upload_folder(cfg.output_dir)
        try:
            write_model_card(
                staging,
                cfg,
                base_model=cfg.pretrained_model_name_or_path,
                method=cfg.method,
                reward_history=self.history,
                repo_id=repo_id,
            )
            return push_folder_to_hub(staging, repo_id, private=cfg.hub_private, token=cfg.hub_token)
        finally:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
