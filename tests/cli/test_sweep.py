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
