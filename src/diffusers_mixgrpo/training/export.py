"""The trained weights as files: the LoRA adapter file of a checkpoint, the final weights in diffusers' formats (a LoRA
file a stock pipeline's `load_lora_weights` reads, or the whole pipeline folder of a full fine-tune), and their upload
to the Hub with a model card."""

import inspect
import os
from contextlib import nullcontext
from typing import Any, Optional

import torch

from .checkpointing import CheckpointManager, apply_umask, raise_if_disk_full, raise_if_unwritable
from .errors import CheckpointError, CorruptCheckpointError, HubPushError
from .logging_utils import plot_reward_curve
from .resume import RUN_CONFIG_FILE

#: The adapter weights in a LoRA run's checkpoint (instead of the whole model accelerate would save).
LORA_CHECKPOINT_FILE = "lora_adapter.safetensors"


def _accelerate_shards(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_lora_checkpoint_hook(accelerator, denoiser: torch.nn.Module, models, weights, output_dir: str) -> None:
    """`accelerator.save_state` pre-hook of LoRA runs: the adapter weights only (not the frozen base model)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    if _accelerate_shards(accelerator):
        return  # accelerate's FSDP / DeepSpeed save the sharded model and optimiser themselves (every rank)
    if accelerator.is_main_process:
        state = get_peft_model_state_dict(accelerator.unwrap_model(denoiser))
        save_file(
            {k: v.detach().float().contiguous().cpu() for k, v in state.items()},
            os.path.join(output_dir, LORA_CHECKPOINT_FILE),
        )
    while weights:
        weights.pop()


def load_lora_checkpoint_hook(accelerator, denoiser: torch.nn.Module, lora_rank: int, models, input_dir: str) -> None:
    """`accelerator.load_state` pre-hook of LoRA runs: the adapter weights, refused when they are of another rank or
    for other modules than this run adapts."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    if _accelerate_shards(accelerator):
        return
    while models:
        models.pop()
    path = os.path.join(input_dir, LORA_CHECKPOINT_FILE)
    try:
        state = load_file(path)
    except Exception as err:
        raise CorruptCheckpointError(f"{path} cannot be read ({type(err).__name__}: {err}).") from err
    ranks = {int(v.shape[0]) for k, v in state.items() if "lora_A" in k and v.ndim >= 1}
    if ranks and ranks != {lora_rank}:
        raise CheckpointError(
            f"{input_dir} holds LoRA rank {min(ranks)} but this run has lora_rank={lora_rank}; "
            f"resume with --lora_rank {min(ranks)} or start a new run in another output_dir."
        )
    result = set_peft_model_state_dict(denoiser, state)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(
            f"{path} holds LoRA weights for other modules than this run adapts ({result.unexpected_keys[0]}, "
            f"...); resume with the run's lora_target_modules."
        )


def _save_lora_weights(pipeline, denoiser: torch.nn.Module, output_dir: str, gathered) -> str:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(denoiser, state_dict=gathered)
    if pipeline.family.lora_legacy_keys:
        layers = convert_state_dict_to_diffusers(layers)
    key = pipeline.family.denoiser_name  # "unet" or "transformer"
    kwargs = {f"{key}_lora_layers": layers}
    # The adapter's config (rank, lora_alpha, targets) goes into the file: without it a stock pipeline loads the
    # LoRA with lora_alpha = rank, i.e. at rank / lora_alpha of its trained strength.
    if f"{key}_lora_adapter_metadata" in inspect.signature(type(pipeline.stock_pipeline).save_lora_weights).parameters:
        kwargs[f"{key}_lora_adapter_metadata"] = denoiser.peft_config["default"].to_dict()
    pipeline.save_lora_weights(output_dir, **kwargs, safe_serialization=True)
    return os.path.join(output_dir, "pytorch_lora_weights.safetensors")


def _save_pipeline_folder(pipeline, output_dir: str, gathered) -> str:
    from .distributed import unsharded_copy

    stock = pipeline.stock_pipeline
    if gathered is None:
        stock.save_pretrained(output_dir, safe_serialization=True)
        return output_dir
    # Swap a plain copy in for the save (object.__setattr__: the pipeline's config keeps its class names).
    name = next(k for k, v in stock.components.items() if v is pipeline.denoiser)
    object.__setattr__(stock, name, unsharded_copy(pipeline.denoiser, gathered))
    try:
        stock.save_pretrained(output_dir, safe_serialization=True)
    finally:
        object.__setattr__(stock, name, pipeline.denoiser)
    return output_dir


def save_weights(
    pipeline,
    accelerator,
    output_dir: str,
    use_lora: bool,
    ema: Any = None,
    trainable: Optional[list] = None,
    gathered: Optional[dict[str, torch.Tensor]] = None,
) -> str:
    """The trained weights in diffusers' format (the EMA weights when `ema` is given); returns their path.

    `gathered`: the full weights of a sharded denoiser (`TrainingBackend.full_state_dict`), written instead of its
    shards."""
    os.makedirs(output_dir, exist_ok=True)
    denoiser = accelerator.unwrap_model(pipeline.denoiser)
    with ema.average_parameters(trainable) if ema is not None else nullcontext():
        if use_lora:
            return _save_lora_weights(pipeline, denoiser, output_dir, gathered)
        return _save_pipeline_folder(pipeline, output_dir, gathered)


def export_final_model(
    output_dir: str, pipeline, accelerator, backend, config, history, ema=None, trainable=None
) -> Optional[str]:
    """What `GRPOTrainer.save_model` writes: the weights (`save_weights`; every rank takes part in gathering sharded
    weights, written by the main process), the run's config and its reward curve; the files get the run's umask.
    Returns the path of the weights on the main process (`None` on the others). A full disk raises `DiskFullError`."""
    accelerator.wait_for_everyone()
    gathered = backend.full_state_dict(pipeline.denoiser, trainable_only=config.use_lora)
    if not accelerator.is_main_process:
        return None
    try:
        weights = save_weights(pipeline, accelerator, output_dir, config.use_lora, ema, trainable, gathered)
        config.to_yaml(os.path.join(output_dir, RUN_CONFIG_FILE))
        if history:
            plot_reward_curve(history, os.path.join(output_dir, "reward_curve.png"))
    except Exception as err:
        raise_if_disk_full(err, output_dir, "the final weights")
        raise_if_unwritable(err, output_dir, "the final weights", CheckpointManager(output_dir)._latest_or_none())
        raise
    apply_umask(output_dir if not config.use_lora else weights)
    return weights


def push_run_to_hub(config, history) -> str:
    """Model card + weights of the run in `config.output_dir` to `hub_model_id` (token from huggingface_hub's usual
    mechanisms); returns the URL of the commit.

    What is uploaded is staged in `output_dir/.hub-upload` (hard links): the weights, the reward curve and the logs,
    plus a model card and a `training_config.yaml` without local paths (`public_config_dict`); the run's own config,
    summary and prompt copy stay local."""
    import shutil

    from .hub import push_folder_to_hub, stage_upload_folder, write_model_card

    repo_id = config.resolved_hub_model_id()
    staging = stage_upload_folder(config.output_dir)
    try:
        write_model_card(
            staging,
            config,
            base_model=config.pretrained_model_name_or_path,
            method=config.method,
            reward_history=history,
            repo_id=repo_id,
        )
        return push_folder_to_hub(staging, repo_id, private=config.hub_private, token=config.hub_token)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def push_failure(push, config) -> Optional[HubPushError]:
    """Call `push()` (the upload at the end of a run); a failure comes back as a `HubPushError` naming the saved
    folder and how to push it later, to be raised once the run summary is written (`None` when the push worked)."""
    try:
        push()
        return None
    except Exception as err:
        repo_id = config.resolved_hub_model_id()
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        return HubPushError(
            f"The push of {config.output_dir!r} to the Hub repository {repo_id!r} failed ({type(err).__name__}: "
            f"{reason}); the weights and the run summary are saved in {config.output_dir!r}: push them later with "
            f"`hf upload {repo_id} {config.output_dir} --exclude 'checkpoint-*/*'` (docs/training.md, \"Hub\")."
        )
