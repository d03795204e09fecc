"""Reward evaluation helpers: score image batches with several rewards and summarise them (mean, standard error)."""

import math
from collections.abc import Mapping, Sequence

import torch

from .base import ImageBatch, Reward


def score_all(rewards: Mapping[str, Reward], images: ImageBatch, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Each reward's (B,) float32 CPU scores for one batch."""
    return {name: torch.as_tensor(fn(images, prompts)).reshape(-1).float().cpu() for name, fn in rewards.items()}


def summarize(scores: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{name: {"mean", "sem", "std", "n"}}``; `sem` is the standard error of the mean, ``std / sqrt(n)`` with the
    sample std (n - 1); NaN for n < 2."""
    out = {}
    for name, values in scores.items():
        v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        n = v.numel()
        std = v.std().item() if n > 1 else math.nan
        out[name] = {
            "mean": v.mean().item() if n else math.nan,
            "sem": std / math.sqrt(n) if n > 1 else math.nan,
            "std": std,
            "n": n,
        }
    return out


def format_table(summary: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: reward | mean | s.e.m. | n."""
    lines = ["| reward | mean | s.e.m. | n |", "| --- | ---: | ---: | ---: |"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['mean']:.4f} | {s['sem']:.4f} | {s['n']} |")
    return "\n".join(lines)
