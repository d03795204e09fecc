"""Sharded training: torch's FSDP2 (`fully_shard`) under the trainer, and the helpers that make the trainer's
gradient checks, clipping, checkpoints and final weights work when parameters are sharded `DTensor`s.

Two ways to shard the denoiser:

- **accelerate's FSDP / DeepSpeed** (what users launch on GPUs: `examples/accelerate/*.yaml`): `accelerate launch
  --config_file examples/accelerate/fsdp2.yaml ...`; accelerate applies `fully_shard` in `prepare`.
- **torch's FSDP2 directly** (`GRPOTrainer(..., fsdp2=FSDP2Options())`): the trainer applies `fully_shard` to every
  transformer block and then to the root, before the optimiser is built. This runs on GPUs (NCCL) and on the CPU
  (gloo: accelerate 1.15 with `cpu=True` falls back to DDP and ignores an FSDP plugin), which is how the test suite
  proves that a sharded run equals a single-process one.

In both cases the trained weights are `DTensor`s: the full LoRA / model state dict is gathered collectively (every rank
calls, rank 0 receives it on the CPU) before the main process writes the diffusers-format files, and checkpoints of
the torch-FSDP2 path hold the trained parameters and the optimiser state in `torch.distributed.checkpoint` format
(`sharded_state/`, one file per rank; loadable with another number of ranks).
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


def check_supported_engine(accelerator: Any) -> None:
    """Refuse engines under which the trainer's update would be wrong instead of training silently wrongly.

    DeepSpeed: accelerate's `backward` makes the DeepSpeed engine step the optimiser after every backward call, while
    the trainer calls backward once per trained window step and micro-batch (K calls per micro-batch) and steps at
    its own accumulation boundaries; DeepSpeed also needs `train_micro_batch_size_per_gpu` (the trainer has no
    dataloader) and owns gradient clipping (`clip_grad_norm_` returns None). Until the update loop drives the
    engine's accumulation boundary itself, ZeRO-2 / ZeRO-3 are refused; FSDP2 shards the same way (full shard =
    ZeRO-3, `reshard_after_forward: false` = ZeRO-2)."""
    from accelerate.utils import DistributedType

    if getattr(accelerator, "distributed_type", None) == DistributedType.DEEPSPEED:
        from .errors import ConfigError

        raise ConfigError(
            "DeepSpeed is not supported by GRPOTrainer yet: its engine would step the optimiser after each of the K "
            "backward passes of a micro-batch. Launch with examples/accelerate/fsdp2.yaml (full shard, like ZeRO-3) "
            "instead; see docs/training.md, 'Scaling out'."
        )


def _dtensor_cls():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(module_or_params: Any) -> bool:
    """Whether any parameter (of a module, or in an iterable of parameters) is a sharded `DTensor`."""
    params = module_or_params.parameters() if isinstance(module_or_params, torch.nn.Module) else module_or_params
    DTensor = _dtensor_cls()
    return any(isinstance(p, DTensor) for p in params)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a `DTensor`; the tensor itself otherwise."""
    return t.to_local() if isinstance(t, _dtensor_cls()) else t


def apply_fsdp2(module: torch.nn.Module, options: Optional[FSDP2Options] = None) -> torch.nn.Module:
    """`fully_shard` each block of `module` (the classes in `options.wrap_classes`) and then `module` itself, over
    the default process group (gloo on the CPU, NCCL on GPUs). Shards in place; returns `module`.

    Call after LoRA adapters are added and trainable weights cast, and before the optimiser is built (sharding
    replaces the parameters)."""
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
