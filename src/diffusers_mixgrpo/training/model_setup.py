"""The model of a training run, made ready to train: the pipeline loaded, the modules placed (offloaded, or sharded with
FSDP2), the rollout scheduler configured, the trained parameters chosen (LoRA or full) in float32, the optimiser and
learning-rate schedule built and prepared by accelerate, and the memory options of the frozen modules."""

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from ..pipelines.families.registry import default_lora_target_modules
from ..pipelines.pipeline_grpo import GRPOTrainingPipeline
from ..pipelines.prompt_cache import PromptEmbedsCache
from .config import GRPOConfig
from .distributed import (
    FSDP2Options,
    apply_fsdp2,
    cast_trainable_shards,
    configure_deepspeed,
    fsdp2_options_from_accelerate,
)
from .ema import ParameterEMA
from .errors import ConfigError, ModelLoadError
from .model_defaults import read_sampling_defaults

logger = logging.getLogger(__name__)


def apply_tf32(allow: bool, device: Union[str, torch.device]) -> None:
    """`allow_tf32`: TF32 matmuls and cuDNN convolutions on (True) or off (False) when training on CUDA (Ampere and
    newer GPUs; float32 matmuls then round their inputs to 10 mantissa bits). Other devices are left alone."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(allow)
        torch.backends.cudnn.allow_tf32 = bool(allow)


def build_accelerator(config: GRPOConfig) -> Any:
    """The run's `Accelerator` when none is handed over: `mixed_precision`, the trackers of `report_to`, and the
    logging folder under `output_dir`."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from .logging_utils import resolve_report_to

    return Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=resolve_report_to(config.report_to),
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=os.path.join(config.output_dir, config.logging_dir)
        ),
    )


def resolve_fsdp2(config: GRPOConfig, fsdp2: Optional[Union[bool, FSDP2Options]]) -> Optional[FSDP2Options]:
    """The FSDP2 options of `GRPOTrainer(fsdp2=...)`: as given, `True` for the defaults, and `None` for the config's
    `fsdp2` settings (`fsdp2_reshard_after_forward`, `fsdp2_cpu_offload`); `None` when not sharding."""
    if fsdp2 is None and config.fsdp2:
        fsdp2 = FSDP2Options(
            reshard_after_forward=config.fsdp2_reshard_after_forward, cpu_offload=config.fsdp2_cpu_offload
        )
    return (FSDP2Options() if fsdp2 is True else fsdp2) or None


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


def apply_model_defaults(config: GRPOConfig, pipe: GRPOTrainingPipeline) -> None:
    """Prompt length: `max_sequence_length`, else the model folder's `sampling_defaults.json`. The folder's other
    sampling defaults only warn when the config differs (the config's values may have been chosen on purpose; the
    command line applies them to the values not given)."""
    try:
        defaults = read_sampling_defaults(getattr(pipe, "name_or_path", None))
    except ConfigError as err:
        logger.warning("%s", err)
        defaults = {}
    if config.max_sequence_length is not None:
        pipe.max_sequence_length = config.max_sequence_length
    elif "max_sequence_length" in defaults and pipe.max_sequence_length is None:
        pipe.max_sequence_length = int(defaults["max_sequence_length"])
    size = defaults.get("resolution")
    expected = {
        "num_inference_steps": defaults.get("num_inference_steps"),
        "guidance_scale": defaults.get("guidance_scale"),
        "height": defaults.get("height", size),
        "width": defaults.get("width", size),
    }
    differ = {k: v for k, v in expected.items() if v is not None and getattr(config, k) != v}
    if differ:
        logger.warning(
            "The model folder's sampling_defaults.json has %s; this run uses %s.",
            ", ".join(f"{k}={v}" for k, v in differ.items()),
            ", ".join(f"{k}={getattr(config, k)}" for k in differ),
        )


def autocast_dtype(mixed_precision: Optional[str]) -> Optional[torch.dtype]:
    """The autocast dtype of the rollouts and the update forwards for `mixed_precision` (`None`: no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def rollout_settings(config: GRPOConfig, pipe: GRPOTrainingPipeline) -> dict[str, Any]:
    """The run's sampling settings of `pipeline.rollout` (steps, guidance, size, batch size, autocast), with
    `num_frames` for a video family's rollouts (image families take none: a set `num_frames` is refused)."""
    settings = {
        "num_inference_steps": config.num_inference_steps,
        "guidance_scale": config.guidance_scale,
        "height": config.height or config.resolution,
        "width": config.width or config.resolution,
        "max_batch_size": config.sample_max_batch_size,
        "autocast_dtype": autocast_dtype(config.mixed_precision),
    }
    if pipe.family.is_video:
        settings["num_frames"] = config.num_frames
    elif config.num_frames is not None:
        raise ConfigError(
            f"num_frames={config.num_frames} is for video families (wan); this run's family is "
            f"{pipe.model_family!r}: leave num_frames unset."
        )
    return settings


def place_modules(config: GRPOConfig, pipe: GRPOTrainingPipeline, device: torch.device, sharded: bool) -> None:
    """Offloaded modules (`offload_text_encoders`, `offload_vae`) stay on the CPU and visit the device per call; the
    others move to `device`, except a denoiser about to be sharded (`fully_shard` moves it one wrap unit at a time)."""
    offload = (["text_encoders"] if config.offload_text_encoders in ("cpu", "free") else []) + (
        ["vae"] if config.offload_vae else []
    )
    if offload:  # the offloaded modules never visit the device as a whole model set (a 24 GB card would OOM)
        pipe.enable_model_cpu_offload(device=device, modules=offload)
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module) or name in pipe.offloaded_modules:
            continue
        if sharded and module is pipe.denoiser:
            continue
        module.to(device)


@contextmanager
def reference_policy(denoiser):
    """The base model for the reference KL (`kl_type: reference`): the LoRA switched off for the block and switched back
    on after it (`disable_adapters` / `enable_adapters`): no second copy of the model. A full fine-tune has none."""
    denoiser.disable_adapters()
    try:
        yield
    finally:
        denoiser.enable_adapters()


def check_family_settings(config: GRPOConfig, pipe: GRPOTrainingPipeline) -> None:
    """The settings a VP-diffusion family (SD1.5, SDXL: a DDIM window) refuses, known once the model is loaded: a
    `ConfigError` naming the value. The trainer calls it right after loading, before the rewards load."""
    if pipe.family.scheduler_kind != "vp":
        return
    if config.eta is not None and config.eta > 1:
        raise ConfigError(
            f"eta={config.eta:g} is not allowed for a {pipe.model_family!r} model, whose window is a DDIM step: "
            f"DDIM's eta must lie in (0, 1] (usual: 1.0, DDPM-like), as above 1 its sqrt(1 - a_prev - std^2) is "
            f"undefined."
        )
    if config.ratio_norm:
        raise ConfigError(
            f"ratio_norm=True needs a flow-matching model (its 1/|dt| step weights and SDE means); "
            f"{pipe.model_family!r} is a VP diffusion model: set ratio_norm=False."
        )


def configure_rollout_scheduler(config: GRPOConfig, pipe: GRPOTrainingPipeline) -> None:
    """The pipeline's scheduler rebuilt with the run's SDE settings (and, for flow models, its timestep grid)."""
    overrides = {"sde_type": config.sde_type, "eta": config.eta, "log_prob_reduction": config.log_prob_reduction}
    check_family_settings(config, pipe)
    if pipe.family.scheduler_kind == "flow":
        # The paper's grid: a fixed shift s (no resolution-dependent `mu`), Flash tail per the method preset.
        if config.shift is not None and pipe.scheduler.config.get("use_flow_sigmas", False):
            overrides.update(flow_shift=config.shift)  # SANA / Wan: the DPM-Solver / UniPC grid's shift
        elif config.shift is not None:
            overrides.update(shift=config.shift, use_dynamic_shifting=False)
        overrides.update(
            cps_log_prob=config.cps_log_prob,
            tail_solver=config.tail_solver,
            tail_solver_order=config.tail_solver_order,
            tail_ratio=config.tail_ratio,
        )
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **overrides)
    pipe.family.stock.scheduler = pipe.scheduler


def _add_lora(config: GRPOConfig, pipe: GRPOTrainingPipeline) -> None:
    from peft import LoraConfig

    denoiser = pipe.denoiser
    denoiser.requires_grad_(False)
    targets = config.lora_target_modules or default_lora_target_modules(pipe.model_family)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
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


def prepare_trainable(
    config: GRPOConfig, pipe: GRPOTrainingPipeline, fsdp2: Optional[FSDP2Options]
) -> list[torch.nn.Parameter]:
    """Freeze what is not trained, add the LoRA adapters (or train every denoiser weight) and return the trained
    parameters, in float32 even in a bf16 model. With `fsdp2` the denoiser is sharded in its load dtype first and each
    rank's own shards are cast: no rank ever holds the whole denoiser in float32 (FLUX.1-dev: 48 GB)."""
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()
    denoiser = pipe.denoiser
    denoiser.eval()  # no dropout: the rollout and the training pass must be the same function
    if config.use_lora:
        _add_lora(config, pipe)
    else:
        denoiser.requires_grad_(True)
    if config.gradient_checkpointing:
        pipe.enable_gradient_checkpointing()
    if not any(p.requires_grad for p in denoiser.parameters()):
        raise ValueError("The denoiser has no trainable parameter; check lora_target_modules.")
    if fsdp2 is not None:
        if config.use_ema:
            raise ConfigError("use_ema is not supported with fsdp2 (sharded weights); set use_ema=False.")
        # No reference to the unsharded parameters may outlive `fully_shard`.
        apply_fsdp2(denoiser, fsdp2)
        cast_trainable_shards(denoiser, torch.float32)
        return [p for p in denoiser.parameters() if p.requires_grad]
    trainable = [p for p in denoiser.parameters() if p.requires_grad]
    for p in trainable:
        p.data = p.data.float()
    return trainable


def optimizer_steps_per_iteration(config: GRPOConfig) -> int:
    """The optimiser steps of one iteration, with a warning when `gradient_accumulation_steps` exceeds the
    micro-batches an iteration has."""
    micro = config.train_micro_batches_per_iteration
    if config.gradient_accumulation_steps > micro:
        logger.warning(
            "gradient_accumulation_steps=%d but an iteration has only %d training micro-batch(es) per device "
            "(train_batch_size=%s, %d rollouts per device): each iteration takes %d optimiser step(s). Set "
            "train_batch_size to train in smaller micro-batches (the official MixGRPO recipe: train_batch_size 1, "
            "gradient_accumulation_steps 3, 4 steps per iteration).",
            config.gradient_accumulation_steps,
            micro,
            config.train_batch_size,
            config.rollouts_per_device,
            config.optimizer_steps_per_iteration,
        )
    return config.optimizer_steps_per_iteration


def create_optimizer(config: GRPOConfig, trainable: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (`optimizer="adamw8bit"`), over the trained parameters."""
    optimizer_cls = torch.optim.AdamW
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("optimizer='adamw8bit' needs bitsandbytes: pip install bitsandbytes") from err
        optimizer_cls = bnb.optim.AdamW8bit
    return optimizer_cls(
        trainable,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        weight_decay=config.weight_decay,
    )


def create_lr_scheduler(config: GRPOConfig, optimizer: torch.optim.Optimizer, num_processes: int) -> Any:
    """diffusers' `lr_scheduler` over the run's optimiser steps (counted per process, as accelerate steps it)."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=optimizer_steps_per_iteration(config) * config.max_train_steps * num_processes,
    )


@dataclass
class PreparedModel:
    """What `prepare_model` returns.

    Attributes:
        model: the module the update's forwards run through (accelerate's wrapper; the sharded denoiser under FSDP2).
        trainable: the trained parameters (float32).
        optimizer, lr_scheduler: as prepared by accelerate (under FSDP2 the optimiser stays out of accelerate).
        ema: the `ParameterEMA` of the trained parameters, or `None`.
        fsdp2: the FSDP2 options the denoiser was sharded with (given, or from an FSDP2 launch config), or `None`.
        zero_stage: the DeepSpeed ZeRO stage, `None` unless launched with a DeepSpeed config.
    """

    model: torch.nn.Module
    trainable: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    ema: Optional[ParameterEMA]
    fsdp2: Optional[FSDP2Options]
    zero_stage: Optional[int]


def prepare_model(
    config: GRPOConfig, accelerator: Any, pipe: GRPOTrainingPipeline, fsdp2: Optional[FSDP2Options]
) -> PreparedModel:
    """Make `pipe` ready to train under `accelerator` (see the module docstring); `fsdp2`: shard the denoiser."""
    zero_stage = configure_deepspeed(accelerator, config, fsdp2=fsdp2 is not None)
    from_launch = fsdp2_options_from_accelerate(accelerator)  # accelerate launch with fsdp2.yaml: the fsdp2 path
    if from_launch is not None and fsdp2 is None:
        fsdp2, activation_checkpointing = from_launch
        if activation_checkpointing:
            pipe.enable_gradient_checkpointing()
    place_modules(config, pipe, accelerator.device, sharded=fsdp2 is not None)
    configure_rollout_scheduler(config, pipe)
    trainable = prepare_trainable(config, pipe, fsdp2)
    optimizer = create_optimizer(config, trainable)
    lr_scheduler = create_lr_scheduler(config, optimizer, accelerator.num_processes)
    denoiser = pipe.denoiser
    if fsdp2 is not None:
        # The sharded model and its optimiser stay out of accelerate (which would save rank 0's shards only); the
        # scheduler is prepared as in DDP runs, so the learning-rate curve is the same.
        model, lr_scheduler = denoiser, accelerator.prepare(lr_scheduler)
    else:
        model, optimizer, lr_scheduler = accelerator.prepare(denoiser, optimizer, lr_scheduler)
    pipe.family.forward_module = model if model is not denoiser else None
    ema = (
        ParameterEMA(trainable, decay=config.ema_decay, update_interval=config.ema_update_interval)
        if config.use_ema
        else None
    )
    return PreparedModel(model, trainable, optimizer, lr_scheduler, ema, fsdp2, zero_stage)


def setup_frozen_modules(
    config: GRPOConfig, accelerator: Any, pipe: GRPOTrainingPipeline, prompts: list[str]
) -> Optional[PromptEmbedsCache]:
    """The memory options of the modules that are not trained: VAE slicing / tiling, and the cache of the embeddings
    of `prompts` (returned; `None` without `cache_prompt_embeds`), after which the text encoders may be freed."""
    acc = accelerator
    if config.vae_slicing:
        pipe.enable_vae_slicing()
    if config.vae_tiling:
        pipe.enable_vae_tiling()
    if not config.cache_prompt_embeds:
        return None
    kwargs = dict(guidance_scale=config.guidance_scale, cache_dir=config.prompt_embeds_cache_dir, device=acc.device)
    with pipe.onloaded(pipe.TEXT_ENCODER_NAMES):  # offloaded encoders move to the device once, not per batch
        if config.prompt_embeds_cache_dir is not None and acc.num_processes > 1:
            if acc.is_main_process:  # the main process writes the shards; the others read them
                cache = PromptEmbedsCache(pipe, prompts, **kwargs)
            acc.wait_for_everyone()
            if not acc.is_main_process:
                cache = PromptEmbedsCache(pipe, prompts, read_only=True, progress=False, **kwargs)
        else:
            cache = PromptEmbedsCache(pipe, prompts, progress=acc.is_local_main_process, **kwargs)
    state = "loaded from" if cache.loaded_from_disk else "encoded into"
    logger.info(
        "Prompt embeddings of %d prompts %s %s.", len(cache), state, config.prompt_embeds_cache_dir or "CPU memory"
    )
    if config.offload_text_encoders == "free":
        pipe.free_text_encoders()
    return cache
