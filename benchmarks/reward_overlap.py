"""Iteration time with and without rewards beside the rollout (`GRPOTrainer(overlap_rewards=True)`), one run each.

The reward stands for a reward model on another device or machine (`RemoteReward`, a second GPU): it waits
`--reward_seconds` per image without using this process's CPU, and scores the image brightness. Tiny FLUX on the CPU.

    python benchmarks/reward_overlap.py [--prompts 4] [--reward_seconds 0.05] [--resolution 64]
"""

import argparse
import statistics
import tempfile
import time

import torch


def make_reward(seconds: float):
    def remote_like(images, prompts):
        time.sleep(seconds * len(images))
        return images.float().mean(dim=(1, 2, 3))

    return remote_like


def make_trainer(args, overlap: bool):
    from diffusers_mixgrpo import GRPOConfig, GRPOTrainer, GRPOTrainingPipeline
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="overlap-"),
        method="mixgrpo",
        num_inference_steps=args.steps,
        num_generations=args.group_size,
        sample_prompts_per_device=args.prompts,
        sample_max_batch_size=args.group_size,
        resolution=args.resolution,
        window_size=2,
        lora_rank=4,
        lora_alpha=4,
        report_to="none",
        checkpointing_steps=0,
        validation_steps=0,
        max_train_steps=100,
        seed=0,
    )
    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))
    prompts = ["a red circle", "a blue square", "a green cross", "a cat", "a dog", "a tree", "a house", "a car"]
    return GRPOTrainer(
        config, pipe, rewards={make_reward(args.reward_seconds): 1.0}, train_prompts=prompts, overlap_rewards=overlap
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--reward_seconds", type=float, default=0.05, help="per image")
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for overlap in (False, True):
        trainer = make_trainer(args, overlap)
        trainer.train_step()  # warm-up
        rows = []
        for _ in range(args.iterations):
            t0 = time.perf_counter()
            logs = trainer.train_step()
            rows.append((time.perf_counter() - t0, logs["time/rollout"], logs["time/reward"], logs["time/update"]))
        out["overlap" if overlap else "sequential"] = [statistics.median(c) for c in zip(*rows)]
    print(
        f"{args.prompts} prompts x G={args.group_size}, one chunk per prompt, {args.steps} steps, {args.resolution} px,"
        f" reward {args.reward_seconds} s per image; medians of {args.iterations} iterations"
    )
    print("mode | s/iter | rollout | reward (not hidden) | update")
    for k, (total, roll, rew, upd) in out.items():
        print(f"{k} | {total:.2f} | {roll:.2f} | {rew:.2f} | {upd:.2f}")
    gain = out["sequential"][0] / out["overlap"][0]
    print(f"iteration time sequential / overlap: {gain:.2f}x")
    return out


if __name__ == "__main__":
    main()
