"""The held-out evaluation is held out: its prompts and noise never occur in training, and it is deterministic."""

import pytest
import torch

from diffusers_mixgrpo.toy_world import is_heldout_prompt, parse_prompt, train_prompt_pool, train_prompts
from diffusers_mixgrpo.toy_world.base_model import ASSETS_DIR
from diffusers_mixgrpo.toy_world.evaluation import (
    HELDOUT_NOISE_SEED,
    TRAIN_EVAL_NOISE_SEED,
    evaluate_alignment,
    heldout_eval_prompts,
    noise_generators,
    train_eval_prompts,
)
from diffusers_mixgrpo.toy_world.train_base import noisy_caption_objects
from diffusers_mixgrpo.training.iteration_plan import prompt_generators


def test_heldout_prompts_share_no_object_combination_with_any_training_prompt():
    heldout = heldout_eval_prompts()
    assert len(heldout) == 32 and all(is_heldout_prompt(p) for p in heldout)
    pool = set(train_prompt_pool())
    assert not pool & set(heldout)
    assert not any(is_heldout_prompt(p) for p in train_prompts(1024, seed=0))  # what the demo trains on
    assert sum(len(parse_prompt(p)) == 2 for p in heldout) == 16


def test_training_evaluation_prompts_are_distinct_training_prompts():
    seen = train_eval_prompts()
    assert len(seen) == len(set(seen)) == 32
    assert not any(is_heldout_prompt(p) for p in seen)


def test_heldout_noise_seeds_are_above_every_seed_the_trainer_draws_rollout_noise_from():
    # The trainer seeds rollout noise with seed * 1_000_003 + step * 7_919 + 31 * slot: at the extremes of any
    # realistic run (seed < 10^5, step < 10^7, 1024 prompt slots) it stays below the held-out range.
    gens = prompt_generators(10**5 - 1, 10**7 - 1, [1023])  # what the trainer's rollouts draw from
    assert gens[0].initial_seed() < HELDOUT_NOISE_SEED < TRAIN_EVAL_NOISE_SEED
    assert noise_generators(3, HELDOUT_NOISE_SEED)[2].initial_seed() == HELDOUT_NOISE_SEED + 2
    assert TRAIN_EVAL_NOISE_SEED - HELDOUT_NOISE_SEED > 10**6  # the two evaluation ranges never overlap


def test_caption_noise_recolours_the_asked_fraction_of_objects_and_nothing_else():
    prompts = train_prompts(4000, seed=3)
    drawn = noisy_caption_objects(prompts, 0.4, seed=1)
    named = [o for p in prompts for o in parse_prompt(p)]
    got = [o for objs in drawn for o in objs]
    changed = [a.color != b.color for a, b in zip(named, got)]
    assert abs(sum(changed) / len(changed) - 0.4) < 0.02
    assert all((a.shape, a.position) == (b.shape, b.position) for a, b in zip(named, got))
    assert drawn == noisy_caption_objects(prompts, 0.4, seed=1)
    assert noisy_caption_objects(prompts[:50], 0.0, seed=1) == [parse_prompt(p) for p in prompts[:50]]
    with pytest.raises(ValueError, match="caption_color_noise must be in"):
        noisy_caption_objects(prompts, 1.0, seed=0)


@pytest.mark.skipif(not (ASSETS_DIR / "model_index.json").is_file(), reason="toy base weights not shipped")
def test_evaluation_is_deterministic_and_uses_ode_samples():
    from diffusers_mixgrpo import GRPOTrainingPipeline
    from diffusers_mixgrpo.toy_world import load_toy_base_pipeline

    pipe = GRPOTrainingPipeline.from_pipe(load_toy_base_pipeline())
    pipe.max_sequence_length = 16
    prompts = heldout_eval_prompts()[:4]
    a, batch_a = evaluate_alignment(pipe, prompts, images_per_prompt=2)
    b, batch_b = evaluate_alignment(pipe, prompts, images_per_prompt=2)
    assert a == b and torch.equal(batch_a.images, batch_b.images)
    assert a.num_images == 8 and 0.0 <= a.accuracy <= 1.0 and 0.0 <= a.reward <= 1.0
    assert not batch_a.step_indices  # no SDE step: a deterministic ODE rollout
    # the samples of one prompt start from different noise
    assert not torch.equal(batch_a.images[0], batch_a.images[1])


def test_paired_gain_takes_the_prompts_as_the_units():
    import numpy as np

    from diffusers_mixgrpo.toy_world.evaluation import ToyAlignmentScores, paired_gain

    def scores(values):
        return ToyAlignmentScores(
            accuracy=0.0, reward=0.0, accuracy_single=None, accuracy_two=None, color_ok=0.0, position_ok=0.0,
            shape_ok=0.0, num_images=4, per_image={"preference": np.array(values)}, prompts=["a", "a", "b", "b"],
        )  # fmt: skip

    # per-image gains 0.1, 0.3 (prompt a: 0.2) and 0.0, 0.2 (prompt b: 0.1): mean 0.15, SE = std(0.2, 0.1) / sqrt(2)
    gain, se = paired_gain(scores([0.5, 0.5, 0.5, 0.5]), scores([0.6, 0.8, 0.5, 0.7]), "preference")
    assert gain == pytest.approx(0.15) and se == pytest.approx(np.std([0.2, 0.1], ddof=1) / np.sqrt(2))
    other = scores([0.5] * 4)
    other.prompts = ["b", "b", "a", "a"]
    with pytest.raises(ValueError, match="same prompts"):
        paired_gain(scores([0.5] * 4), other, "preference")
