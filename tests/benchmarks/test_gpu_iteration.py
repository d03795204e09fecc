"""`benchmarks/gpu_iteration.py`: the CPU smoke mode runs every variant end to end; the real-size pipeline builds
(on the meta device here) with FLUX.1-dev's transformer and VAE shapes."""

import json
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_iteration  # noqa: E402


def test_smoke_mode_runs_every_variant_and_reports_ratios(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_iteration.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["variant"]: r for r in data["results"]}
    assert list(rows) == list(gpu_iteration.VARIANTS) and data["smoke"]
    assert rows["dancegrpo"]["time_ratio"] == 1.0
    assert all(r["seconds_per_iteration"] > 0 for r in rows.values())
    # N = 6, window 2: DanceGRPO trains a seeded 60% of its 5 steps, the others the 2 window steps; Flash tails
    # compress the post-window ODE (fewer rollout NFE than N).
    assert rows["dancegrpo"]["nfe_train_per_image"] == 3 and rows["mixgrpo"]["nfe_train_per_image"] == 2
    assert rows["mixgrpo"]["nfe_rollout_per_image"] == 6
    assert rows["flash"]["nfe_rollout_per_image"] < 6 and rows["flash_star"]["nfe_rollout_per_image"] < 6
    assert "MixGRPO-Flash" in proc.stdout and "s/iter" in proc.stdout
    assert data["complete"] and data["torch"] == torch.__version__ and data["diffusers"]
    # the shipped config's micro-batch (examples/configs/flux_mixgrpo.yaml): 1 rollout, accumulation 3
    assert data["settings"]["train_batch_size"] == 1 and data["settings"]["gradient_accumulation_steps"] == 3
    assert "torch 2" in proc.stdout and "diffusers" in proc.stdout.splitlines()[0]


# Runs main() with `build_trainer` wrapped: "leak" keeps every variant's trainer alive (what the script must not do),
# "oom" makes the second variant fail as a card out of memory would, "die" kills the process there.
DRIVER = """
import os, sys, torch
sys.path.insert(0, {bench!r})
import gpu_iteration as g
kept, calls = [], []
build = g.build_trainer
def wrapped(*args, **kwargs):
    calls.append(1)
    if {mode!r} == "oom" and len(calls) == 2:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if {mode!r} == "die" and len(calls) == 2:
        os._exit(3)
    trainer = build(*args, **kwargs)
    if {mode!r} == "leak":
        kept.append(trainer)
    return trainer
g.build_trainer = wrapped
g.main(sys.argv[1:])
"""


def _drive(tmp_path, mode, *argv, returncode=0):
    out = tmp_path / f"{mode}.json"
    code = DRIVER.format(bench=str(BENCH), mode=mode)
    args = ["--smoke", "--smoke_heads", "32", "--json", str(out), *argv]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == returncode, proc.stderr[-3000:]
    return json.loads(out.read_text())["results"]


def test_the_second_variant_peak_does_not_include_the_first_variant_model(tmp_path):
    """The same variant twice, with a transformer of 108 MiB (float32): freed in between, the second peak equals the
    first (measured 0.157 / 0.158 GiB, VmHWM above the start's VmRSS); kept alive, the second peak grows by the model
    (measured +0.111 GiB: the 0.106 GiB transformer + its LoRA and optimiser). So the measurement sees a leak, and
    the script has none."""
    model_gib = 108.4 / 1024
    clean = [r["peak_memory_gib"] for r in _drive(tmp_path, "clean", "--variants", "mixgrpo", "mixgrpo")]
    leak = [r["peak_memory_gib"] for r in _drive(tmp_path, "leak", "--variants", "mixgrpo", "mixgrpo")]
    assert clean[0] > model_gib  # the variant's own model is counted
    assert abs(clean[1] - clean[0]) < 0.2 * model_gib
    assert leak[1] - clean[1] > 0.8 * model_gib


def test_an_out_of_memory_variant_keeps_the_rows_before_it_and_the_next_still_runs(tmp_path):
    rows = _drive(tmp_path, "oom", "--smoke_heads", "2", "--variants", "mixgrpo", "flash", "flash_star")
    assert [r["variant"] for r in rows] == ["mixgrpo", "flash", "flash_star"]
    assert rows[0]["seconds_per_iteration"] > 0 and rows[2]["seconds_per_iteration"] > 0
    assert rows[1]["error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_real_size_pipeline_has_flux1_dev_shapes():
    pipe = gpu_iteration.build_flux_dev_sized("meta", torch.bfloat16)
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert abs(n / 1e9 - 11.90) < 0.006
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder_2.config.d_model == pipe.transformer.config.joint_attention_dim == 4096
    assert pipe.text_encoder.config.hidden_size == pipe.transformer.config.pooled_projection_dim == 768
    assert 83e6 < sum(p.numel() for p in pipe.vae.parameters()) < 85e6  # the FLUX VAE (16 latent channels)
    assert pipe.tokenizer_2.model_max_length == 512


def test_each_row_is_on_disk_as_soon_as_its_variant_ends(tmp_path):
    """The process dies while building the second variant (as a hard CUDA failure would): the first row is saved."""
    rows = _drive(tmp_path, "die", "--smoke_heads", "2", "--variants", "mixgrpo", "flash", returncode=3)
    assert [r["variant"] for r in rows] == ["mixgrpo"] and rows[0]["seconds_per_iteration"] > 0
