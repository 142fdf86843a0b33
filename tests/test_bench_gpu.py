"""The prepared GPU check at CPU size: every stage runs, the report is written, the budget holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolkit.bench_gpu import run_gpu_bench
from toolkit.cli import app


def test_gpu_bench_runs_every_stage_at_cpu_size(tmp_path: Path) -> None:
    report = run_gpu_bench(tmp_path, budget_s=600, cuda=False, log=lambda _: None)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["steps"] == json.loads(json.dumps(report["steps"]))
    measured = [r for r in report["steps"] if "sec_per_step" in r]
    # dense and S3D at both batches; channels-last and compile are CUDA-only switches.
    assert {(r["variant"], r["batch"]) for r in measured} == {
        ("dense", 1),
        ("dense", 2),
        ("s3d", 1),
        ("s3d", 2),
    }
    assert all(r.get("skipped") == "CUDA only" for r in report["steps"] if r not in measured)
    for r in measured:
        assert r["sec_per_step"] > 0 and r["tflop_per_step"] > 0
        assert r["tflops"] == pytest.approx(r["tflop_per_step"] / r["sec_per_step"])
        assert r["peak_share"] == pytest.approx(r["tflops"] / report["device"]["matmul_tflops"])
    short = report["short_run"]
    assert short["pretrain"]["steps"] >= 12 and short["pretrain"]["loss_fell"]
    assert short["reload"]["ok"] and short["finetune"]["transferred"] > 0
    assert short["mni152_segment_s"]["tta"] > 0 and short["mni152_segment_s"]["plain"] > 0
    assert "short run's cache" in report["loader"]["source"]
    assert set(report["loader"]["workers"]) == {"0", "2"}
    assert report["estimate"]["measured_sec_per_step"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "## Step speed" in md and "## Input pipeline" in md and "## Estimate check" in md
    assert "## A real short run" in md


def test_gpu_bench_budget_skips_stages(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "gpu", "--out", str(tmp_path), "--budget", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["device"]["matmul_tflops"] > 0
    assert all("sec_per_step" not in r for r in report["steps"])
    assert any(r.get("skipped") == "out of budget" for r in report["steps"])
    assert any(s.startswith("estimate") for s in report["skipped"])
