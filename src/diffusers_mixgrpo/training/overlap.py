"""Rewards beside the rollout: score the images of rollout piece k in a thread while piece k+1 is denoised.

A piece is what one rollout chunk holds (`sample_max_batch_size // num_generations` whole groups, at least one
prompt), so the denoiser sees the same batches as in one `rollout` call and the noise of every group is the same (it
depends on (seed, step, global prompt slot) only). The reward call runs in a worker thread: torch's kernels and a
remote reward's network wait release the GIL, so a reward model on another GPU, or behind `RemoteReward`, costs no
rollout time. `concat_rollouts` joins the pieces into the `RolloutBatch` the update trains on.
"""

import concurrent.futures
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..pipelines.rollout_batch import PromptEmbeds, RolloutBatch


def concat_rollouts(parts: Sequence[RolloutBatch]) -> RolloutBatch:
    """Join rollouts of disjoint prompt sets made with the same window and settings (group ids and chunks offset)."""
    if not parts:
        raise ValueError("concat_rollouts needs at least one RolloutBatch.")
    first = parts[0]
    for p in parts[1:]:
        if p.step_indices != first.step_indices or p.sde_window != first.sde_window:
            raise ValueError(
                f"Cannot join rollouts with different SDE windows ({first.sde_window} vs {p.sde_window})."
            )
    group_offset, sample_offset = 0, 0
    group_ids, chunks = [], []
    for p in parts:
        group_ids.append(p.group_ids + group_offset)
        chunks.extend(c + sample_offset for c in p.chunks)
        group_offset += len(p.prompt_embeds)
        sample_offset += p.batch_size
    return RolloutBatch(
        images=torch.cat([p.images for p in parts]),
        prompts=[s for p in parts for s in p.prompts],
        group_ids=torch.cat(group_ids),
        prompt_embeds=PromptEmbeds.concat([p.prompt_embeds for p in parts]),
        latents=torch.cat([p.latents for p in parts]),
        log_probs=torch.cat([p.log_probs for p in parts]),
        step_indices=list(first.step_indices),
        timesteps=first.timesteps,
        latent_index=list(first.latent_index),
        chunks=chunks,
        scheduler_kwargs=dict(first.scheduler_kwargs),
        sde_window=first.sde_window,
        guidance_scale=first.guidance_scale,
        height=first.height,
        width=first.width,
        nfe=sum(p.nfe for p in parts),
        means=torch.cat([p.means for p in parts]) if first.means is not None else None,
    )


def rollout_with_rewards_alongside(
    pieces: Sequence[Any], rollout: Callable[[Any], RolloutBatch], score: Callable[[RolloutBatch], dict]
) -> tuple[RolloutBatch, dict[str, torch.Tensor], float]:
    """`rollout(piece)` for each piece in order while `score(batch)` of the previous piece runs in a thread.

    Returns the joined batch, the joined scores (`{reward name: (B,) tensor}`) and the seconds spent waiting for the
    last scores after the last rollout (the reward time that was not hidden). A reward that raises re-raises here, at
    once: the scores still queued are dropped, and the worker is a daemon thread, so a reward call still running
    (hung past `reward_timeout`) neither delays the error nor keeps the process alive at exit."""
    import time

    jobs: queue.Queue = queue.Queue()

    def work() -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            future, batch = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(score(batch))
            except BaseException as err:  # handed to the waiting caller
                future.set_exception(err)

    threading.Thread(target=work, name="reward-alongside", daemon=True).start()
    batches, futures = [], []
    try:
        for piece in pieces:
            batch = rollout(piece)
            batches.append(batch)
            futures.append(concurrent.futures.Future())
            jobs.put((futures[-1], batch))
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        waited = time.perf_counter() - t0
    finally:
        for f in futures:
            f.cancel()  # those not started yet (a no-op for the finished ones)
        jobs.put(None)
    scores = {name: torch.cat([r[name] for r in results]) for name in results[0]}
    return concat_rollouts(batches), scores, waited
