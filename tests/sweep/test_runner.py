"""Running and resuming sweeps inline (with the instant fake executor), and one real tiny sweep."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.sweep.fakes import FakeExecutor, spec_dict, write_spec
from toolkit.errors import ConfigError
from toolkit.sweep import (
    Run,
    RunStopped,
    SweepPlan,
    expand_sweep,
    load_sweep_spec,
    parse_sweep_spec,
    read_attempts,
    run_sweep,
)


def test_sweep_runs_everything_once(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    fake = FakeExecutor()
    report = run_sweep(spec, out, executor=fake, progress=False)
    plan = expand_sweep(load_sweep_spec(spec), out)
    assert fake.calls == [r.name for r in plan.runs]
    assert len(report.completed) == len(plan.runs) == 24 and not report.failed
    for run in plan.runs:
        done = json.loads((out / run.name / "done.json").read_text())
        assert done["attempts"] == 1 and done["num_params"] == 1234
        saved = yaml.safe_load((out / run.name / "config.yaml").read_text())
        assert saved == run.config.to_dict()
    status = pd.read_csv(out / "status.csv")
    assert (status["state"] == "done").all() and len(status) == 24
    assert pd.read_csv(out / "failures.csv").empty
    assert report.results == out / "results.csv"
    assert len(pd.read_csv(report.results)) == 20 * 6
    # A second call finds everything done.
    again = FakeExecutor()
    report = run_sweep(spec, out, executor=again, progress=False)
    assert again.calls == [] and len(report.skipped) == 24


def test_resume_after_a_killed_sweep(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    plan = expand_sweep(load_sweep_spec(spec), out)
    victim = plan.finetune_runs[3].name
    killed = FakeExecutor(interrupt={victim})
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out, executor=killed, progress=False)
    finished = killed.calls[:-1]
    assert killed.calls[-1] == victim
    assert all((out / name / "done.json").is_file() for name in finished)
    assert not (out / victim / "done.json").exists()
    assert read_attempts(out / victim)[-1]["outcome"] == "interrupted"

    resumed = FakeExecutor()
    report = run_sweep(spec, out, executor=resumed, progress=False)
    # Finished runs are skipped; the killed run and everything after it run now.
    assert resumed.calls[0] == victim
    assert set(resumed.calls).isdisjoint(finished)
    assert set(report.skipped) == set(finished)
    assert len(resumed.calls) + len(finished) == len(plan.runs)
    assert json.loads((out / victim / "done.json").read_text())["attempts"] == 2


def test_crashed_run_is_retried_then_reported(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    plan = expand_sweep(load_sweep_spec(spec), out)
    flaky = plan.finetune_runs[0].name
    broken = plan.pretrain_runs[1].name
    dependants = {r.name for r in plan.finetune_runs if r.pretrain_run == broken}
    fake = FakeExecutor(fail_once={flaky}, fail_always={broken})
    report = run_sweep(spec, out, executor=fake, progress=False)

    # The flaky run failed once and succeeded on its retry within the same call.
    assert fake.calls.count(flaky) == 2 and flaky in report.completed
    assert [a["outcome"] for a in read_attempts(out / flaky)] == ["failed", "ok"]
    # The broken pretraining run was tried twice, then reported with the runs it blocks.
    assert fake.calls.count(broken) == 2 and report.failed == [broken]
    assert set(report.blocked) == dependants and len(dependants) == 4
    failures = pd.read_csv(out / "failures.csv")
    assert set(failures["run"]) == {broken, *dependants}
    row = failures.set_index("run").loc[broken]
    assert row["state"] == "failed" and row["attempts"] == 2 and "boom in" in row["error"]
    assert set(failures.set_index("run").loc[list(dependants), "state"]) == {"blocked"}
    results = pd.read_csv(out / "results.csv")
    assert not set(results["run"]) & dependants and len(results) == (20 - 4) * 6

    # Once the cause is fixed, rerunning runs exactly the failed and blocked runs.
    fixed = FakeExecutor()
    report = run_sweep(spec, out, executor=fixed, progress=False)
    assert set(fixed.calls) == {broken, *dependants} and fixed.calls[0] == broken
    assert pd.read_csv(out / "failures.csv").empty
    assert len(pd.read_csv(out / "results.csv")) == 20 * 6


def test_stop_file_stops_the_sweep(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "sweep"

    class Stopping(FakeExecutor):
        def __call__(self, plan: SweepPlan, run: Run) -> Mapping[str, Any]:
            if len(self.calls) == 2:
                self.calls.append(run.name)
                raise RunStopped(f"{run.name}: pretraining stopped before its last step")
            return super().__call__(plan, run)

    fake = Stopping()
    report = run_sweep(spec, out, executor=fake, progress=False)
    assert report.stopped and len(report.completed) == 2 and not report.failed
    assert "stopped early" in "\n".join(report.lines())
    assert len(fake.calls) == 3  # a stopped run is not retried


def test_changed_spec_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    run_sweep(write_spec(tmp_path), out, executor=FakeExecutor(), progress=False)
    changed = write_spec(tmp_path, overrides=["pretrain.steps=9", "finetune.steps=5"])
    with pytest.raises(ConfigError, match=r"pretrain.steps: 7 -> 9"):
        run_sweep(changed, out, executor=FakeExecutor(), progress=False)
    # Adding a value keeps the finished runs and runs only the new ones.
    data = spec_dict(tmp_path)
    data["axes"]["mask.ratio"] = [0.6, 0.75, 0.9]
    fake = FakeExecutor()
    run_sweep(
        parse_sweep_spec(data, source=tmp_path / "spec.yaml"), out, executor=fake, progress=False
    )
    assert fake.calls and all("mask.ratio=0.9" in name for name in fake.calls)


@pytest.mark.slow
def test_real_tiny_sweep_end_to_end(tmp_path: Path) -> None:
    """Pretrain once and fine-tune once on synthetic data, then rerun (everything is skipped)."""
    spec = {
        "name": "e2e",
        "base": "tiny",
        "overrides": {
            "pretrain.steps": 4,
            "pretrain.val_every": 4,
            "pretrain.checkpoint_every": 4,
            "pretrain.snapshot_every": 4,
            "pretrain.log_every": 2,
            "finetune.steps": 4,
            "finetune.val_every": 4,
            "finetune.checkpoint_every": 4,
            "finetune.log_every": 2,
            "data.patch_size": [32, 32, 32],
            "data.target_spacing_mm": [4.0, 4.0, 4.0],
        },
        "pretrain_data": {"synthetic": {"subjects": 2, "seed": 0, "spacing_mm": 4.0}},
        "datasets": [{"synthetic": {"labelled": 3, "seed": 1, "spacing_mm": 4.0}, "name": "syn"}],
    }
    out = tmp_path / "sweep"
    report = run_sweep(parse_sweep_spec(spec, source=tmp_path / "e2e.yaml"), out, progress=False)
    assert report.completed == ["pt_base", "ft_syn_pt_base_seed0"], report.lines()
    table = pd.read_csv(out / "results.csv")
    assert set(table["label_name"]) == {"csf", "gm", "wm"}
    assert table["dice"].between(0, 1).all() and (table["num_params"] > 0).all()
    assert (table["train_time_s"] > 0).all() and (table["pretrain_time_s"] > 0).all()
    again = run_sweep(parse_sweep_spec(spec, source=tmp_path / "e2e.yaml"), out, progress=False)
    assert again.skipped == report.completed and not again.completed
