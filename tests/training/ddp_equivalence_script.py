"""Helper of test_trainer.py: train 2 steps and save the LoRA weights (run by torchrun or plainly); with a 5th
argument, also count DDP's gradient all-reduces (a comm hook) and save the count there (rank 0)."""

import sys

import torch
from accelerate import Accelerator

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def main(output_dir: str, result: str, prompts_per_device: int, accumulation: int, count_file: str = "") -> None:
    torch.set_num_threads(1)
    config = GRPOConfig(
        output_dir=output_dir,
        method="mixgrpo",
        num_inference_steps=6,
        num_generations=4,
        sample_prompts_per_device=prompts_per_device,
        sample_max_batch_size=4,
        resolution=32,
        window_size=2,
        learning_rate=1e-3,
        max_train_steps=2,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        gradient_accumulation_steps=accumulation,
        checkpointing_steps=0,
        validation_steps=0,
        seed=5,
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
    reductions = []
    if count_file and accelerator.num_processes > 1:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counting_hook(state, bucket):
            reductions.append(bucket.index())
            return allreduce_hook(state, bucket)

        trainer.model.register_comm_hook(None, counting_hook)
    trainer.train()
    if count_file and accelerator.is_main_process:
        torch.save({"buckets": reductions}, count_file)
    if accelerator.is_main_process:
        weights = {n: p.detach().cpu() for n, p in pipe.denoiser.named_parameters() if "lora" in n}
        torch.save(weights, result)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
