"""Pre-emption in bounded time (issue 22, item 7): SIGTERM / SIGINT stop at the next boundary of an iteration (a
denoiser call of the rollout, the rewards, a trained micro-batch), the unfinished iteration is rewound and the
checkpoint written holds the state at its start, so that a resume reproduces the uninterrupted run: in one process,
and with two ranks under torchrun (gloo) whose grace period is shorter than one iteration.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_mixgrpo.training.checkpointing import COMPLETE_MARKER, CheckpointManager
from diffusers_mixgrpo.training.config import GRPOConfig
from diffusers_mixgrpo.training.interrupts import RestorePoint
from diffusers_mixgrpo.training.trainer import GRPOTrainer
from testing_utils import lora_weights, start_ranks, tiny_config, tiny_flux_trainer, wait_ranks

PROMPTS = ["a red circle on the left", "a blue square on the right", "a green cross on the top", "a cat"]


def make_config(output_dir, **overrides) -> GRPOConfig:
    """4 samples per iteration trained one by one over 2 window steps: 8 forwards and 4 optimiser steps."""
    values = dict(
        num_generations=4,
        sample_prompts_per_device=1,
        learning_rate=1e-3,
        max_train_steps=3,
        train_batch_size=1,
        seed=3,
    )
    return tiny_config(output_dir, **{**values, **overrides})


def make_trainer(config) -> GRPOTrainer:
    return tiny_flux_trainer(config, PROMPTS)


def signal_at(trainer, where: str, step: int, call: int, signum=signal.SIGTERM) -> None:
    """Send `signum` to this process during the `call`-th denoiser forward ("rollout") or trained forward ("update")
    of iteration `step` (0-based), as a scheduler would at any moment."""
    calls = {"n": 0}
    if where == "rollout":
        target, name = trainer.pipeline, "_predict"
    else:
        target, name = trainer, "_window_step_loss"
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        if trainer.global_step == step:
            calls["n"] += 1
            if calls["n"] == call:
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    setattr(target, name, wrapped)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: 3 iterations with a checkpoint after each; its weights and checkpoint-1."""
    out = tmp_path_factory.mktemp("straight")
    trainer = make_trainer(make_config(out, checkpointing_steps=1))
    trainer.train()
    return out, lora_weights(trainer)


@pytest.mark.parametrize("where, call", [("rollout", 3), ("update", 3)], ids=["rollout", "update-after-a-step"])
def test_a_stop_mid_iteration_saves_its_start_and_the_resume_is_bit_identical(tmp_path, straight, where, call, caplog):
    """SIGTERM during iteration 2 (its rollout; or its update, after 1 of its 4 optimiser steps): the run stops at the
    next boundary, saves checkpoint-1 (the state before iteration 2: the same files as the uninterrupted run's
    checkpoint-1), and a resume ends with the uninterrupted run's weights, bit for bit."""
    straight_dir, reference = straight
    trainer = make_trainer(make_config(tmp_path))
    signal_at(trainer, where, step=1, call=call)
    with caplog.at_level("WARNING", logger="diffusers_mixgrpo"):
        out = trainer.train()
    assert out.interrupted_by == "SIGTERM" and out.global_step == 1
    assert out.checkpoint == str(tmp_path / "checkpoint-1")
    CheckpointManager(tmp_path).verify(out.checkpoint)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SIGTERM: stopped step 2 of 3")]
    assert len(line) == 1 and "checkpoint-1" in line[0], [r.getMessage() for r in caplog.records]
    if where == "update":
        assert "during its update (micro-batch 2 of 4) and undid its 1 optimiser step(s)" in line[0]
    else:
        assert "during its rollout;" in line[0]
    # The checkpoint is the uninterrupted run's state after step 1: weights, optimiser, LR schedule and RNGs.
    saved, expected = tmp_path / "checkpoint-1", straight_dir / "checkpoint-1"
    a, b = load_file(saved / "lora_adapter.safetensors"), load_file(expected / "lora_adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        got, want = (torch.load(d / name, weights_only=False) for d in (saved, expected))
        assert repr(got) == repr(want), name

    resumed = make_trainer(make_config(tmp_path, resume_from_checkpoint="latest"))
    assert resumed.train().global_step == 3
    got = lora_weights(resumed)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)  # bit-identical


def test_without_the_snapshot_a_stop_after_an_optimiser_step_finishes_the_iteration(tmp_path, straight):
    trainer = make_trainer(make_config(tmp_path, preemption_snapshot=False))
    signal_at(trainer, "update", step=1, call=3)
    out = trainer.train()
    assert out.interrupted_by == "SIGTERM" and out.global_step == 2
    assert out.checkpoint == str(tmp_path / "checkpoint-2")


def test_a_stop_at_a_step_already_checkpointed_reuses_that_checkpoint(tmp_path, caplog):
    trainer = make_trainer(make_config(tmp_path, checkpointing_steps=1))
    signal_at(trainer, "rollout", step=1, call=1)
    with caplog.at_level("WARNING", logger="diffusers_mixgrpo"):
        out = trainer.train()
    assert out.checkpoint == str(tmp_path / "checkpoint-1")
    assert any("checkpoint-1 (already saved" in r.getMessage() for r in caplog.records)


def test_the_restore_point_undoes_optimiser_steps_exactly():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))

    def step():
        model(torch.randn(2, 4)).square().sum().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    step()
    before = ([p.clone() for p in model.parameters()], repr(optimizer.state_dict()), scheduler.state_dict())
    point = RestorePoint(list(model.parameters()), optimizer, scheduler)
    step()
    step()
    point.restore()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before[0]))
    assert repr(optimizer.state_dict()) == before[1] and scheduler.state_dict() == before[2]
    fresh = torch.nn.Linear(2, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters())
    point = RestorePoint(list(fresh.parameters()), fresh_optimizer)  # no state yet: a step's state is removed again
    fresh(torch.ones(1, 2)).sum().backward()
    fresh_optimizer.step()
    point.restore()
    assert not fresh_optimizer.state


# -- two ranks under torchrun: the grace period is shorter than an iteration -----------------------------------------

SCRIPT = Path(__file__).with_name("preemption_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: Seconds each trained forward sleeps in the interrupted run: an iteration's 8 forwards take >= 16 s.
SLOW = 2.0
#: The grace period: seconds from SIGTERM to SIGKILL (torchrun's agent waits 30 s; a FLUX iteration takes minutes).
GRACE = 8.0


def _torchrun(out: Path, *args, port: int, log: Path) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return start_ranks(SCRIPT, out, *args, port=port, env=ENV, log=log)


@pytest.fixture(scope="module")
def two_rank_reference(tmp_path_factory):
    """`reference(launch)`: the final LoRA of the uninterrupted 2-rank run under DDP ("ddp") or FSDP2 ("fsdp2")."""
    done = {}

    def reference(launch: str) -> dict[str, torch.Tensor]:
        if launch not in done:
            out = tmp_path_factory.mktemp(f"two-rank-straight-{launch}")
            log = out.parent / f"{out.name}.log"
            extra = ["--fsdp2"] if launch == "fsdp2" else []
            port = 29661 if launch == "ddp" else 29671
            assert wait_ranks(_torchrun(out, *extra, port=port, log=log), 600, log) == 0, log.read_text()[-3000:]
            done[launch] = load_file(out / "pytorch_lora_weights.safetensors")
        return done[launch]

    return reference


@pytest.mark.slow
@pytest.mark.parametrize(
    "to, launch, port",
    [("torchrun", "ddp", 29663), ("rank1", "ddp", 29665), ("torchrun", "fsdp2", 29673)],
    ids=["sigterm-to-torchrun", "sigterm-to-one-rank", "fsdp2-sigterm-to-torchrun"],
)
def test_two_ranks_stop_within_a_grace_period_shorter_than_an_iteration_and_resume_exactly(
    tmp_path, two_rank_reference, to, launch, port
):
    """2 ranks (gloo), 3 iterations of >= 16 s. During the second iteration's update, after its first optimiser step,
    SIGTERM goes to torchrun (whose agent forwards it to both ranks, as on a cluster) or to rank 1 alone; after
    GRACE (8 s, less than half an iteration) everything still running is killed. The ranks agree to stop at the next
    micro-batch, rewind the iteration (FSDP2: each rank its shards) and complete checkpoint-1 within the grace period;
    resuming it ends with the uninterrupted run's weights, bit for bit."""
    extra = ["--fsdp2"] if launch == "fsdp2" else []
    out, log = tmp_path / "run", tmp_path / "interrupted.log"
    proc = _torchrun(out, *extra, "--slow", SLOW, "--mark_step", 1, "--mark_call", 3, port=port, log=log)
    deadline = time.monotonic() + 600
    while not (out / "marked").exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    target = proc.pid if to == "torchrun" else int((out / "pid-rank1").read_text())
    sent = time.time()
    os.kill(target, signal.SIGTERM)
    try:
        proc.wait(timeout=GRACE)
        exited = "exited"
    except subprocess.TimeoutExpired:  # the end of the grace period: everything still running is killed
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        exited = "killed"
    marker = out / "checkpoint-1" / COMPLETE_MARKER
    assert marker.is_file(), f"no complete checkpoint-1 within the grace period; log:\n{log.read_text()[-3000:]}"
    saved_after = marker.stat().st_mtime - sent
    iteration = json.loads((out / "iterations.json").read_text())[0]
    assert GRACE < iteration / 2, f"an iteration took {iteration:.1f} s: the grace period must be shorter"
    assert "SIGTERM: stopped step 2 of 3 during its update (micro-batch 2 of 4) and undid its 1 optimiser step" in (
        log.read_text()
    )
    CheckpointManager(out).verify(out / "checkpoint-1")
    assert CheckpointManager(out).latest() == str(out / "checkpoint-1")
    print(
        f"{launch}, {to}: iteration {iteration:.1f} s; checkpoint-1 complete {saved_after:.1f} s after SIGTERM; {exited}"
    )

    log = tmp_path / "resumed.log"
    proc = _torchrun(out, *extra, "--resume", port=port + 20, log=log)
    assert wait_ranks(proc, 600, log) == 0, log.read_text()[-3000:]
    got, reference = load_file(out / "pytorch_lora_weights.safetensors"), two_rank_reference(launch)
    assert got.keys() == reference.keys()
    assert all(torch.equal(got[k], reference[k]) for k in got)  # bit-identical
