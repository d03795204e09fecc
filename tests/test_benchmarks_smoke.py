"""`benchmarks/run.py --suite smoke` runs end to end and measures the NFE counts of the algorithm notes (section 7)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("dancegrpo", "mixgrpo", "flash", "flash_star")


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--suite", "smoke", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, json.loads((out / "results_smoke.json").read_text())


def _row(results, method, start=0, share=False):
    return next(
        r
        for r in results["costs"]["rows"]
        if r["method"] == method and r["start"] == start and r["share_prefix"] == share
    )


@pytest.mark.slow
def test_smoke_suite_writes_json_markdown_and_plots(smoke_results):
    out, results = smoke_results
    assert (out / "results_smoke.md").read_text().startswith("# Benchmark results")
    for name in ("cost_per_iteration.png", "rollout_throughput.png"):
        assert (out / name).stat().st_size > 1000
    assert {r["method"] for r in results["costs"]["rows"]} == set(VARIANTS)
    assert {r["method"] for r in results["rollouts"]["rows"]} == set(VARIANTS)
    assert set(results["memory"]) == set(VARIANTS)
    # The peak above the start holds at least what an iteration surely has at once: its decoded images (float32) and
    # their final latents (the tiny FLUX's VAE halves the side, 4 channels); and on Linux the precise method (the VmHWM
    # mark reset after setup) is the one used. Measured by the quick suite: 140-160 MiB per variant, against a bound
    # of a few KiB: a delta below it means the peak read was not the iteration's.
    settings = results["settings"]
    images = settings["group_size"] * settings["num_prompts"]
    side = settings["resolution"]
    held = images * 4 * (3 * side * side + 4 * (side // 2) ** 2)
    for method, m in results["memory"].items():
        assert m["iteration_rss_delta_bytes"] >= held, (method, m, held)
        if sys.platform == "linux":
            assert m["method"] == "VmHWM reset", (method, m)


@pytest.mark.slow
def test_smoke_suite_measures_the_papers_nfe_at_n25_k4_w0(smoke_results):
    _, results = smoke_results
    assert results["settings"]["num_steps"] == 25 and results["settings"]["window_size"] == 4
    sampling = {m: _row(results, m)["nfe_sampling_per_rollout"] for m in VARIANTS}
    training = {m: _row(results, m)["nfe_training_per_iteration"] for m in VARIANTS}
    images = results["settings"]["group_size"] * results["settings"]["num_prompts"]
    assert sampling == {"dancegrpo": 25, "mixgrpo": 25, "flash": 11, "flash_star": 7}
    assert {m: t / images for m, t in training.items()} == {"dancegrpo": 14, "mixgrpo": 4, "flash": 4, "flash_star": 4}


@pytest.mark.slow
def test_smoke_suite_measured_nfe_matches_the_formula_everywhere(smoke_results):
    _, results = smoke_results
    for row in results["costs"]["rows"]:
        expected = row["expected"]
        assert row["nfe_sampling_per_iteration"] == expected["nfe_sampling_per_iteration"], row
        assert row["nfe_training_per_iteration"] == expected["nfe_training_per_iteration"], row
    # prefix sharing saves the pre-window steps once the window has moved (MixGRPO mid-run: w = 6)
    g = results["settings"]["group_size"]
    assert _row(results, "mixgrpo", 6, True)["nfe_sampling_per_rollout"] == pytest.approx(6 / g + 19)
    for row in results["rollouts"]["rows"]:
        assert row["nfe_per_rollout"] == pytest.approx(row["expected_nfe_per_rollout"]), row
        assert row["images_per_s"] > 0


@pytest.mark.slow
def test_learning_benchmark_smoke_runs_every_table_variant_and_reports(tmp_path):
    """`benchmarks/learning.py --smoke`: one seed, a 2 s budget per variant; checks the plumbing, not the figures."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--suite",
            "learning",
            "--smoke",
            "--output-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "results_learning.json").read_text())
    assert set(results["summary"]) == set(VARIANTS)
    for name in VARIANTS:
        info = results["summary"][name]
        assert info["iterations"][0] >= 1 and info["seconds_per_iteration"][0] > 0
        assert 0.0 <= info["heldout_reward"][0] <= 1.0
    assert results["summary"]["dancegrpo"]["nfe_train_per_image"] == 14  # 60% of its 24 SDE steps (N = 25)
    assert results["summary"]["mixgrpo"]["nfe_train_per_image"] == 4
    assert "The paper's table in miniature" in (tmp_path / "results_learning.md").read_text()
    assert (tmp_path / "learning_reward_vs_time.png").stat().st_size > 1000
