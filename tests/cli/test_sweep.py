"""``mae3d sweep`` and ``mae3d sweep-report`` on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.sweep.fakes import FakeExecutor, write_spec
from toolkit.errors import ConfigError
from toolkit.sweep import (
    run_sweep,
)


def test_cli_dry_run_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    from toolkit.cli import app

    spec = write_spec(tmp_path)
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--dry-run", "--measure-steps", "0"],
    )
    assert result.exit_code == 0, result.output
    assert "pt_mask.ratio=0.6_mask.variant=dense" in result.output
    assert "24 runs (4 pretraining, 20 fine-tuning), 24 to do" in result.output
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing

    run_sweep(spec, tmp_path / "sweep", executor=FakeExecutor(), progress=False)
    args = ["sweep-report", str(tmp_path / "sweep"), "--baseline", "arm=scratch"]
    result = runner.invoke(app, [*args, "--match", "finetune.schedule", "--csv", "t.csv"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("| config | d1 | d2 | mean | mean_rank | n_datasets | diff |")
    assert sum(line.startswith("| scratch finetune.schedule=") for line in lines) == 2
    assert len(pd.read_csv("t.csv")) == 10  # 8 pretrained + 2 scratch configs
    # Each schedule has its own scratch run: pairing needs --match.
    result = runner.invoke(app, args)
    assert isinstance(result.exception, ConfigError)

    import toolkit.sweep

    def failing_run_sweep(*args: Any, **kwargs: Any) -> Any:
        report = toolkit.sweep.SweepReport(out_dir=tmp_path / "sweep", failed=["x"])
        return report

    monkeypatch.setattr(toolkit.sweep, "run_sweep", failing_run_sweep)
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sweep")])
    assert result.exit_code == 1 and "1 failed" in result.output


def test_cli_executor_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from typer.testing import CliRunner

    import toolkit.sweep
    from toolkit.cli import app, main
    from toolkit.sweep import JobOptions

    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    runner = CliRunner()
    slurm = ["--executor", "slurm", "--slurm-partition", "gpu", "--gpus-per-run", "1"]
    result = runner.invoke(
        app,
        ["sweep", str(spec), "--out", str(out), "--dry-run", "--measure-steps", "0", *slurm,
         "--slurm-option", "account=lab", "--setup", "module load cuda"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "sbatch script of the job of pt_mask.ratio=0.6_mask.variant=dense" in result.output
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --account=lab"):
        assert line in result.output.splitlines()
    assert "module load cuda" in result.output and not out.exists()

    seen: dict[str, Any] = {}

    def fake_run_sweep(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return toolkit.sweep.SweepReport(out_dir=out)

    monkeypatch.setattr(toolkit.sweep, "run_sweep", fake_run_sweep)
    result = runner.invoke(
        app,
        ["sweep", str(spec), "--out", str(out), "--executor", "local", "--max-parallel", "3",
         "--gpus-per-run", "1", "--setup", "echo hi"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["jobs"] == JobOptions(
        executor="local", max_parallel=3, gpus_per_run=1, setup=("echo hi",)
    )
    for bad, message in (
        (["--executor", "local", "--slurm-partition", "gpu"], "--slurm-partition: only for"),
        (["--executor", "slurm", "--slurm-option", "account"], "--slurm-option: expected KEY="),
        (["--max-parallel", "2"], "--max-parallel: the inline executor runs one run at a time"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["sweep", str(spec), "--out", str(out), *bad])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
