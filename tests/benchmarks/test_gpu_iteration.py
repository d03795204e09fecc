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


def test_real_size_pipeline_has_flux1_dev_shapes():
    pipe = gpu_iteration.build_flux_dev_sized("meta", torch.bfloat16)
    n = sum(p.numel() for p in pipe.transformer.parameters())
    assert abs(n / 1e9 - 11.90) < 0.006
    assert pipe.transformer.dtype == torch.bfloat16
    assert pipe.text_encoder_2.config.d_model == pipe.transformer.config.joint_attention_dim == 4096
    assert pipe.text_encoder.config.hidden_size == pipe.transformer.config.pooled_projection_dim == 768
    assert 83e6 < sum(p.numel() for p in pipe.vae.parameters()) < 85e6  # the FLUX VAE (16 latent channels)
    assert pipe.tokenizer_2.model_max_length == 512
