"""GRPOTrainer robustness (issue 13): resume checks and fallbacks, runs that must stop or warn instead of finishing with
nothing learned, full disk, signals, file permissions, the config a run records, start-up noise. Tiny FLUX, 1-3 steps.
"""

import json
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.checkpointing import CheckpointManager
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.errors import CheckpointError, DiskFullError, TrainingStopped
from diffusers_mixgrpo.training.interrupts import GracefulInterrupt
from diffusers_mixgrpo.training.trainer import GRPOTrainer, load_training_pipeline
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline
from testing_utils import brightness, lora_weights, tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat", "a dog"]


def make_config(output_dir, **overrides) -> GRPOConfig:
    values = dict(learning_rate=1e-3, max_train_steps=2, checkpointing_steps=1, seed=3)
    return tiny_config(output_dir, **{**values, **overrides})


def make_trainer(config, rewards=None, **kwargs) -> GRPOTrainer:
    return tiny_flux_trainer(config, PROMPTS, rewards=rewards, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step run with checkpoint-1 and checkpoint-2, and its weights after each step."""
    root = tmp_path_factory.mktemp("robust") / "run"
    trainer = make_trainer(make_config(root, max_train_steps=1))
    trainer.train()
    after_1 = lora_weights(trainer)
    trainer = make_trainer(make_config(root, max_train_steps=2, resume_from_checkpoint="latest"))
    trainer.train()
    return root, after_1, lora_weights(trainer)


def copy_run(finished_run, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run[0], target)
    return target


def resume(run_dir, **overrides) -> GRPOTrainer:
    trainer = make_trainer(make_config(run_dir, resume_from_checkpoint="latest", **overrides))
    trainer.resume("latest")
    return trainer


# -- resume (item 11) ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "delete"])
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_is_used(finished_run, tmp_path, damage, caplog):
    run = copy_run(finished_run, tmp_path)
    victim = run / "checkpoint-2" / "lora_adapter.safetensors"
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip_a_byte":
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        victim.unlink()  # what a kill during an old-style prune could leave
    trainer = resume(run)
    assert trainer.global_step == 1
    assert any(str(victim) in r.getMessage() and "Falling back" in r.getMessage() for r in caplog.records)
    for name, value in finished_run[1].items():
        torch.testing.assert_close(lora_weights(trainer)[name], value, rtol=0, atol=0)


def test_a_corrupt_explicit_checkpoint_is_an_error_naming_the_file(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    (run / "checkpoint-2" / "optimizer.bin").write_bytes(b"garbage")
    trainer = make_trainer(make_config(run))
    with pytest.raises(CheckpointError, match=r"checkpoint-2/optimizer.bin is truncated or corrupt"):
        trainer.resume(str(run / "checkpoint-2"))


def test_non_finite_weights_in_a_checkpoint_stop_the_run(finished_run, tmp_path):
    from safetensors.torch import load_file, save_file

    run = copy_run(finished_run, tmp_path)
    path = run / "checkpoint-2" / "lora_adapter.safetensors"
    state = load_file(path)
    first = sorted(state)[0]
    state[first][0, 0] = float("nan")
    save_file(state, path)
    marker = run / "checkpoint-2" / "checkpoint_complete.json"
    info = json.loads(marker.read_text())
    del info["files"]  # a checkpoint that diverged before it was saved: its manifest would match
    marker.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"checkpoint-2 holds non-finite weights"):
        resume(run)


def test_another_lora_rank_is_one_sentence_even_without_a_saved_config(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    for step in (1, 2):  # checkpoints written before the config was saved in them
        state_file = run / f"checkpoint-{step}" / "trainer_state.pt"
        state = torch.load(state_file, weights_only=True)
        state.pop("config")
        torch.save(state, state_file)
        marker = run / f"checkpoint-{step}" / "checkpoint_complete.json"
        marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    with pytest.raises(CheckpointError, match=r"holds LoRA rank 4 but this run has lora_rank=8"):
        resume(run, lora_rank=8, lora_alpha=8)


def test_a_kill_during_pruning_leaves_nothing_that_looks_like_a_checkpoint(finished_run, tmp_path, monkeypatch):
    run = copy_run(finished_run, tmp_path)
    manager = CheckpointManager(run, total_limit=1)
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):
        if ".trash-" in str(path):
            os.remove(os.path.join(path, "optimizer.bin"))  # half deleted, then the process dies
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        manager.prune()
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert [os.path.basename(p) for p in manager.checkpoints()] == ["checkpoint-2"]
    assert any(name.startswith(".trash-checkpoint-1") for name in os.listdir(run))
    trainer = resume(run)  # the next run cleans up and resumes from the intact one
    trainer.train()
    assert not any(name.startswith(".trash-") for name in os.listdir(run))


def test_a_changed_learning_rate_is_applied_and_recorded(finished_run, tmp_path, caplog):
    run = copy_run(finished_run, tmp_path)
    trainer = resume(run, learning_rate=5e-3, max_train_steps=3)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    out = trainer.train()
    first, latest = out.summary.config_changes  # the fixture's own resume, then this one (the folder was moved)
    assert first == {"step": 1, "changes": {"max_train_steps": [1, 2]}}
    assert latest["step"] == 2 and latest["changes"]["learning_rate"] == [1e-3, 5e-3]
    assert set(latest["changes"]) == {"learning_rate", "max_train_steps", "output_dir", "prompt_file"}
    assert yaml.safe_load((run / "training_config.yaml").read_text())["learning_rate"] == 5e-3
    state = torch.load(run / "checkpoint-3" / "trainer_state.pt", weights_only=True)
    assert state["config"]["learning_rate"] == 5e-3 and state["config_changes"] == out.summary.config_changes


def test_another_setting_that_shapes_the_run_is_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    with pytest.raises(CheckpointError, match=r"with window_size=3: it was trained with window_size=2"):
        resume(run, window_size=3)


def test_other_training_prompts_are_refused(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path)
    trainer = GRPOTrainer(
        make_config(run, resume_from_checkpoint="latest"),
        GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0)),
        rewards={brightness: 1.0},
        train_prompts=PROMPTS[::-1],
    )
    with pytest.raises(CheckpointError, match=r"the 5 training prompts .* are not those it was trained with"):
        trainer.resume("latest")


# -- the config a run records (item 8) and the validation default (item 3) ------------------------------------------


def test_the_recorded_config_reproduces_a_run_given_objects(tmp_path):
    from diffusers import FluxPipeline

    build_tiny_flux_pipeline(seed=0).save_pretrained(tmp_path / "model")
    pipe = GRPOTrainingPipeline.from_pipe(FluxPipeline.from_pretrained(tmp_path / "model"))
    config = make_config(tmp_path / "run", max_train_steps=1, checkpointing_steps=0, rewards=None)
    trainer = GRPOTrainer(config, pipe, rewards={"jpeg_compressibility": 1.0}, train_prompts=PROMPTS)
    assert trainer.eval_prompts == PROMPTS[:4]  # documented default: the first 4 training prompts
    trainer.train()
    saved = GRPOConfig.from_yaml(tmp_path / "run" / "training_config.yaml")
    assert saved.pretrained_model_name_or_path == str(tmp_path / "model")
    assert saved.rewards == {"jpeg_compressibility": 1.0} and saved.model_family == "flux"
    assert (tmp_path / "run" / "train_prompts.txt").read_text().splitlines() == PROMPTS
    assert saved.prompt_file == str(tmp_path / "run" / "train_prompts.txt")
    assert saved.to_dict() == {**trainer.config.to_dict()}


# -- runs that must stop or warn (item 12) -------------------------------------------------------------------------


def test_a_run_whose_every_update_is_skipped_stops_instead_of_finishing_untrained(tmp_path):
    g = torch.Generator().manual_seed(0)

    def finite_anyway(images, prompts):  # a reward that stays finite whatever the images are
        return torch.rand(len(prompts), generator=g)

    trainer = make_trainer(
        make_config(tmp_path, max_train_steps=6, max_consecutive_bad_groups=2), rewards={finite_anyway: 1.0}
    )
    with torch.no_grad():  # a LoRA blown up (as by a diverging update): every loss is non-finite, the rewards are not
        for name, p in trainer.pipeline.denoiser.named_parameters():
            if "lora_B" in name:
                p.fill_(1e30)
    with pytest.raises(TrainingStopped, match=r"2 training steps in a row skipped every optimiser step"):
        trainer.train()
    assert trainer.global_step < 6


def test_a_constant_reward_warns_loudly(tmp_path, caplog):
    def zero(images, prompts):
        return torch.zeros(len(prompts))

    trainer = make_trainer(make_config(tmp_path, max_train_steps=3, checkpointing_steps=0), rewards={zero: 1.0})
    trainer.train()
    warned = [r.getMessage() for r in caplog.records if "nothing is learned" in r.getMessage()]
    assert len(warned) == 1 and "every image got the same reward (zero=0)" in warned[0]


def test_a_hung_reward_stops_the_run_after_reward_timeout(tmp_path):
    def hangs(images, prompts):
        time.sleep(3)
        return torch.zeros(len(prompts))

    trainer = make_trainer(make_config(tmp_path, reward_timeout=0.2), rewards={hangs: 1.0})
    start = time.perf_counter()
    with pytest.raises(TrainingStopped, match=r"Reward 'hangs' did not answer within reward_timeout=0.2 s"):
        trainer.train_step()
    assert time.perf_counter() - start < 2.5


# -- full disk (item 13) and permissions (item 16) -----------------------------------------------------------------


def test_a_full_disk_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    from diffusers_mixgrpo.training import checkpointing

    trainer = make_trainer(make_config(tmp_path / "run", max_train_steps=1))
    real_save_state = trainer.accelerator.save_state

    def save_state_on_a_full_disk(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)
        os.symlink("/dev/full", os.path.join(output_dir, "extra.bin"))  # torch's writer fails as on ENOSPC
        torch.save({"x": torch.zeros(1000)}, os.path.join(output_dir, "extra.bin"))

    monkeypatch.setattr(trainer.accelerator, "save_state", save_state_on_a_full_disk)
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(DiskFullError, match=r"The disk is full: writing checkpoint-1 to .* \(0 MiB free\)"):
        trainer.train()
    assert not any(name.startswith((".tmp-", "checkpoint-")) for name in os.listdir(tmp_path / "run"))


def test_saved_weights_get_the_usual_permissions(finished_run, tmp_path):
    old = os.umask(0o022)
    try:
        trainer = make_trainer(make_config(tmp_path / "run", max_train_steps=1))
        trainer.train()
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.name == "pytorch_lora_weights.safetensors" for p in files)
    assert any(p.name == "lora_adapter.safetensors" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


# -- signals (item 14): a real SIGINT to this process --------------------------------------------------------------


def test_sigint_stops_the_step_writes_a_checkpoint_of_its_start_and_returns(tmp_path):
    def interrupting(images, prompts):
        interrupting.calls += 1
        if interrupting.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the second step's reward
        return brightness(images, prompts)

    interrupting.calls = 0
    trainer = make_trainer(make_config(tmp_path, max_train_steps=50, checkpointing_steps=0), {interrupting: 1.0})
    # The handler before the run: Python's default_int_handler, or SIG_IGN when the suite was started in the
    # background (a shell's `cmd &` starts it with SIGINT ignored).
    handler_before = signal.getsignal(signal.SIGINT)
    out = trainer.train()
    # The second step stops after its rewards (no update): the checkpoint holds the state after the first step.
    assert out.interrupted_by == "SIGINT" and out.global_step == 1 and interrupting.calls == 2
    assert out.checkpoint == str(tmp_path / "checkpoint-1")
    CheckpointManager(tmp_path).verify(out.checkpoint)
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()  # an interrupted run saves no final LoRA
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_a_second_signal_stops_at_once():
    with GracefulInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupt.requested == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


# -- start-up noise (item 9) ---------------------------------------------------------------------------------------


def test_loading_warns_no_future_warning_of_ours(tmp_path):
    build_tiny_flux_pipeline(seed=0).save_pretrained(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        load_training_pipeline(make_config(tmp_path, pretrained_model_name_or_path=str(tmp_path / "model")))


def test_truncated_prompts_are_reported_once_not_at_every_rollout(tmp_path, caplog, capfd):
    long_prompt = " ".join(["a red circle on the left"] * 8)  # longer than the tiny tokenizers' 16 tokens
    trainer = GRPOTrainer(
        make_config(tmp_path, max_train_steps=2, checkpointing_steps=0),
        GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0)),
        rewards={brightness: 1.0},
        train_prompts=[long_prompt, "a cat"],
    )
    trainer.train()
    told = [r.getMessage() for r in caplog.records if "are truncated" in r.getMessage()]
    assert len(told) >= 1 and all("1 of 2 prompts are longer than the 16 tokens" in m for m in told)
    assert "The following part of your input was truncated" not in capfd.readouterr().err


def test_warnings_during_the_run_do_not_write_over_the_progress_bar(tmp_path, monkeypatch):
    """A console log handler is swapped for tqdm's while the bar runs (the constant-reward warning used to be glued
    to the bar's line: "MixGRPO [update]: 60%|... WARNING ...")."""
    import logging
    import sys

    console = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.root, "handlers", [console])
    seen = []

    def spy(images, prompts):
        seen.append([type(h).__name__ for h in logging.root.handlers])
        return images.float().mean(dim=(1, 2, 3))

    make_trainer(make_config(tmp_path, max_train_steps=1, checkpointing_steps=0), rewards={spy: 1.0}).train()
    assert seen and all(names == ["_TqdmLoggingHandler"] for names in seen), seen
    assert logging.root.handlers == [console]  # restored after the run
