"""Held-out evaluation of the toy task: prompts and noise that training never sees, ODE sampling, accuracy and reward.

What "held-out" means here, precisely:

* **prompts**: `heldout_eval_prompts()` are prompts with at least one held-out (colour, shape, position) triple, so
  neither the base model's training data nor any GRPO training prompt (`train_prompts`, `train_prompt_pool`)
  contains their object combinations (checked in `tests/toy_world/test_evaluation.py`);
* **noise**: the initial latents come from generators seeded at `HELDOUT_NOISE_SEED` and above (2^40 + i). The
  trainer seeds rollout noise with ``seed * 1_000_003 + step * 7_919 + 31 * slot``, below 2^40 for any seed
  under 10^5 and step under 10^7, so training never draws these latents;
* **sampling**: deterministic ODE (no SDE window), the same for "before" and "after": one fixed evaluation set.

The same function evaluates training prompts with fresh noise (`train_eval_prompts()`), so a reader can see how much
of a gain generalises.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .world import heldout_prompts, parse_prompt, train_prompt_pool

HELDOUT_NOISE_SEED = 1 << 40
TRAIN_EVAL_NOISE_SEED = (1 << 40) + (1 << 30)


@dataclass
class ToyAlignmentScores:
    """Mean scores of one evaluation set.

    Fields:
        accuracy: fraction of images judged correct (GenEval-style: every object of the right colour, on the right
            side, of the right shape, nothing else drawn).
        reward: mean toy-world (prompt-following) reward in [0, 1].
        preference: mean toy preference score (`toy_preference`: toy-world reward x contrast) in [0, 1].
        contrast: mean aesthetic term (`toy_contrast`) in [0, 1].
        accuracy_single, accuracy_two: accuracy on single- and two-object prompts.
        color_ok, position_ok, shape_ok: per-object rates of the reward's judgements (named colour present; on the
            named side; fully right).
        num_images: images scored.
    """

    accuracy: float
    reward: float
    accuracy_single: Optional[float]
    accuracy_two: Optional[float]
    color_ok: float
    position_ok: float
    shape_ok: float
    num_images: int
    preference: float = float("nan")
    contrast: float = float("nan")
    #: Per-image values, in batch order (prompt-major): "preference", "reward", "contrast", "correct"; with `prompts`
    #: they give paired gains and their standard error (`paired_gain`). Not part of `to_dict()`.
    per_image: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    prompts: list[str] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("per_image", "prompts")}


def paired_gain(before: ToyAlignmentScores, after: ToyAlignmentScores, metric: str) -> tuple[float, float]:
    """Mean gain of `metric` from `before` to `after` on the same evaluation set, and its standard error.

    The two evaluations must score the same images' prompts and noise (checked). The standard error treats the
    *prompts* as the independent units (the images of one prompt share it, so they are not independent): the gain of
    each prompt is the mean over its images, and the SE is their standard deviation over sqrt(number of prompts).
    """
    if before.prompts != after.prompts or not before.prompts:
        raise ValueError("paired_gain needs two evaluations of the same prompts (and noise), in the same order.")
    diff = after.per_image[metric].astype(np.float64) - before.per_image[metric].astype(np.float64)
    order = {p: i for i, p in enumerate(dict.fromkeys(before.prompts))}
    return clustered_mean_and_se(diff, np.array([order[p] for p in before.prompts]))


def clustered_mean_and_se(diff, prompt_index) -> tuple[float, float]:
    """Mean of the per-image differences `diff` and its standard error with the prompts as the units.

    `prompt_index[i]` is the prompt of image `i` (0..P-1). The SE is the standard deviation of the P per-prompt means
    over sqrt(P) (NaN for a single prompt). `paired_gain` and the learning benchmark's report both use it.
    """
    diff = np.asarray(diff, dtype=np.float64)
    idx = np.asarray(prompt_index)
    per_prompt = np.bincount(idx, weights=diff) / np.bincount(idx)
    se = float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))) if len(per_prompt) > 1 else float("nan")
    return float(diff.mean()), se


def heldout_eval_prompts() -> list[str]:
    """The held-out evaluation prompts: the 32 fixed `heldout_prompts()` (16 single-, 16 two-object)."""
    return heldout_prompts()


def train_eval_prompts(n: int = 32, seed: int = 99) -> list[str]:
    """`n` distinct training prompts (half single-, half two-object), for the gain on seen combinations."""
    rng = np.random.default_rng(seed)
    singles, pairs = train_prompt_pool(1), train_prompt_pool(2)
    a = rng.choice(len(singles), size=n // 2, replace=False)
    b = rng.choice(len(pairs), size=n - n // 2, replace=False)
    return [singles[i] for i in sorted(a)] + [pairs[i] for i in sorted(b)]


def noise_generators(num_prompts: int, noise_seed: int) -> list[torch.Generator]:
    """One generator per prompt, seeded ``noise_seed + i``: the fixed evaluation noise."""
    return [torch.Generator().manual_seed(noise_seed + i) for i in range(num_prompts)]


@torch.no_grad()
def evaluate_alignment(
    pipeline,
    prompts: Sequence[str],
    images_per_prompt: int = 4,
    noise_seed: int = HELDOUT_NOISE_SEED,
    num_inference_steps: int = 10,
    guidance_scale: float = 3.5,
    resolution: int = 32,
    max_batch_size: Optional[int] = 64,
):
    """Sample `prompts` with the ODE (fixed noise from `noise_seed`) and judge them with the toy-world reward.

    `pipeline` is a `GRPOTrainingPipeline` over the toy model (its denoiser may carry a LoRA). Within a prompt the
    `images_per_prompt` samples start from different noise (`same_initial_noise=False`). Returns
    `(ToyAlignmentScores, RolloutBatch)`.
    """
    from .preference import toy_contrast
    from .reward import ToyWorldReward

    prompts = list(prompts)
    batch = pipeline.rollout(
        prompts,
        num_generations=images_per_prompt,
        num_inference_steps=num_inference_steps,
        sde_window=(0, 0),
        guidance_scale=guidance_scale,
        height=resolution,
        width=resolution,
        generator=noise_generators(len(prompts), noise_seed),
        same_initial_noise=False,
        max_batch_size=max_batch_size,
    )
    result = ToyWorldReward().evaluate(batch.images, batch.prompts)
    contrast = toy_contrast(batch.images)
    preference = result.score * contrast
    n_obj = np.array([len(parse_prompt(p)) for p in batch.prompts])

    def _acc(mask):
        return float(result.correct[mask].mean()) if mask.any() else None

    scores = ToyAlignmentScores(
        accuracy=float(result.correct.mean()),
        reward=float(result.score.mean()),
        accuracy_single=_acc(n_obj == 1),
        accuracy_two=_acc(n_obj == 2),
        color_ok=float(result.color_ok.mean()),
        position_ok=float(result.position_ok.mean()),
        shape_ok=float(result.shape_ok.mean()),
        num_images=int(len(result.score)),
        preference=float(preference.mean()),
        contrast=float(contrast.mean()),
        per_image={
            "preference": preference,
            "reward": result.score,
            "contrast": contrast,
            "correct": result.correct.astype(np.float32),
        },
        prompts=list(batch.prompts),
    )
    return scores, batch
