"""Status tables and report.md: every run's state, and how to open each fine-tuning run."""

from __future__ import annotations

import shlex
from pathlib import Path

import pandas as pd

from tests.sweep.fakes import FakeExecutor, write_spec
from toolkit.sweep import expand_sweep, load_sweep_spec, run_sweep, view_command


def test_report_lists_the_view_command_of_each_finetuning_run(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, axes={"mask.ratio": [0.6, 0.75]}, datasets=["d1.yaml"])
    out = tmp_path / "sweep"
    plan = expand_sweep(load_sweep_spec(spec), out)
    broken = plan.pretrain_runs[0].name
    run_sweep(spec, out, executor=FakeExecutor(fail_always={broken}), progress=False)
    report = (out / "report.md").read_text()
    status = pd.read_csv(out / "status.csv").set_index("run")
    for run in plan.finetune_runs:
        command = view_command(plan, run)
        assert f"`{command}`" in report and status.loc[run.name, "view"] == command
        args = shlex.split(command)
        assert args[:2] == ["mae3d", "view"] and args[3] == "--manifest"
        assert args[5:] == ["--evaluate"]  # sweeps write no predictions; view makes them
        assert Path(args[4]) == run.manifest and Path(args[4]).is_file()
        if status.loc[run.name, "state"] == "done":
            assert Path(args[2]) == out / run.name and Path(args[2]).is_dir()
    for run in plan.pretrain_runs:
        assert view_command(plan, run) == "" and pd.isna(status.loc[run.name, "view"])
    assert "## Failed and blocked runs" in report
    assert f"- **{broken}** (failed): RuntimeError: boom in {broken}" in report
    assert "5 runs: 1 blocked, 3 done, 1 failed." in report
