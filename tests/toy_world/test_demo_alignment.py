"""The README's demo: trains on training prompts, measures before and after on one fixed held-out set."""

import json

import pytest

from diffusers_mixgrpo.toy_world import is_heldout_prompt, train_prompts
from diffusers_mixgrpo.toy_world.demo import NUM_TRAIN_PROMPTS, run_demo


def test_the_demo_never_trains_on_a_heldout_combination():
    assert not any(is_heldout_prompt(p) for p in train_prompts(NUM_TRAIN_PROMPTS, seed=0))


@pytest.mark.slow
def test_a_short_demo_writes_its_files_and_scores_the_same_heldout_set_before_and_after(tmp_path):
    """3 MixGRPO steps: the plumbing of the README command (held-out scores, curve, grid, LoRA, summary).

    It does not assert a gain: measured over 3 seeds at the demo's full length, the held-out gain is within the
    seed-to-seed noise (docs/toy_world.md, "What the demo shows"), so a margin test would not be honest."""
    out = tmp_path / "demo"
    result = run_demo("mixgrpo", str(out), steps=3, seed=0, progress=False, validation_steps=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_before"]["num_images"] == summary["heldout_after"]["num_images"] == 128
    assert summary["train_before"]["num_images"] == 128
    assert summary["curve"][0] == {"step": 0, **{k: result.heldout_before[k] for k in ("accuracy", "reward")}}
    assert [p["step"] for p in summary["curve"]] == [0, 2, 3]
    assert summary["accuracy_gain"] == pytest.approx(result.accuracy_gain)
    for name in ("reward_curve.png", "before_after.png", "pytorch_lora_weights.safetensors"):
        assert (out / name).stat().st_size > 1000
    assert result.summary().startswith("[mixgrpo] held-out accuracy ")


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="method='grpo' is not allowed"):
        run_demo("grpo", str(tmp_path))
