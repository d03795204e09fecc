"""Helper of test_distributed.py: train with or without torch's FSDP2 and save the final weights (run by torchrun or
plainly). The weights compared are the files the run writes: the diffusers-format LoRA file, or the model folder."""

import argparse
import os

import torch
from accelerate import Accelerator

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


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
        checkpointing_steps=args.checkpointing_steps,
        validation_steps=0,
        seed=5,
        resume_from_checkpoint="latest" if args.resume else None,
        fsdp2=args.fsdp2,  # the config field (what `--fsdp2 true` on the training CLI sets)
    )
    accelerator = Accelerator(cpu=True)
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    trainer = GRPOTrainer(
        config,
        pipe,
        rewards={brightness: 1.0},
        train_prompts=["a red circle", "a blue square", "a green cross", "a cat"],
        accelerator=accelerator,
    )
    out = trainer.train()
    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "done.txt"), "w") as f:
            f.write(f"{out.global_step}\n")


if __name__ == "__main__":
    main()
