"""Helper of test_monitor_rewards.py: one training step and one evaluation on 2 ranks (torchrun, gloo) with a monitor
that fails on rank 1 only; every rank writes its logs, its evaluation's monitor means and its LoRA weights."""

import json
import sys

import torch
from accelerate import Accelerator

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


def brightness(images, prompts):
    return images.float().mean(dim=(1, 2, 3))


def main(output_dir: str, result: str) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index

    def flaky(images, prompts):  # the monitor's server is down for rank 1 only
        if rank == 1:
            raise RuntimeError("unreachable")
        return 1.0 - images.float().mean(dim=(1, 2, 3))

    config = GRPOConfig(
        output_dir=output_dir, num_inference_steps=4, num_generations=2, sample_prompts_per_device=2, resolution=32,
        window_size=2, report_to="none", lora_rank=4, lora_alpha=4, checkpointing_steps=0, learning_rate=1e-3,
        validation_images_per_prompt=1, seed=5,
    )  # fmt: skip
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    trainer = GRPOTrainer(
        config, pipe, rewards={brightness: 1.0}, train_prompts=["a", "b", "c", "d"], accelerator=accelerator,
        monitor_rewards=[flaky],
    )  # fmt: skip
    logs = trainer.train_step()
    evaluation = trainer.evaluate(prompts=["a", "b", "c", "d"])
    lora = {n: p.detach().tolist() for n, p in pipe.denoiser.named_parameters() if "lora" in n}
    with open(f"{result}.{rank}.json", "w", encoding="utf-8") as f:
        json.dump({"logs": logs, "eval": evaluation.monitor_scores, "lora": lora}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
