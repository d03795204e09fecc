"""`benchmarks/fault_audit.py` runs its cases as a user would and classifies them (two cheap cases: both fail in one
sentence before the model loads)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_audit_classifies_two_cheap_cases_and_writes_json(tmp_path):
    out = tmp_path / "audit.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "fault_audit.py"),
            "--cases",
            "mistyped_resume_folder,push_to_hub_bad_repo_id",
            "--output",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows = {r["case"]: r for r in result["cases"]}
    assert set(rows) == {"mistyped_resume_folder", "push_to_hub_bad_repo_id"}
    for row in rows.values():
        assert row["outcome"] == row["expected"] == "CLEAR-BEFORE-LOAD", row
        assert row["exit_code"] == 1
    assert "ouy" in rows["mistyped_resume_folder"]["detail"]
    assert result["counts"]["CLEAR-BEFORE-LOAD"] == 2
    assert "counts: CLEAR-BEFORE-LOAD 2" in proc.stdout


def test_an_unknown_case_is_named():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "fault_audit.py"), "--cases", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "unknown case(s) nope" in proc.stderr
