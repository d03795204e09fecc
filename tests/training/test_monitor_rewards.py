"""Monitor rewards (`monitor_rewards`): scored and logged every step and in the evaluation, never trained on; a failing
monitor is NaN with a warning and never changes the run."""

import logging
import math
import time

import pytest
import torch

from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.errors import ConfigError
from diffusers_mixgrpo.training.logging_utils import step_logs
from testing_utils import brightness, lora_weights, tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat"]


def make_config(tmp_path, **overrides) -> GRPOConfig:
    values = dict(
        method="mixgrpo",
        num_inference_steps=4,
        num_generations=4,
        sample_prompts_per_device=2,
        learning_rate=1e-3,
        max_train_steps=1,
        seed=3,
    )
    return tiny_config(tmp_path / "run", **{**values, **overrides})


def darkness(images, prompts):
    """A monitor that falls when `brightness` rises."""
    return 1.0 - images.float().mean(dim=(1, 2, 3))


# -- the field ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, names",
    [
        (["toy_contrast", "toy_world"], ["toy_contrast", "toy_world"]),
        ("toy_contrast,toy_world", ["toy_contrast", "toy_world"]),
        ("toy_contrast=2.0", ["toy_contrast"]),  # the weight is read and ignored
        ({"toy_contrast": 0.5}, ["toy_contrast"]),
        ('{"toy_contrast": 1}', ["toy_contrast"]),
    ],
)
def test_monitor_rewards_take_the_rewards_syntax_and_keep_the_names(tmp_path, value, names):
    assert make_config(tmp_path, monitor_rewards=value).monitor_rewards == names


def test_a_reward_cannot_be_both_trained_on_and_monitored(tmp_path):
    with pytest.raises(ConfigError, match="monitor_rewards names 'toy_world', which is also in rewards"):
        make_config(tmp_path, rewards={"toy_world": 1.0}, monitor_rewards=["toy_world"])


def test_reward_kwargs_may_name_a_monitor(tmp_path):
    config = make_config(
        tmp_path,
        rewards={"toy_world": 1.0},
        monitor_rewards="toy_preference",
        reward_kwargs={"toy_preference": {"color_weight": 1.0}},
    )
    assert config.reward_kwargs == {"toy_preference": {"color_weight": 1.0}}


def test_an_unregistered_monitor_fails_before_the_model_loads(tmp_path):
    from diffusers_mixgrpo.training.preflight import check_run_inputs

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    config = make_config(
        tmp_path, rewards={"toy_world": 1.0}, monitor_rewards=["no_such_reward"], prompt_file=str(prompts)
    )
    with pytest.raises(ConfigError, match="monitor_rewards names 'no_such_reward', which is not a registered reward"):
        check_run_inputs(config)


def test_step_logs_give_each_trained_and_each_monitor_reward_its_own_curve():
    finite = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.0, 2.0])}
    monitor = {"m": torch.tensor([1.0, float("nan"), 4.0]), "dead": torch.full((3,), float("nan"))}
    logs = step_logs(
        {}, finite, {"a": 1.0, "b": 1.0}, {}, torch.zeros(2), torch.ones(3, dtype=torch.bool), (0, 2), (1.0, 2), 0.1,
        {}, monitor,
    )  # fmt: skip
    assert logs["reward/a"] == 2.0 and logs["reward/b"] == 1.0 and logs["reward/mean"] == 3.0
    assert logs["monitor/m"] == 2.5  # the mean of the finite scores: (1 + 4) / 2
    assert math.isnan(logs["monitor/dead"])


# -- in the trainer -------------------------------------------------------------------------------------------------


def test_monitors_are_logged_and_leave_the_update_unchanged(tmp_path):
    plain = tiny_flux_trainer(make_config(tmp_path / "a"), PROMPTS, rewards={brightness: 1.0})
    plain_logs = plain.train_step()
    watched = tiny_flux_trainer(
        make_config(tmp_path / "b"), PROMPTS, rewards={brightness: 1.0}, monitor_rewards=[darkness, "toy_contrast"]
    )
    logs = watched.train_step()
    assert set(logs) - set(plain_logs) == {"monitor/darkness", "monitor/toy_contrast", "time/monitor"}
    assert logs["reward/brightness"] == plain_logs["reward/brightness"]
    assert logs["monitor/darkness"] == pytest.approx(1.0 - logs["reward/brightness"], abs=1e-6)  # measured: 6e-8
    assert 0.0 <= logs["monitor/toy_contrast"] <= 1.0
    # the same rollout, advantages and update with and without monitors: bit for bit the same LoRA weights
    a, b = lora_weights(plain), lora_weights(watched)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert watched.history["monitor_darkness"] == [(1, logs["monitor/darkness"])]


def _raises(images, prompts):
    raise RuntimeError("the monitor's server is down")


def _nan(images, prompts):
    return torch.full((images.shape[0],), float("nan"))


def _too_few(images, prompts):
    return torch.zeros(1)


def _hangs(images, prompts):
    time.sleep(3.0)
    return torch.zeros(images.shape[0])


@pytest.mark.parametrize(
    "monitor, message",
    [
        (_raises, "monitor reward '_raises' failed (RuntimeError: the monitor's server is down)"),
        (_nan, "monitor reward '_nan' returned 8 non-finite score(s)"),
        (_too_few, "monitor reward '_too_few' failed (ValueError: it returned 1 scores for 8 images)"),
        (_hangs, "monitor reward '_hangs' did not answer within reward_timeout=0.5 s"),
    ],
)
def test_a_failing_monitor_is_nan_with_a_warning_and_never_drops_a_group(tmp_path, caplog, monitor, message):
    plain = tiny_flux_trainer(make_config(tmp_path / "a"), PROMPTS, rewards={brightness: 1.0})
    plain.train_step()
    config = make_config(tmp_path / "b", reward_timeout=0.5)
    watched = tiny_flux_trainer(config, PROMPTS, rewards={brightness: 1.0}, monitor_rewards=[monitor, darkness])
    with caplog.at_level(logging.WARNING):
        logs = watched.train_step()
    assert message in caplog.text
    assert math.isnan(logs[f"monitor/{monitor.__name__}"]) and math.isfinite(logs["monitor/darkness"])
    assert logs["data/dropped_samples"] == 0 and logs["train/optimizer_steps"] >= 1
    a, b = lora_weights(plain), lora_weights(watched)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_the_evaluation_scores_the_monitors_outside_the_weighted_reward(tmp_path, caplog):
    config = make_config(tmp_path, validation_images_per_prompt=2)
    trainer = tiny_flux_trainer(config, PROMPTS, rewards={brightness: 1.0}, monitor_rewards=[darkness, _raises])
    with caplog.at_level(logging.WARNING):
        result = trainer.evaluate(prompts=PROMPTS[:2])
    assert set(result.scores) == {"brightness"} and set(result.monitor_scores) == {"darkness", "_raises"}
    assert result.reward == pytest.approx(result.means["brightness"])
    assert result.monitor_means["darkness"] == pytest.approx(1.0 - result.means["brightness"], abs=1e-6)
    assert math.isnan(result.monitor_means["_raises"]) and "monitor reward '_raises' failed" in caplog.text


def test_toy_world_train_on_the_aesthetic_and_monitor_the_preference_product(tmp_path):
    # The reward-hacking set-up of docs/training.md: train on the unguarded toy_contrast, watch toy_preference and
    # toy_world (prompt following). Registered names load through the same path as the training rewards.
    config = make_config(
        tmp_path, rewards={"toy_contrast": 1.0}, monitor_rewards=["toy_preference", "toy_world"], max_train_steps=2
    )
    from diffusers_mixgrpo import GRPOTrainer, GRPOTrainingPipeline
    from diffusers_mixgrpo.toy_world import train_prompts
    from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline

    pipe = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline())
    trainer = GRPOTrainer(config, pipe, train_prompts=train_prompts(4))
    assert type(trainer.monitor.rewards["toy_preference"]).__name__ == "ToyPreferenceReward"
    out = trainer.train()
    for name in ("monitor_toy_preference", "monitor_toy_world", "train_reward"):
        assert [s for s, _ in out.reward_history[name]] == [1, 2], name
        assert all(math.isfinite(v) for _, v in out.reward_history[name])


def test_a_monitor_failing_on_one_rank_leaves_the_ranks_in_step(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU): the monitor fails on rank 1 only; both ranks train the same step (the
    same gathered collectives), log the same reward and monitor numbers, and end with the same weights."""
    import json
    import os
    from pathlib import Path

    from testing_utils import run_ranks

    script = Path(__file__).with_name("monitor_ranks_script.py")
    run_ranks(script, tmp_path / "run", tmp_path / "out", port=29611, env={**os.environ, "OMP_NUM_THREADS": "1"})
    r0, r1 = (json.loads((tmp_path / f"out.{r}.json").read_text()) for r in (0, 1))
    assert r0["logs"].keys() == r1["logs"].keys()
    for key in r0["logs"]:  # the gathered ones (advantage/* and train/* are this rank's)
        if key.startswith(("monitor/", "reward/", "data/")) or key == "train/optimizer_steps":
            assert r0["logs"][key] == r1["logs"][key], key
    assert math.isfinite(r0["logs"]["monitor/flaky"])  # rank 0's half of the samples
    assert r0["lora"] == r1["lora"]
    flaky = r0["eval"]["flaky"]  # items 0, 2 on rank 0, 1, 3 on rank 1 (round-robin)
    assert json.dumps(r0["eval"]) == json.dumps(r1["eval"])  # NaN included
    assert math.isfinite(flaky[0]) and math.isnan(flaky[1]) and math.isfinite(flaky[2]) and math.isnan(flaky[3])
