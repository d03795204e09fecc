"""Helper of test_evaluation.py: run the trainer's evaluation (run by torchrun or plainly; a third argument `fsdp2`
shards the denoiser with FSDP2) and save the gathered result on the main process as JSON."""

import json
import sys

import torch
from accelerate import Accelerator

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

PROMPTS = ["a red circle", "a blue square", "a green cross", "a cat", "a dog"]


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def redness(images, prompts):
    return images.float()[:, 0].mean(dim=(1, 2)) - images.float()[:, 2].mean(dim=(1, 2))


def main(output_dir: str, result: str, mode: str = "") -> None:
    torch.set_num_threads(1)
    config = GRPOConfig(
        output_dir=output_dir,
        num_inference_steps=4,
        num_generations=2,
        resolution=32,
        window_size=2,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        sample_max_batch_size=3,
        checkpointing_steps=0,
        validation_prompts=PROMPTS,
        validation_images_per_prompt=3,  # 15 items: 8 and 7 on two processes (one padding slot)
        validation_seed=11,
        seed=5,
    )
    accelerator = Accelerator(cpu=True)
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    trainer = GRPOTrainer(
        config,
        pipe,
        rewards={brightness: 1.0, redness: 0.5},
        train_prompts=["x", "y"],
        accelerator=accelerator,
        fsdp2=mode == "fsdp2",
    )
    out = trainer.evaluate()
    if accelerator.is_main_process:
        with open(result, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "num_processes": accelerator.num_processes,
                    "scores": out.scores,
                    "seeds": out.seeds,
                    "reward": out.reward,
                    "rows": out.table_rows(),
                    "num_images": len(out.images),
                },
                f,
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()  # leave the process group together (a live gloo group can abort a rank at exit)


if __name__ == "__main__":
    main(*sys.argv[1:])
