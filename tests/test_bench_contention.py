"""The contention benchmark: quiet vs beside a CPU burner, burners cleaned up, the CLI."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from typer.testing import CliRunner

from toolkit.bench_contention import measure_contention
from toolkit.cli import app
from toolkit.config import load_config

TINY = {"runtime.device": "cpu", "data.patch_size": [16, 16, 16], "pretrain.batch_size": 1}


def test_contention_report_and_burners_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    import toolkit.bench_contention as bc

    started: list[subprocess.Popen[Any]] = []
    real_popen = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(bc.subprocess, "Popen", popen)
    report = measure_contention(load_config("tiny", TINY), steps=1, warmup=0)
    assert report.quiet_sec_per_step > 0 and report.busy_sec_per_step > 0
    assert report.ratio == pytest.approx(report.busy_sec_per_step / report.quiet_sec_per_step)
    assert report.burners == 1 and report.threads_busy >= 1 and report.cores >= 1
    assert "ratio" in "\n".join(report.lines())
    assert len(started) == 1 and started[0].poll() is not None  # the burner was stopped


@pytest.mark.slow
def test_contention_cli_prints_json() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "contention",
            "--steps",
            "1",
            "--json",
            "data.patch_size=[16,16,16]",
            "pretrain.batch_size=1",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["ratio"] > 0 and data["burners"] == 1
