"""`benchmarks/bench_families.py --smoke` runs and its NFE match `benchmarks/costs.py` (the script asserts them)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_families_smoke_writes_the_table(tmp_path):
    out, results = tmp_path / "families.md", tmp_path / "families.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_families.py"), "--smoke", "--families", "sdxl,wan"]
        + ["--out", str(out), "--json", str(results)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = out.read_text()
    # measured (expected) NFE per image; N = 6, K = 2, G = 2, prefix sharing: MixGRPO at w = 1 saves half a step
    assert "| MixGRPO | (1, 2) | 5.50 (5.50) | 2 (2) |" in text
    assert "| MixGRPO-Flash* | (0, 2) | 3.00 (3.00) | 2 (2) |" in text
    assert "Flash and Flash* are n/a" in text
    data = json.loads(results.read_text())
    assert [f["family"] for f in data["families"]] == ["sdxl", "wan"]
    assert [r["method"] for r in data["families"][0]["rows"]] == ["dancegrpo", "mixgrpo", "mixgrpo"]
    # the markdown renders again from the JSON alone
    again = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_families.py"), "--markdown-from", str(results)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "| MixGRPO | (1, 2) | 5.50 (5.50) | 2 (2) |" in again.stdout
