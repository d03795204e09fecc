"""`benchmarks/bench_families.py --smoke` runs and its NFE match `benchmarks/costs.py` (the script asserts them)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_families_smoke_writes_the_table(tmp_path):
    out = tmp_path / "families.md"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_families.py"), "--smoke", "--families", "sdxl,wan"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert "| sdxl | MixGRPO | (1, 2) | 5.50 | 2 | 11.50 | 0.767 |" in text
    assert "| wan | MixGRPO-Flash* | (0, 2) | 3.00 | 2 | 9.00 | 0.600 |" in text
    assert "Flash and Flash* are n/a" in text
