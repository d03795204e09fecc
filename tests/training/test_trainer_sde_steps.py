"""GRPOTrainer with `sde_steps` (a fixed list with gaps) and `num_sde_steps` (a count drawn per iteration) on a tiny
FLUX: the rollouts use exactly the scheduled steps, the first update is on-policy, and a resumed run draws and trains
exactly what the uninterrupted one does."""

import os

import pytest
import torch

from diffusers_mixgrpo.schedulers.sde_steps import SDEStepSchedule
from testing_utils import lora_weights, tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat"]


def make_config(tmp_path, **overrides):
    """6 steps, 4 images for each of 2 prompts per iteration; the window fields left to the method (they are replaced
    by the SDE-step settings)."""
    values = dict(
        method="mixgrpo",
        num_inference_steps=6,
        num_generations=4,
        sample_prompts_per_device=2,
        window_size=None,
        learning_rate=1e-3,
        max_train_steps=4,
        seed=3,
    )
    return tiny_config(tmp_path / "run", **{**values, **overrides})


def record_sde_steps(trainer) -> list:
    """Wrap the pipeline's rollout to record the SDE steps of every training rollout."""
    seen, rollout = [], trainer.pipeline.rollout

    def recording(*args, **kwargs):
        if kwargs.get("sde_steps") is not None:
            seen.append(list(kwargs["sde_steps"]))
        return rollout(*args, **kwargs)

    trainer.pipeline.rollout = recording
    return seen


def test_fixed_steps_with_gaps_train_on_policy(tmp_path):
    trainer = tiny_flux_trainer(make_config(tmp_path, sde_steps=[0, 3], max_train_steps=1), PROMPTS)
    assert isinstance(trainer.window, SDEStepSchedule)
    seen = record_sde_steps(trainer)
    before = lora_weights(trainer)
    logs = trainer.train_step()
    assert seen == [[0, 3]]
    # on-policy first update with gaps between the trained steps: the ratio is exactly 1
    assert logs["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)  # measured |ratio_mean - 1|: 0.0
    assert logs["window/start"] == 0 and logs["window/size"] == 2  # first SDE step, number of SDE steps
    assert logs["nfe/train_per_image"] == 2
    assert any(not torch.equal(before[n], v) for n, v in lora_weights(trainer).items())


def test_drawn_steps_resume_exactly(tmp_path):
    """num_sde_steps drawn per iteration (scattered, so with gaps): 4 updates straight == 2 updates, checkpoint, a
    fresh trainer resuming, 2 more; the same draws (<= 1e-6 on the LoRA weights, measured 0.0)."""
    settings = dict(num_sde_steps=[1, 2, 3], sde_step_range=[0, 5], sde_step_layout="scattered")
    straight = tiny_flux_trainer(make_config(tmp_path / "a", **settings), PROMPTS)
    seen_straight = record_sde_steps(straight)
    straight.train()
    assert seen_straight == [straight.window.draw(k) for k in range(4)]
    assert len({tuple(s) for s in seen_straight}) > 1  # the draws do change between iterations

    first = tiny_flux_trainer(
        make_config(tmp_path / "b", max_train_steps=2, checkpointing_steps=2, **settings), PROMPTS
    )
    first.train()
    assert os.path.isdir(tmp_path / "b" / "run" / "checkpoint-2")
    resumed = tiny_flux_trainer(
        make_config(tmp_path / "b", max_train_steps=4, resume_from_checkpoint="latest", **settings), PROMPTS
    )
    seen_resumed = record_sde_steps(resumed)
    out = resumed.train()
    assert out.global_step == 4
    assert seen_resumed == seen_straight[2:]
    assert resumed.window.state_dict() == straight.window.state_dict()
    got, reference = lora_weights(resumed), lora_weights(straight)
    for name, value in reference.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=1e-6)


def test_a_trained_fraction_of_listed_steps_is_drawn_among_them():
    """`train_timestep_fraction` < 1 (DanceGRPO's per-sample subset) works on steps with gaps: 2 of [0, 3, 5, 9]."""
    from diffusers_mixgrpo.training.iteration_plan import draw_train_steps

    chosen = draw_train_steps([0, 3, 5, 9], 16, seed=1, step=0, train_timestep_fraction=0.5, first=0)
    assert all(len(c) == 2 and c == sorted(c) and set(c) <= {0, 3, 5, 9} for c in chosen)
    assert len({tuple(c) for c in chosen}) > 1
