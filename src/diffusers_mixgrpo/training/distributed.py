"""Sharded training: torch's FSDP2 (`fully_shard`) under the trainer, DeepSpeed ZeRO through accelerate, and the
helpers that make the trainer's gradient checks, clipping, checkpoints and final weights work when parameters are
sharded (`DTensor`s, or ZeRO-3 partitions).

Two ways to shard the denoiser:

- **accelerate launch configs** (what users launch on GPUs: `examples/accelerate/*.yaml`): with `fsdp2.yaml`
  (FSDP version 2) the trainer takes the plugin's settings and shards the denoiser itself, as below
  (`fsdp2_options_from_accelerate`); with `deepspeed_zero2.yaml` / `deepspeed_zero3.yaml` accelerate builds the
  DeepSpeed engine in `prepare` (`configure_deepspeed` fills the config first).
- **torch's FSDP2 directly** (`GRPOTrainer(..., fsdp2=FSDP2Options())`, `fsdp2: true`, or an FSDP2 launch config):
  the trainer applies `fully_shard` to every transformer block and then to the root, before the optimiser is built,
  with the model in its load dtype (bf16), and then casts each rank's own shards of the trained weights to float32
  (`cast_trainable_shards`): no rank holds a full float32 copy (FLUX.1-dev: 48 GB); the denoiser reaches the GPU
  one wrap unit at a time, as shards.
  This runs on GPUs (NCCL) and on the CPU (gloo: accelerate 1.15 with `cpu=True` falls back to DDP and ignores an
  FSDP plugin), which is how the test suite proves that a sharded run equals a single-process one.

Under FSDP the trained weights are `DTensor`s, under ZeRO-3 each rank holds a slice: the full LoRA / model state
dict is gathered collectively (every rank calls, rank 0 receives it on the CPU) before the main process writes the
diffusers-format files. Checkpoints of the torch-FSDP2 path hold the trained parameters and the optimiser state in
`torch.distributed.checkpoint` format (`sharded_state/`, one file per rank; loadable with another number of ranks);
DeepSpeed runs write DeepSpeed's own checkpoint (`pytorch_model/`: the ZeRO partitions of the optimiser state, and
of the weights; LoRA runs leave the frozen base weights out).
"""

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

SHARDED_STATE_DIR = "sharded_state"


@dataclass
class FSDP2Options:
    """How `GRPOTrainer(fsdp2=...)` shards the denoiser with torch's `fully_shard`.

    Args:
        wrap_classes (`Sequence[str]`, *optional*): names of the module classes sharded as one unit each; default: the
            model's `_no_split_modules` (its transformer blocks: `FluxTransformerBlock`, `FluxSingleTransformerBlock`
            for FLUX, `JointTransformerBlock` for SD3).
        reshard_after_forward (`bool`, defaults to `True`): free a block's gathered weights after its forward (full
            shard, ZeRO-3 like); `False` keeps them until the backward (ZeRO-2 like, faster, more memory).
        param_dtype (`torch.dtype`, *optional*): dtype of the gathered weights for compute (e.g. `torch.bfloat16`);
            gradients are reduced in float32. `None`: the parameters' own dtype.
        cpu_offload (`bool`, defaults to `False`): keep the shards, gradients and optimiser state in CPU memory
            (`CPUOffloadPolicy`); on a CPU-only run it changes nothing.
    """

    wrap_classes: Optional[Sequence[str]] = None
    reshard_after_forward: bool = True
    param_dtype: Optional[torch.dtype] = None
    cpu_offload: bool = False


CPU_ADAM_DEFAULTS = (0.9, 0.999, 1e-8)  # DeepSpeedCPUAdam's betas and eps (accelerate passes only lr, weight_decay)


def fsdp2_options_from_accelerate(accelerator: Any) -> Optional[tuple[FSDP2Options, bool]]:
    """An `accelerate launch --config_file examples/accelerate/fsdp2.yaml` run (FSDP version 2) as the trainer's own
    FSDP2 path: `(FSDP2Options, activation_checkpointing)` from the launch config's plugin, or `None` for any other
    launch (FSDP version 1 stays with accelerate's `prepare`).

    The trainer then shards the denoiser itself, as with `fsdp2=True`, instead of accelerate's `prepare`: the same
    `fully_shard` per wrap class, but its checkpoints hold only the trained parameters (a LoRA run's adapters, not the
    frozen base weights) and the optimiser state. Taken from the plugin: the wrap classes (`TRANSFORMER_BASED_WRAP`;
    otherwise the model's `_no_split_modules`), `reshard_after_forward`, `cpu_offload` and activation checkpointing
    (diffusers' per-block gradient checkpointing). Not taken: the plugin's mixed-precision policy (the trainer's
    `mixed_precision` autocasts the forward, trained weights stay float32 as in every other path), its state-dict
    type (checkpoints are `torch.distributed.checkpoint` shards) and `cpu_ram_efficient_loading`."""
    from accelerate.utils import DistributedType

    if getattr(accelerator, "distributed_type", None) != DistributedType.FSDP:
        return None
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) != 2:
        return None
    from torch.distributed.fsdp import CPUOffloadPolicy

    wrap = plugin.transformer_cls_names_to_wrap
    options = FSDP2Options(
        wrap_classes=list(wrap) if wrap else None,
        reshard_after_forward=bool(plugin.reshard_after_forward),
        cpu_offload=isinstance(plugin.cpu_offload, CPUOffloadPolicy),
    )
    return options, bool(plugin.activation_checkpointing)


def deepspeed_zero_stage(accelerator: Any) -> Optional[int]:
    """The ZeRO stage (0-3) when `accelerator` runs DeepSpeed, else `None`."""
    from accelerate.utils import DistributedType

    if getattr(accelerator, "distributed_type", None) != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.get_value("zero_optimization.stage", 0))


def configure_deepspeed(accelerator: Any, config: Any, fsdp2: bool = False) -> Optional[int]:
    """Fill the DeepSpeed config's `"auto"` entries from the training config (`GRPOConfig`) and refuse what cannot
    work, before `accelerator.prepare`. Returns the ZeRO stage, or `None` when the run is not a DeepSpeed run.

    The trainer drives DeepSpeed's accumulation boundary itself: it calls backward once per trained window step and
    micro-batch, marks only the last backward of an accumulation group as the boundary (where the engine reduces,
    clips and steps) and scales the loss itself. So the DeepSpeed config's `gradient_accumulation_steps` must stay 1
    (or `"auto"`); accumulation is `GRPOConfig.gradient_accumulation_steps`. `train_micro_batch_size_per_gpu`
    (DeepSpeed needs it; the trainer has no dataloader) is the training micro-batch (`train_batch_size`, else the
    rollout chunk), `gradient_clipping` is
    `max_grad_norm`, and the optimiser and learning-rate schedule are the trainer's (AdamW / 8-bit AdamW,
    `lr_scheduler`), not the config's.
    With the optimiser state offloaded to the CPU, accelerate swaps AdamW for DeepSpeed's CPU Adam, keeping only the
    learning rate and weight decay: 8-bit AdamW and betas / epsilon other than CPU Adam's are refused there.
    """
    stage = deepspeed_zero_stage(accelerator)
    if stage is None:
        return None
    from .errors import ConfigError

    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    max_grad_norm = config.max_grad_norm
    if fsdp2:
        raise ConfigError("fsdp2=True and a DeepSpeed launch config shard the model twice; use one of them.")
    if stage not in (1, 2, 3):
        raise ConfigError(
            f"DeepSpeed zero_optimization.stage={stage} is not supported; use 1, 2 or 3 (stage 0 is plain data "
            f"parallelism: launch with examples/accelerate/multi_gpu_ddp.yaml)."
        )
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(
                f"The DeepSpeed config sets {key!r} ({ds[key].get('type', ds[key])}); the trainer builds the "
                f"optimiser and learning-rate schedule from GRPOConfig (optimizer, learning_rate, lr_scheduler). Remove "
                f"{key!r} from the DeepSpeed config."
            )
    gas = ds.get("gradient_accumulation_steps", "auto")
    if gas not in ("auto", 1):
        raise ConfigError(
            f"DeepSpeed gradient_accumulation_steps={gas!r} is not allowed: the trainer accumulates itself (one backward "
            f"per trained window step and micro-batch). Set it to 1 or 'auto' in the DeepSpeed config and use "
            f"GRPOConfig.gradient_accumulation_steps (--gradient_accumulation_steps) instead."
        )
    clip = ds.get("gradient_clipping", "auto")
    if clip != "auto" and float(clip) != float(max_grad_norm):
        raise ConfigError(
            f"DeepSpeed gradient_clipping={clip!r} differs from max_grad_norm={max_grad_norm!r}; set gradient_clipping "
            f"to 'auto' (it then takes max_grad_norm) or to the same value."
        )
    offload = ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    if offload not in (None, "none"):
        if config.optimizer != "adamw":
            raise ConfigError(
                f"optimizer={config.optimizer!r} cannot be used with the DeepSpeed optimiser state offloaded to "
                f"{offload!r}: accelerate replaces the optimiser by DeepSpeed's CPU Adam. Use optimizer='adamw' or "
                f"offload_optimizer_device: none."
            )
        adam = (config.adam_beta1, config.adam_beta2, config.adam_epsilon)
        if adam != CPU_ADAM_DEFAULTS:
            raise ConfigError(
                f"(adam_beta1, adam_beta2, adam_epsilon)={adam} would be dropped with the DeepSpeed optimiser state "
                f"offloaded to {offload!r} (accelerate's CPU Adam keeps only lr and weight_decay, and uses "
                f"{CPU_ADAM_DEFAULTS}); use those values or offload_optimizer_device: none."
            )
    if config.use_ema and stage == 3:
        raise ConfigError(
            "use_ema is not supported with DeepSpeed ZeRO-3 (every rank holds a slice of each weight); set "
            "use_ema=False or use ZeRO-2."
        )
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = float(max_grad_norm)
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        micro = config.train_batch_size or config.sample_max_batch_size or config.rollouts_per_device
        ds["train_micro_batch_size_per_gpu"] = int(min(micro, config.rollouts_per_device))
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = int(ds["train_micro_batch_size_per_gpu"]) * accelerator.num_processes
    logger.info("DeepSpeed ZeRO-%d over %d ranks.", stage, accelerator.num_processes)
    return stage


def is_zero3_partitioned(params: Iterable[torch.Tensor]) -> bool:
    """Whether any parameter is partitioned by DeepSpeed ZeRO-3 (it then holds its slice in `ds_tensor`)."""
    return any(hasattr(p, "ds_tensor") for p in params)


def zero3_full_state_dict(module: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The full state dict of a ZeRO-3-partitioned `module` on the CPU, gathered one parameter at a time (peak: one
    full weight per rank). Collective: call on every rank; rank 0 gets the tensors, the others an empty dict."""
    import deepspeed
    import torch.distributed as dist

    rank0 = dist.get_rank() == 0
    state: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        if hasattr(p, "ds_tensor"):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if rank0:
                    state[name] = p.detach().cpu().clone()
        elif rank0:
            state[name] = p.detach().cpu()
    if rank0 and not trainable_only:  # the persistent buffers (those in the state dict)
        keys = set(module.state_dict().keys())
        state.update({n: b.detach().cpu() for n, b in module.named_buffers() if n in keys})
    return state if rank0 else {}


def _dtensor_cls():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(module_or_params: Any) -> bool:
    """Whether any parameter (of a module, or in an iterable of parameters) is a sharded `DTensor`."""
    params = module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module) else module_or_params
    DTensor = _dtensor_cls()
    return any(isinstance(p, DTensor) for p in params)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a `DTensor` or of a ZeRO-3-partitioned parameter; the tensor itself otherwise."""
    if hasattr(t, "ds_tensor"):
        return t.ds_tensor
    return t.to_local() if isinstance(t, _dtensor_cls()) else t


def apply_fsdp2(module: torch.nn.Module, options: Optional[FSDP2Options] = None) -> torch.nn.Module:
    """`fully_shard` each block of `module` (the classes in `options.wrap_classes`) and then `module` itself, over
    the default process group (gloo on the CPU, NCCL on GPUs). Shards in place; returns `module`.

    Call after LoRA adapters are added and before the optimiser is built (sharding replaces the parameters), with the
    model in its load dtype; then `cast_trainable_shards` casts each rank's shard of the trained weights to float32."""
    import torch.distributed as dist
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    options = options or FSDP2Options()
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "fsdp2 needs an initialised process group: launch with torchrun (or accelerate launch) and create the "
            "Accelerator before the trainer."
        )
    names = list(options.wrap_classes or getattr(module, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(
            f"{type(module).__name__} declares no _no_split_modules; pass FSDP2Options(wrap_classes=[...]) with its "
            f"transformer block class names."
        )
    units = [m for m in module.modules() if type(m).__name__ in names and m is not module]
    if not units:
        found = sorted({type(m).__name__ for m in module.modules()})
        raise ValueError(f"No module of the classes {names} in {type(module).__name__}; its classes are {found}.")
    kwargs: dict[str, Any] = {"reshard_after_forward": options.reshard_after_forward}
    if options.param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=options.param_dtype, reduce_dtype=torch.float32)
    if options.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(module, **kwargs)
    logger.info("FSDP2: sharded %d %s units over %d ranks.", len(units), "/".join(names), dist.get_world_size())
    return module


def cast_trainable_shards(module: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Cast the trainable floating-point parameters of a module sharded by `apply_fsdp2` to `dtype`, each rank its own
    shard only (FSDP2 re-pads the cast shards, `FSDPModule._apply`); frozen parameters and buffers keep their dtype.

    What the trainer does instead of casting before sharding: a rank then holds the full model in its load dtype
    (about to be sharded) and its own `dtype` shard, never a full `dtype` copy. Returns `module`."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.requires_grad and t.is_floating_point() else t

    return module._apply(cast)


def grads_finite(params: Iterable[torch.Tensor]) -> bool:
    """True when every gradient is finite on every rank (sharded gradients: each rank checks its shard, then all
    ranks agree, so that they all take or all skip the optimiser step)."""
    params = list(params)
    ok = all(p.grad is None or bool(torch.isfinite(local_tensor(p.grad)).all()) for p in params)
    if is_sharded(params):
        import torch.distributed as dist

        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
    return ok


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """`torch.nn.utils.clip_grad_norm_` on sharded gradients: the total norm over every rank's shards."""
    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    if isinstance(norm, _dtensor_cls()):
        norm = norm.full_tensor()
    return float(norm)


def full_state_dict(module: torch.nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on the CPU. Collective when `module` is sharded: call on every rank; rank 0
    gets the tensors, the others an empty dict. `trainable_only` keeps the parameters with `requires_grad`."""
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    if is_sharded(module):
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() != 0:
            return {}
    else:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if trainable_only:
        state = {k: v for k, v in state.items() if k in trainable}
    return state


def _trainable_state(module: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    if optimizer is None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=options), None
    return get_state_dict(module, optimizer, options=options)


def save_sharded_state(module: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], folder: str) -> str:
    """The trained parameters (frozen ones left out: a LoRA checkpoint holds the adapters only) and the optimiser
    state, sharded, with `torch.distributed.checkpoint`, into `folder/sharded_state`. Collective."""
    import torch.distributed.checkpoint as dcp

    model_state, optim_state = _trainable_state(module, optimizer)
    state = {"model": model_state}
    if optim_state is not None:
        state["optimizer"] = optim_state
    path = os.path.join(folder, SHARDED_STATE_DIR)
    dcp.save(state, checkpoint_id=path)
    return path


def load_sharded_state(module: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], folder: str) -> None:
    """Restore what `save_sharded_state` wrote (any number of ranks). Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    path = os.path.join(folder, SHARDED_STATE_DIR)
    if not os.path.isdir(path):
        from .errors import CorruptCheckpointError

        raise CorruptCheckpointError(f"{folder} holds no {SHARDED_STATE_DIR}/ (not a checkpoint of an fsdp2 run).")
    model_state, optim_state = _trainable_state(module, optimizer)
    state = {"model": model_state}
    if optim_state is not None:
        state["optimizer"] = optim_state
    dcp.load(state, checkpoint_id=path)
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    if optimizer is None:
        set_model_state_dict(module, state["model"], options=options)
    else:
        set_state_dict(
            module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options
        )


def unsharded_copy(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain (not sharded) instance of `module`'s diffusers class holding `state`, built without allocating twice
    (meta device, then the tensors assigned): what `save_pretrained` writes for a full fine-tune."""
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        copy = cls.from_config(module.config)
    copy.load_state_dict(state, strict=True, assign=True)
    return copy
