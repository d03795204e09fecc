"""What one training iteration draws, each a function of the run's seed, the step and global indices only: the
prompts of each process, the noise generators of each prompt slot, the window steps each sample trains, and the order
and split of the training micro-batches.

So a resumed run draws exactly what the uninterrupted one would (the data position is a function of the step), and
every rank draws the same plan: all ranks enter the same sequence of forward / backward / optimiser steps (a rank that
ran one collective fewer would hang the others), and the same global batch split over any number of processes trains
the same samples at the same steps."""

from collections.abc import Sequence

import torch


def prompt_indices(
    step: int, seed: int, num_prompts: int, per_device: int, num_processes: int, process_index: int
) -> list[int]:
    """The prompt indices process `process_index` rolls out at training step `step`: a seeded permutation of the
    prompts per epoch, read in order across the processes' `per_device` slots."""
    per_step = per_device * num_processes
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, num_prompts)
        perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + 1000003 * epoch))
        out.append(int(perm[pos]))
    lo = process_index * per_device
    return out[lo : lo + per_device]


def prompt_generators(seed: int, step: int, global_slots: Sequence[int]) -> list[torch.Generator]:
    """One generator per prompt slot of the global batch: a group's noise depends on (seed, step, slot) only."""
    base = seed * 1_000_003 + step * 7919
    return [torch.Generator().manual_seed(base + 31 * slot) for slot in global_slots]


def num_train_steps(num_window_steps: int, train_timestep_fraction: float) -> int:
    """K, the window steps trained per sample: all of them, or `train_timestep_fraction` of them (at least 1)."""
    return min(num_window_steps, max(1, int(num_window_steps * train_timestep_fraction)))


def draw_train_steps(
    step_indices: Sequence[int], batch_size: int, seed: int, step: int, train_timestep_fraction: float, first: int
) -> list[list[int]]:
    """The window steps each of `batch_size` local samples trains this iteration (one sorted list per sample).

    All of them, or (DanceGRPO, `train_timestep_fraction` < 1) a random subset drawn per sample, as the official
    DanceGRPO code does (a `randperm` of the timesteps for each sample). The draw is seeded by the run's seed, the
    training step and the sample's global index (`first`: the global index of this process's first sample)."""
    steps = list(step_indices)
    k = num_train_steps(len(steps), train_timestep_fraction)
    if k >= len(steps):
        return [steps] * batch_size
    chosen = []
    for i in range(batch_size):
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_033 + first + i)
        chosen.append([steps[j] for j in torch.randperm(len(steps), generator=g)[:k].sort().values.tolist()])
    return chosen


def micro_batches(
    batch_size: int, chunks: Sequence[torch.Tensor], train_batch_size, order: torch.Generator
) -> list[torch.Tensor]:
    """One inner epoch's training micro-batches (sample indices), in training order, drawn from `order` (seeded the
    same on every rank). `train_batch_size=None`: the rollout's own `chunks`, shuffled; else a shuffled partition of
    the `batch_size` samples into micro-batches of `train_batch_size`."""
    if train_batch_size is None:
        return [chunks[i].cpu() for i in torch.randperm(len(chunks), generator=order).tolist()]
    return list(torch.randperm(batch_size, generator=order).split(train_batch_size))


def step_pieces(train_steps: list[list[int]], idx: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The forwards of one micro-batch: `(window step, samples)` pairs, K of them when every sample of `idx` trains
    the same steps; with per-sample steps (DanceGRPO), the j-th trained step of each sample, samples that share it
    batched together."""
    rows = [train_steps[j] for j in idx.tolist()]
    pieces = []
    for j in range(len(rows[0])):
        column = torch.tensor([r[j] for r in rows])
        for t in sorted(set(column.tolist())):
            pieces.append((t, idx[column == t]))
    return pieces
