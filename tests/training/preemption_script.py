"""Helper of test_preemption.py, run by torchrun with 2 ranks (gloo): train with the config of the test file, optionally
slowed down (each trained forward sleeps), and write what the test reads: `pid-rank{r}` (this rank's process id),
`marked` (iteration `--mark_step` reached its `--mark_call`-th trained forward), `iterations.json` (seconds per
iteration, rank 0)."""

import argparse
import json
import logging
import os
import time

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
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--slow", type=float, default=0.0, help="seconds each trained forward sleeps")
    parser.add_argument("--mark_step", type=int, default=-1)
    parser.add_argument("--mark_call", type=int, default=1)
    parser.add_argument("--fsdp2", action="store_true", help="shard with torch's FSDP2 instead of DDP")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)
    config = GRPOConfig(
        output_dir=args.output_dir,
        num_inference_steps=4,
        num_generations=4,
        sample_prompts_per_device=1,
        resolution=32,
        window_size=2,
        learning_rate=1e-3,
        max_train_steps=args.steps,
        train_batch_size=1,
        gradient_accumulation_steps=1,
        report_to="none",
        lora_rank=4,
        lora_alpha=4,
        checkpointing_steps=0,
        validation_steps=0,
        seed=3,
        resume_from_checkpoint="latest" if args.resume else None,
    )
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, f"pid-rank{rank}"), "w") as f:
        f.write(str(os.getpid()))
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    trainer = GRPOTrainer(
        config,
        pipe,
        rewards={brightness: 1.0},
        train_prompts=["a red circle", "a blue square", "a green cross", "a cat"],
        accelerator=accelerator,
        fsdp2=args.fsdp2,
    )
    calls = {"step": None, "n": 0}
    forward = trainer._window_step_loss

    def slow_forward(*a, **kw):
        if calls["step"] != trainer.global_step:
            calls["step"], calls["n"] = trainer.global_step, 0
        calls["n"] += 1
        if rank == 0 and (trainer.global_step, calls["n"]) == (args.mark_step, args.mark_call):
            open(os.path.join(args.output_dir, "marked"), "w").close()
        time.sleep(args.slow)
        return forward(*a, **kw)

    trainer._window_step_loss = slow_forward
    seconds = []
    train_step = trainer.train_step

    def timed_step():
        t0 = time.perf_counter()
        logs = train_step()
        seconds.append(time.perf_counter() - t0)
        if rank == 0:
            with open(os.path.join(args.output_dir, "iterations.json"), "w") as f:
                json.dump(seconds, f)
        return logs

    trainer.train_step = timed_step
    trainer.train()


if __name__ == "__main__":
    main()
