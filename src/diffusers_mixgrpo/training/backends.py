"""One small interface for what differs between the ways the trainer runs its update: accelerate's DDP (also one
process, and accelerate's FSDP version 1), the trainer's own torch FSDP2 (`distributed.apply_fsdp2`), and DeepSpeed
ZeRO through accelerate.

`GRPOTrainer._update` calls only this interface, so the GRPO update has one shape on all three:

- `accumulation_context(boundary)` around the forward and backward of one trained piece, and `backward(loss,
  boundary)`: only the boundary backward (the last of an accumulation group) reduces the gradients (DDP) or is the
  engine's accumulation boundary (DeepSpeed); FSDP2 reduce-scatters at every backward, which accumulates correctly.
- `grads_finite()` and `clip_and_step()`: whether the group's gradients may be applied, then clip with
  `max_grad_norm`, step the optimiser and the learning-rate schedule, and return the gradient norm.
- `register_checkpoint_hooks(...)` and `checkpoint_kwargs(load)`: what `accelerator.save_state` / `load_state` write
  and read for this backend (the LoRA adapters only, the sharded trained state, or DeepSpeed's own checkpoint).
- `full_state_dict(...)`: the full weights gathered for the final save when they are sharded.

The trainer scales every loss itself (see `docs/training.md`, "Loss"): no backend divides by an accumulation count.
"""

import functools
from contextlib import nullcontext
from typing import Any, Optional, Union

import torch

from .distributed import (
    clip_grad_norm,
    full_state_dict,
    grads_finite,
    is_sharded,
    is_zero3_partitioned,
    load_sharded_state,
    save_sharded_state,
    zero3_full_state_dict,
)
from .export import load_lora_checkpoint_hook, save_lora_checkpoint_hook


class TrainingBackend:
    """The interface, with what every backend shares: a plain accelerate backward, the gradient check of the trained
    parameters, accelerate's clipping, no checkpoint hooks and unsharded weights.

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        model (`torch.nn.Module`): the module the update's forwards run through (accelerate's wrapper, or the
            FSDP2-sharded denoiser).
        optimizer, lr_scheduler: the run's optimiser and learning-rate schedule (as prepared).
        trainable (`list[torch.nn.Parameter]`): the trained parameters.
        max_grad_norm (`float`): the gradient clipping norm.
        use_lora (`bool`): whether only LoRA adapters are trained (checkpoints then hold the adapters only).
    """

    #: The optimiser steps inside the boundary backward (DeepSpeed): an update cannot be rewound once it ran.
    steps_in_backward = False

    def __init__(self, accelerator, model, optimizer, lr_scheduler, trainable, max_grad_norm, use_lora):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.trainable = trainable
        self.max_grad_norm = max_grad_norm
        self.use_lora = use_lora

    def accumulation_context(self, boundary: bool):
        """The context of one forward + backward; `boundary`: this backward is the last of its accumulation group."""
        return nullcontext()

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        self.accelerator.backward(loss)

    def grads_finite(self) -> bool:
        """Whether this rank's accumulated gradients are all finite (the optimiser step may be taken)."""
        return grads_finite(self.trainable)

    def clip_grad_norm(self) -> Any:
        return self.accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm)

    def clip_and_step(self) -> float:
        """Clip the accumulated gradients, step the optimiser and the learning-rate schedule; the gradient norm."""
        grad_norm = float(self.clip_grad_norm())
        self.optimizer.step()
        self.lr_scheduler.step()
        return grad_norm

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def register_checkpoint_hooks(self, denoiser: torch.nn.Module, lora_rank: int) -> None:
        """Hooks of `accelerator.save_state` / `load_state` that change what a checkpoint holds."""

    def checkpoint_kwargs(self, load: bool) -> dict[str, Any]:
        """Extra keyword arguments of `accelerator.save_state` (`load=False`) / `load_state` (`load=True`)."""
        return {}

    def full_state_dict(self, denoiser: torch.nn.Module, trainable_only: bool) -> Optional[dict[str, torch.Tensor]]:
        """The full weights when they are sharded (collective: every rank calls, rank 0 receives them), else `None`
        (the denoiser's own parameters are the full weights)."""
        return None


class DDPBackend(TrainingBackend):
    """accelerate's DDP, and every run accelerate prepares without DeepSpeed (one process, accelerate's FSDP1)."""

    def accumulation_context(self, boundary: bool):
        """DDP's `no_sync` unless this backward is the one that reduces the gradients."""
        if boundary or self.accelerator.num_processes == 1:
            return nullcontext()
        return self.accelerator.no_sync(self.model)

    def register_checkpoint_hooks(self, denoiser: torch.nn.Module, lora_rank: int) -> None:
        """LoRA runs: checkpoints hold the adapter weights only, not the frozen base model (`export.py`)."""
        if not self.use_lora:
            return
        acc = self.accelerator
        acc.register_save_state_pre_hook(functools.partial(save_lora_checkpoint_hook, acc, denoiser))
        acc.register_load_state_pre_hook(functools.partial(load_lora_checkpoint_hook, acc, denoiser, lora_rank))


class FSDP2Backend(TrainingBackend):
    """The denoiser sharded by the trainer with torch's `fully_shard` (outside accelerate's `prepare`): gradients are
    reduce-scattered at every backward, clipping needs the sharded norm, and checkpoints hold every rank's shards of
    the trained parameters and the optimiser state (accelerate would save rank 0's shards only)."""

    def clip_grad_norm(self) -> Any:
        return clip_grad_norm(self.trainable, self.max_grad_norm)

    def register_checkpoint_hooks(self, denoiser: torch.nn.Module, lora_rank: int) -> None:
        optimizer = self.optimizer

        def save_hook(models, weights, output_dir):
            save_sharded_state(denoiser, optimizer, output_dir)  # collective
            while weights:
                weights.pop()

        def load_hook(models, input_dir):
            load_sharded_state(denoiser, optimizer, input_dir)

        self.accelerator.register_save_state_pre_hook(save_hook)
        self.accelerator.register_load_state_pre_hook(load_hook)

    def full_state_dict(self, denoiser: torch.nn.Module, trainable_only: bool) -> Optional[dict[str, torch.Tensor]]:
        return full_state_dict(denoiser, trainable_only=trainable_only) if is_sharded(self.trainable) else None


class DeepSpeedBackend(TrainingBackend):
    """DeepSpeed ZeRO through accelerate: the engine reduces, clips with `max_grad_norm`, steps the optimiser and zeroes
    the gradients itself at the boundary backward (or skips the step on a non-finite gradient norm); the optimiser's
    own `step` / `zero_grad` are then no-ops. The engine writes its own checkpoint (`pytorch_model/`)."""

    steps_in_backward = True

    def backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Only the boundary backward is the engine's gradient accumulation boundary; the loss is already scaled, so
        the engine does not divide it again (`scale_wrt_gas=False`)."""
        # accelerate's `backward` reads the boundary from `gradient_state.sync_gradients`, which only its
        # `accumulate()` context sets, through the private `_set_sync_gradients`. That context counts micro-batches
        # with accelerate's own `gradient_accumulation_steps`, but the trainer's boundary depends on which
        # micro-batches any rank trains (and on the window steps of each): so it is set here directly, and put back
        # to accelerate's default (True) afterwards. This is the only use of accelerate's private API.
        state = self.accelerator.gradient_state
        state._set_sync_gradients(boundary)
        try:
            self.accelerator.backward(loss, scale_wrt_gas=False)
        finally:
            state._set_sync_gradients(True)

    def grads_finite(self) -> bool:
        return not self.optimizer.step_was_skipped

    def clip_grad_norm(self) -> Any:
        return self.model.get_global_grad_norm()  # clipped by the engine at the boundary backward

    def checkpoint_kwargs(self, load: bool) -> dict[str, Any]:
        """LoRA runs: the engine's checkpoint leaves the frozen base weights out (and loads without them)."""
        if not self.use_lora:
            return {}
        return {"load_module_strict": False} if load else {"exclude_frozen_parameters": True}

    def full_state_dict(self, denoiser: torch.nn.Module, trainable_only: bool) -> Optional[dict[str, torch.Tensor]]:
        if not is_zero3_partitioned(denoiser.parameters()):
            return None
        return zero3_full_state_dict(denoiser, trainable_only=trainable_only)


def make_backend(accelerator, prepared, config) -> TrainingBackend:
    """The backend of this run (`prepared`: `model_setup.PreparedModel`): DeepSpeed when launched with a DeepSpeed
    config, FSDP2 when the trainer sharded the denoiser, else DDP."""
    if prepared.zero_stage is not None:
        cls = DeepSpeedBackend
    else:
        cls = FSDP2Backend if prepared.fsdp2 is not None else DDPBackend
    return cls(
        accelerator,
        prepared.model,
        prepared.optimizer,
        prepared.lr_scheduler,
        prepared.trainable,
        config.max_grad_norm,
        config.use_lora,
    )


def _all_reduce(accelerator, value: Union[int, float], op_name: str) -> Union[int, float]:
    """One all-reduce of a Python number (int32 for an int, float64 for a float), returned as the same type."""
    import torch.distributed as dist

    kind = type(value)
    flag = torch.tensor([value], dtype=torch.float64 if kind is float else torch.int32, device=accelerator.device)
    dist.all_reduce(flag, op=getattr(dist.ReduceOp, op_name))
    return kind(flag.item())


def all_ranks(accelerator, ok: bool) -> bool:
    """`ok` on every rank (one all-reduce): a decision that changes which collectives or optimiser steps a rank takes
    must be the same on all of them, or the job hangs (DDP, FSDP2, ZeRO) or the replicas drift."""
    if accelerator.num_processes == 1:
        return ok
    return bool(_all_reduce(accelerator, 1 if ok else 0, "MIN"))


def max_over_ranks(accelerator, value: Union[int, float]) -> Union[int, float]:
    """The largest `value` (an int, or a float) of any rank (one all-reduce when there are several ranks)."""
    if accelerator.num_processes == 1:
        return value
    return _all_reduce(accelerator, value, "MAX")
