"""scripts/bench_scale.py runs end to end at a small ``--n`` (the 100k run is by hand)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_scale_runs_every_step_at_small_n(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_scale.py"), "--n", "40", "--work",
         str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    steps = ["import", "manifest check", "preprocess (1 worker(s))", "open cache + first batch"]
    for step in steps:
        row = re.search(rf"^{re.escape(step)}.*?\s([\d.]+)\s+(\d+)\s+(-?\d+)\s", out, re.M)
        assert row is not None, (step, out)
        assert int(row.group(3)) == 0, (step, out)  # the step's exit code
    assert "batch [6, 1, 8, 8, 8], 38 train / 2 val cases" in out, out
    assert (tmp_path / "cache" / "plan.json").is_file()
