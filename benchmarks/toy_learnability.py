"""How learnable is a toy-task reward? The share of its within-group spread that comes from what the policy can flip.

    python benchmarks/toy_learnability.py [--groups 64] [--output benchmarks/results/toy_learnability.json]

GRPO learns only from the spread of rewards *within* a group (the G rollouts of one prompt share their initial noise
and differ only by the SDE window's noise). This script rolls out the demo's groups on the toy base model (the demo's
config: G = 8, window (0, 3) of 10 steps, eta 0.7, training prompts and training-style noise seeds) and splits the
within-group variance of each reward into the part explained by the rendering mode the base model picked (clean or
hazy, read from `toy_contrast > 0.75`: one global, prompt-independent choice the policy can learn to make) and the
rest (shape fidelity, colour, side: what a tiny model behind a blurring VAE controls poorly). It also reports how often
a group holds both modes (only those groups carry the mode signal).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def within_group_split(values: np.ndarray, mode: np.ndarray, group: int) -> dict[str, float]:
    """Within-group variance of `values` (B,) and the share of it explained by the binary `mode` (B,) per group."""
    v, m = values.reshape(-1, group).astype(np.float64), mode.reshape(-1, group)
    total = ((v - v.mean(axis=1, keepdims=True)) ** 2).sum()
    explained = 0.0
    for row, flags in zip(v, m):
        for k in (True, False):
            sel = flags == k
            if sel.any():
                explained += sel.sum() * (row[sel].mean() - row.mean()) ** 2
    return {
        "within_group_std": float(np.sqrt(total / v.size)),
        "share_from_mode": float(explained / total) if total > 0 else float("nan"),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=64, help="Groups (prompts) to roll out.")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "toy_learnability.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from diffusers_mixgrpo.toy_world.demo import DEMO_DEFAULTS, build_toy_trainer
    from diffusers_mixgrpo.toy_world.preference import toy_contrast
    from diffusers_mixgrpo.toy_world.reward import ToyWorldReward

    start = time.perf_counter()
    trainer = build_toy_trainer("mixgrpo", os.path.join("/tmp", "toy_learnability"), 1, 0)
    group, per = DEMO_DEFAULTS["num_generations"], DEMO_DEFAULTS["sample_prompts_per_device"]
    steps = -(-args.groups // per)
    world, contrast = [], []
    with torch.no_grad():
        for step in range(steps):
            batch = trainer._rollout(step)
            world.append(ToyWorldReward().evaluate(batch.images, batch.prompts).score)
            contrast.append(toy_contrast(batch.images))
    world, contrast = np.concatenate(world), np.concatenate(contrast)
    clean = contrast > 0.75
    modes = clean.reshape(-1, group)
    result = {
        "groups": int(len(modes)),
        "group_size": group,
        "clean_share": float(clean.mean()),
        "groups_with_both_modes": float((modes.any(axis=1) & ~modes.all(axis=1)).mean()),
        "rewards": {
            "toy_preference": within_group_split(world * contrast, clean, group),
            "toy_world": within_group_split(world, clean, group),
            "toy_contrast": within_group_split(contrast, clean, group),
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()
    return result


if __name__ == "__main__":
    main()
