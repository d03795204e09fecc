"""Helper of test_distributed.py: train with torch's FSDP2, under an accelerate launch config (FSDP2, DeepSpeed), or
plainly, and save the final weights (run by torchrun or plainly). The weights compared are the files the run writes:
the diffusers-format LoRA file, or the model folder."""

import argparse
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, InitProcessGroupKwargs

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def launch_env(config_file: str) -> dict[str, str]:
    """The DeepSpeed / FSDP variables `accelerate launch --config_file <config_file>` sets for the training
    processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config_file, "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config.keys())
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    keep = ("ACCELERATE_USE", "ACCELERATE_DEEPSPEED", "ACCELERATE_GRADIENT", "FSDP_")
    return {k: v for k, v in env.items() if k.startswith(keep)}


def launch_config_accelerator(config_file: str) -> Accelerator:
    """An Accelerator on the CPU as `accelerate launch --config_file <config_file>` would build it on GPUs, in float32
    (the reference run's precision). DeepSpeed: gloo is passed, since accelerate finds no process-group backend on a
    machine without GPUs. FSDP: accelerate 1.15 sets it only for GPU device types, so the CPU accelerator's
    distributed type and plugin are set as on GPUs."""
    env = launch_env(config_file)
    os.environ.update(env)
    if env.get("ACCELERATE_USE_DEEPSPEED") == "true":
        accelerator = Accelerator(mixed_precision="no", kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")])
        assert accelerator.distributed_type == DistributedType.DEEPSPEED, accelerator.distributed_type
        return accelerator
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    accelerator.state.distributed_type = DistributedType.FSDP
    return accelerator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--prompts_per_device", type=int, default=1)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--checkpointing_steps", type=int, default=0)
    parser.add_argument("--fsdp2", action="store_true")
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--nan_loss_at_step", type=int, help="make every loss of this iteration NaN")
    parser.add_argument("--nan_loss_rank", type=int, help="with --nan_loss_at_step: on this rank only")
    parser.add_argument("--train_batch_size", type=int, help="the training micro-batch (default: the rollout chunk)")
    parser.add_argument(
        "--bad_rewards",
        choices=["nan", "constant"],
        help="rank 1's rewards at step 0 (its first group) and step 1 (all of them): NaN, or one constant value (every "
        "advantage 0: what the skip policy says a dropped group amounts to)",
    )
    parser.add_argument("--dump_weights", action="store_true", help="each rank saves its trained weights every step")
    parser.add_argument("--launch_config", help="an accelerate launch config, e.g. examples/accelerate/fsdp2.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = GRPOConfig(
        output_dir=args.output_dir,
        method="mixgrpo",
        num_inference_steps=6,
        num_generations=4,
        sample_prompts_per_device=args.prompts_per_device,
        sample_max_batch_size=4,
        resolution=32,
        window_size=2,
        learning_rate=1e-3 if not args.full else 1e-4,
        max_train_steps=args.steps,
        report_to="none",
        use_lora=not args.full,
        lora_rank=4,
        lora_alpha=4,
        gradient_accumulation_steps=args.accumulation,
        train_batch_size=args.train_batch_size,
        checkpointing_steps=args.checkpointing_steps,
        validation_steps=0,
        seed=5,
        resume_from_checkpoint="latest" if args.resume else None,
        fsdp2=args.fsdp2,  # the config field (what `--fsdp2 true` on the training CLI sets)
    )
    if args.launch_config:
        accelerator = launch_config_accelerator(args.launch_config)
    else:
        accelerator = Accelerator(cpu=True)
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    reward = brightness
    if args.bad_rewards:

        def reward(images, prompts):
            r = brightness(images, prompts)
            if accelerator.process_index == 1 and trainer.global_step < 2:
                bad = [p == prompts[0] for p in prompts] if trainer.global_step == 0 else [True] * len(prompts)
                r[torch.tensor(bad)] = float("nan") if args.bad_rewards == "nan" else 0.5
            return r

    trainer = GRPOTrainer(
        config,
        pipe,
        rewards={reward: 1.0},
        train_prompts=["a red circle", "a blue square", "a green cross", "a cat"],
        accelerator=accelerator,
    )
    if args.nan_loss_at_step is not None:
        import dataclasses

        from diffusers_mixgrpo.training import trainer as trainer_module

        loss_fn = trainer_module.grpo_loss

        def nan_loss(*a, **kw):
            out = loss_fn(*a, **kw)
            return (
                dataclasses.replace(out, loss=out.loss * float("nan"))
                if trainer.global_step == args.nan_loss_at_step
                and args.nan_loss_rank in (None, accelerator.process_index)
                else out
            )

        trainer_module.grpo_loss = nan_loss
    if args.dump_weights:
        train_step = trainer.train_step

        def dumping_train_step():
            logs = train_step()
            weights = {
                n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone()
                for n, p in pipe.denoiser.named_parameters()
                if p.requires_grad
            }
            keys = ("train/optimizer_steps", "train/skipped_updates", "data/dropped_samples")
            torch.save(
                {"weights": weights, "logs": {k: logs[k] for k in keys if k in logs}},
                os.path.join(args.output_dir, f"step{trainer.global_step}-rank{accelerator.process_index}.pt"),
            )
            return logs

        trainer.train_step = dumping_train_step
    out = trainer.train()
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "done.txt"), "w") as f:
            f.write(f"{out.global_step}\n")


if __name__ == "__main__":
    main()
