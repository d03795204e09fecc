"""CheckpointManager with a real `Accelerator(cpu=True)`: exact restore, atomic saves, `latest`, total limit."""

import os
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from diffusers_mixgrpo.training import checkpointing
from diffusers_mixgrpo.training.checkpointing import COMPLETE_MARKER, TRAINER_STATE_FILE, CheckpointManager
from diffusers_mixgrpo.training.ema import ParameterEMA


@pytest.fixture
def setup():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return accelerator, model, optimizer, scheduler


def train_steps(accelerator, model, optimizer, scheduler, n):
    for _ in range(n):
        x = torch.randn(16, 4)
        loss = model(x).pow(2).mean()
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def snapshot(model, optimizer, scheduler):
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_state = {k: {n: t.clone() if torch.is_tensor(t) else t for n, t in s.items()} for k, s in opt["state"].items()}
    return params, opt_state, scheduler.state_dict()["last_epoch"], scheduler.get_last_lr()


def draws():
    return torch.rand(3), random.random(), np.random.rand(2)


def test_save_and_load_restore_exactly(tmp_path, setup):
    accelerator, model, optimizer, scheduler = setup
    manager = CheckpointManager(tmp_path)
    train_steps(accelerator, model, optimizer, scheduler, 3)
    ema = ParameterEMA(model.parameters(), decay=0.5)
    ema.step(model.parameters())
    extra = {
        "global_step": 3,
        "window": {"start": 1, "iter_in_interval": 2},
        "data_position": 17,
        "ema": ema.state_dict(),
    }
    path = manager.save(3, accelerator, extra)
    assert path == os.path.join(str(tmp_path), "checkpoint-3")
    assert os.path.isfile(os.path.join(path, COMPLETE_MARKER)) and os.path.isfile(
        os.path.join(path, TRAINER_STATE_FILE)
    )
    saved = snapshot(model, optimizer, scheduler)
    expected_draws = draws()

    train_steps(accelerator, model, optimizer, scheduler, 2)  # move everything on
    assert not torch.equal(model.state_dict()["0.weight"], saved[0]["0.weight"])

    state = manager.load(manager.resolve("latest"), accelerator)
    params, opt_state, last_epoch, lr = snapshot(model, optimizer, scheduler)
    for k, v in saved[0].items():
        assert torch.equal(params[k], v), k
    for k, s in saved[1].items():
        for n, t in s.items():
            assert torch.equal(torch.as_tensor(opt_state[k][n]), torch.as_tensor(t)), (k, n)
    assert (last_epoch, lr) == (saved[2], saved[3])
    got = draws()  # RNG states restored by accelerate
    assert torch.equal(got[0], expected_draws[0]) and got[1] == expected_draws[1]
    assert np.array_equal(got[2], expected_draws[2])
    assert state["global_step"] == 3 and state["window"] == extra["window"] and state["data_position"] == 17
    restored = ParameterEMA(model.parameters(), decay=0.1)
    restored.load_state_dict(state["ema"])
    for a, b in zip(restored.shadow, ema.shadow):
        assert torch.equal(a, b)
    assert manager.step_of(path) == 3


def test_crash_inside_save_state_keeps_previous_checkpoint_latest(tmp_path, setup, monkeypatch):
    accelerator = setup[0]
    manager = CheckpointManager(tmp_path, total_limit=1)
    first = manager.save(1, accelerator, {"global_step": 1})

    real_save_state = accelerator.save_state

    def crashing_save_state(output_dir, **kwargs):
        real_save_state(output_dir, **kwargs)  # a partial write: the states are there, the marker is not
        with open(os.path.join(output_dir, "half_written.bin"), "wb") as f:
            f.write(b"\0" * 10)
        raise RuntimeError("disk full")

    monkeypatch.setattr(accelerator, "save_state", crashing_save_state)
    with pytest.raises(RuntimeError, match="disk full"):
        manager.save(2, accelerator, {"global_step": 2})
    assert manager.latest() == first
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]  # no half checkpoint, limit pruning did not run
    assert manager.load(first, setup[0])["global_step"] == 1


def test_crash_after_partial_write_before_marker(tmp_path, setup, monkeypatch):
    accelerator = setup[0]
    manager = CheckpointManager(tmp_path)
    first = manager.save(5, accelerator, {"global_step": 5})

    def failing_torch_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"trunc")
        raise OSError("killed mid-write")

    monkeypatch.setattr(checkpointing.torch, "save", failing_torch_save)
    with pytest.raises(OSError, match="killed"):
        manager.save(6, accelerator, {"global_step": 6})
    assert manager.latest() == first
    assert not os.path.exists(manager.path_for(6))


def test_leftovers_of_a_killed_process_are_never_latest(tmp_path, setup):
    accelerator = setup[0]
    manager = CheckpointManager(tmp_path)
    first = manager.save(10, accelerator, {"global_step": 10})
    # What a SIGKILL can leave: a temporary folder, and a (foreign) checkpoint folder without the marker.
    os.makedirs(tmp_path / ".tmp-checkpoint-20")
    (tmp_path / ".tmp-checkpoint-20" / "model.safetensors").write_bytes(b"partial")
    os.makedirs(tmp_path / "checkpoint-30")
    (tmp_path / "checkpoint-30" / "model.safetensors").write_bytes(b"partial")
    assert manager.latest() == first
    assert manager.resolve("latest") == first
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        manager.resolve("checkpoint-30")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        manager.load(str(tmp_path / "checkpoint-30"), accelerator)
    manager.save(20, accelerator, {"global_step": 20})  # the next save clears the temporary leftovers
    assert not os.path.exists(tmp_path / ".tmp-checkpoint-20")
    assert manager.latest() == manager.path_for(20)


def test_total_limit_keeps_the_newest(tmp_path, setup):
    accelerator = setup[0]
    manager = CheckpointManager(tmp_path, total_limit=2)
    for step in (100, 200, 300, 400):
        manager.save(step, accelerator, {"global_step": step})
    assert [os.path.basename(p) for p in manager.checkpoints()] == ["checkpoint-300", "checkpoint-400"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-300", "checkpoint-400"]


def test_steps_sort_numerically_not_alphabetically(tmp_path, setup):
    manager = CheckpointManager(tmp_path)
    for step in (9, 10, 100):
        manager.save(step, setup[0])
    assert manager.latest() == manager.path_for(100)


def test_saving_the_same_step_again_replaces_it(tmp_path, setup):
    accelerator = setup[0]
    manager = CheckpointManager(tmp_path)
    manager.save(7, accelerator, {"tag": "first"})
    manager.save(7, accelerator, {"tag": "second"})
    assert manager.checkpoints() == [manager.path_for(7)]
    assert manager.load(manager.path_for(7), accelerator)["tag"] == "second"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-7"]


def test_resolve(tmp_path, setup):
    manager = CheckpointManager(tmp_path / "run")
    assert manager.resolve(None) is None
    assert manager.resolve("latest") is None  # nothing yet: a fresh start
    path = manager.save(1, setup[0])
    assert manager.resolve("latest") == path
    assert manager.resolve(path) == path
    assert manager.resolve("checkpoint-1") == path  # a name inside output_dir
    with pytest.raises(ValueError, match="is not a folder"):
        manager.resolve("checkpoint-2")


def test_total_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="total_limit=0"):
        CheckpointManager(tmp_path, total_limit=0)
