"""Sweep specs, their expansion into runs, and resumable execution (with a fake, instant runner)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from toolkit.config import Config
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.errors import ConfigError
from toolkit.sweep import (
    Run,
    RunStopped,
    SweepPlan,
    estimate_sweep,
    expand_sweep,
    format_estimates,
    format_value,
    load_sweep_spec,
    parse_sweep_spec,
    read_attempts,
    run_sweep,
)

EXAMPLE = (
    Path(__file__).resolve().parents[1] / "data_manifests" / "sweeps" / "example_mask_ratio.yaml"
)


def write_manifest(path: Path, name: str, *, labelled: bool = True) -> Path:
    """A manifest of two cases (one train, one test); the files need not exist for a spec."""
    cases = tuple(
        Case(
            case_id=f"{name}-{i}",
            subject=f"{name}-{i}",
            images={"image": Path(f"images/{i}.nii.gz")},
            label=Path(f"labels/{i}.nii.gz") if labelled else None,
            split=("train", "test")[i] if labelled else None,
        )
        for i in range(2)
    )
    labels = {0: "background", 1: "csf", 2: "gm", 3: "wm"} if labelled else None
    m = Manifest(
        name=name,
        root=path.parent,
        root_spec=".",
        channels=("image",),
        labels=labels,
        cases=cases,
    )
    return save_manifest(m, path)


def spec_dict(tmp_path: Path) -> dict[str, Any]:
    """4 pretraining configs x 2 fine-tuning schedules x 2 datasets, 1 seed, with scratch."""
    write_manifest(tmp_path / "pre.yaml", "pre", labelled=False)
    write_manifest(tmp_path / "d1.yaml", "d1")
    write_manifest(tmp_path / "d2.yaml", "d2")
    return {
        "name": "toy",
        "base": "tiny",
        "overrides": ["pretrain.steps=7", "finetune.steps=5"],
        "axes": {
            "mask.ratio": [0.6, 0.75],
            "mask.variant": ["dense", "s3d"],
            "finetune.schedule": ["sawtooth", "warmup_poly"],
        },
        "pretrain_data": "pre.yaml",
        "datasets": ["d1.yaml", {"manifest": "d2.yaml"}],
        "seeds": [0],
        "scratch": True,
    }


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    data = {**spec_dict(tmp_path), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class FakeExecutor:
    """Stands in for pretraining / fine-tuning + evaluation: instant, deterministic.

    Fine-tuning runs write ``evaluation/metrics.csv`` (2 cases x 3 labels) whose Dice depends on
    the run's config label and seed.

    Args:
        fail_once: runs that raise on their first call.
        fail_always: runs that always raise.
        interrupt: runs that raise KeyboardInterrupt on their first call (a killed sweep).
    """

    def __init__(
        self,
        fail_once: set[str] | None = None,
        fail_always: set[str] | None = None,
        interrupt: set[str] | None = None,
    ) -> None:
        self.fail_once = set(fail_once or ())
        self.fail_always = set(fail_always or ())
        self.interrupt = set(interrupt or ())
        self.calls: list[str] = []

    def __call__(self, plan: SweepPlan, run: Run) -> Mapping[str, Any]:
        self.calls.append(run.name)
        if run.name in self.interrupt:
            self.interrupt.discard(run.name)
            raise KeyboardInterrupt
        if run.name in self.fail_always:
            raise RuntimeError(f"boom in {run.name}")
        if run.name in self.fail_once:
            self.fail_once.discard(run.name)
            raise RuntimeError(f"first try of {run.name} fails")
        run_dir = plan.run_dir(run)
        if run.kind == "finetune":
            assert (
                run.pretrain_run is None or (plan.run_dir(run.pretrain_run) / "done.json").is_file()
            )
            base = (zlib.crc32(f"{run.config_label}/{run.dataset}".encode()) % 1000) / 2000
            rows = [
                {
                    "run": run.name,
                    "checkpoint": "best",
                    "dataset": run.dataset,
                    "case": f"c{c}",
                    "subject": f"s{c}",
                    "label": label,
                    "label_name": {1: "csf", 2: "gm", 3: "wm"}[label],
                    "dice": 0.4 + base + 0.01 * label + 0.001 * (run.seed or 0),
                    "hd95_mm": 3.0,
                    "ref_volume_ml": 1.0,
                    "pred_volume_ml": 1.1,
                    "ref_empty": False,
                    "pred_empty": False,
                }
                for c in range(2)
                for label in (1, 2, 3)
            ]
            (run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(run_dir / "evaluation" / "metrics.csv", index=False)
        return {"train_time_s": 1.5, "num_params": 1234}


# --------------------------------------------------------------------------------------------------
# Spec and expansion


def test_expansion_counts_names_and_configs(tmp_path: Path) -> None:
    spec = load_sweep_spec(write_spec(tmp_path))
    assert spec.pretrain_fields == ["mask.ratio", "mask.variant"]
    assert spec.finetune_fields == ["finetune.schedule"]
    plan = expand_sweep(spec, tmp_path / "out")
    # Pretraining once per pretraining config, not per fine-tuning schedule.
    assert len(plan.pretrain_runs) == 4
    pretrained = [r for r in plan.finetune_runs if r.arm == "pretrained"]
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    assert len(pretrained) == 4 * 2 * 2  # pretraining configs x schedules x datasets
    assert len(scratch) == 2 * 2  # schedules x datasets (mask axes do not apply)
    names = [r.name for r in plan.runs]
    assert names[:4] == [
        "pt_mask.ratio=0.6_mask.variant=dense",
        "pt_mask.ratio=0.6_mask.variant=s3d",
        "pt_mask.ratio=0.75_mask.variant=dense",
        "pt_mask.ratio=0.75_mask.variant=s3d",
    ]
    assert "ft_d1_scratch_finetune.schedule=sawtooth_seed0" in names
    run = plan.run("ft_d2_pt_mask.ratio=0.75_mask.variant=s3d_finetune.schedule=warmup_poly_seed0")
    assert run.pretrain_run == "pt_mask.ratio=0.75_mask.variant=s3d"
    assert run.config.mask.ratio == 0.75 and run.config.finetune.schedule == "warmup_poly"
    assert run.config.data.finetune_manifest == str((tmp_path / "d2.yaml").resolve())
    assert run.config.data.pretrain_manifest == str((tmp_path / "pre.yaml").resolve())
    assert run.config.finetune.steps == 5 and run.config_label == (
        "mask.ratio=0.75 mask.variant=s3d finetune.schedule=warmup_poly"
    )
    assert plan.run(run.pretrain_run).config.pretrain.steps == 7
    # Expansion is deterministic.
    assert [r.name for r in expand_sweep(spec, tmp_path / "out").runs] == names
    # Pretraining first, then fine-tuning with the scratch baselines of each dataset first.
    kinds = [r.kind for r in plan.runs]
    assert kinds == sorted(kinds, key=lambda k: k != "pretrain")
    assert plan.finetune_runs[0].arm == "scratch"


def test_seeds_and_scratch_per_architecture(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    data["axes"] = {"model.name": ["resenc_tiny", "resenc_l"], "mask.ratio": [0.3, 0.9]}
    data["seeds"] = [0, 1, 2]
    data["datasets"] = ["d1.yaml"]
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    assert len(plan.pretrain_runs) == 4
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    # Scratch varies over the architecture (it matters without pretraining), not the mask ratio.
    assert len(scratch) == 2 * 3
    assert {r.values["model.name"] for r in scratch} == {"resenc_tiny", "resenc_l"}
    assert all("mask.ratio" not in r.values for r in scratch)
    assert {r.config.runtime.seed for r in plan.finetune_runs} == {0, 1, 2}
    assert all(r.config.runtime.seed == 0 for r in plan.pretrain_runs)
    assert len(plan.finetune_runs) == 6 + 4 * 3


def test_each_stage_optimiser_is_its_own_axis(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    data["axes"] = {"pretrain.optim.lr": [0.01, 0.03], "finetune.optim.lr": [0.001, 0.003]}
    data["datasets"] = ["d1.yaml"]
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    # The pretraining lr makes pretraining runs; the fine-tuning lr shares them.
    assert sorted(r.config.pretrain.optim.lr for r in plan.pretrain_runs) == [0.01, 0.03]
    assert {r.config.finetune.optim.lr for r in plan.pretrain_runs} == {1e-3}
    pretrained = [r for r in plan.finetune_runs if r.arm != "scratch"]
    assert sorted((r.config.pretrain.optim.lr, r.config.finetune.optim.lr) for r in pretrained) == [
        (0.01, 0.001),
        (0.01, 0.003),
        (0.03, 0.001),
        (0.03, 0.003),
    ]
    # Scratch ignores the pretraining optimiser: one baseline per fine-tuning lr.
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    assert sorted(r.config.finetune.optim.lr for r in scratch) == [0.001, 0.003]
    data["axes"] = {"optim.lr": [0.01, 0.03]}
    with pytest.raises(ConfigError, match="set pretrain.optim.lr and/or finetune.optim.lr"):
        expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")


def test_no_axes_gives_one_config(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    del data["axes"]
    data["scratch"] = False
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    assert [r.name for r in plan.runs] == ["pt_base", "ft_d1_pt_base_seed0", "ft_d2_pt_base_seed0"]
    assert plan.finetune_runs[0].config_label == "pretrained"


def test_value_names() -> None:
    assert format_value(0.6) == "0.6" and format_value(3e-5) == "3e-05"
    assert format_value(True) == "true" and format_value(None) == "none"
    assert format_value((48, 48, 32)) == "48x48x32"
    assert format_value("/data/sets/brats.yaml") == "brats"
    assert format_value("warmup_poly") == "warmup_poly" and format_value("a b/c") == "c"
    assert format_value("a b") == "a-b"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"axis": {"mask.ratoi": [0.5]}},
            r"axes.mask.ratoi: unknown config field \(did you mean 'mask.ratio'\?\)",
        ),
        ({"axis": {"runtime.seed": [1, 2]}}, "runtime.seed: cannot be an axis; use 'seeds:'"),
        ({"axis": {"mask.ratio": 0.5}}, "axes.mask.ratio: expected a non-empty list"),
        (
            {"axis": {"mask.ratio": [0.6, 1.5]}},
            r"combination mask.ratio=1.5: mask.ratio: must be in \[0, 1\]",
        ),
        ({"axis": {"mask.ratio": [0.6, 0.60]}}, "would share the folder"),
        ({"top": {"sede": [1]}}, r"sede: unknown key \(did you mean 'seeds'\?\)"),
        ({"top": {"seeds": [1, 1]}}, "seeds: a seed is listed twice"),
        ({"top": {"datasets": []}}, "datasets: expected a non-empty list"),
        ({"top": {"datasets": ["pre.yaml"]}}, "has no labels"),
        ({"top": {"datasets": ["d1.yaml", "d1.yaml"]}}, "the name 'd1' is used twice"),
        (
            {"top": {"datasets": [{"synthetic": {"labelled": 4, "subjects": 3}}]}},
            "no unlabelled subjects",
        ),
        ({"top": {"pretrain_data": {"synthetic": {"subjects": 0}}}}, "subjects >= 1"),
        ({"top": {"pretrain_data": {"synthtic": {}}}}, "did you mean 'synthetic'"),
        ({"top": {"overrides": ["mask.variant=sparse"]}}, "mask.variant: must be one of"),
        ({"top": {"pretrained_checkpoint": "latest"}}, "must be final or best"),
        (
            {"top": {"overrides": ["finetune.steps=3"]}},
            "combination pretrained mask.ratio=0.6 mask.variant=dense finetune.schedule=sawtooth: "
            "finetune.warmup_fraction",
        ),
        ({"drop": "base"}, "base: missing"),
        ({"drop": "pretrain_data"}, "pretrain_data: missing"),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = spec_dict(tmp_path)
    if "axis" in change:
        data["axes"] = change["axis"]
    data.update(change.get("top", {}))
    if "drop" in change:
        del data[change["drop"]]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as info:
        expand_sweep(load_sweep_spec(path), tmp_path / "out")
    assert str(info.value).startswith(str(path))


def test_cross_field_values_are_checked_per_combination(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    # input_mask_token only exists for dense: valid with dense, an error with s3d.
    data["axes"] = {"mask.variant": ["dense"], "mask.input_mask_token": [True, False]}
    source = tmp_path / "spec.yaml"
    plan = expand_sweep(parse_sweep_spec(data, source=source), tmp_path / "out")
    assert len(plan.pretrain_runs) == 2
    data["axes"]["mask.variant"] = ["dense", "s3d"]
    with pytest.raises(ConfigError, match="mask.variant=s3d mask.input_mask_token=true"):
        expand_sweep(parse_sweep_spec(data, source=source), tmp_path / "out")


def test_example_spec_expands() -> None:
    spec = load_sweep_spec(EXAMPLE)
    assert spec.axes["mask.ratio"] == (0.3, 0.6, 0.75, 0.9)
    assert spec.axes["mask.variant"] == ("dense", "s3d")
    assert spec.base.preset == "tiny" and spec.scratch
    plan = expand_sweep(spec, "/tmp/example")
    assert len(plan.pretrain_runs) == 8
    n_sets = len(spec.datasets) * len(spec.seeds)
    assert len(plan.finetune_runs) == 9 * n_sets


# --------------------------------------------------------------------------------------------------
# Running and resuming


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


# --------------------------------------------------------------------------------------------------
# Dry run


def test_estimates_measure_each_setting_once(tmp_path: Path) -> None:
    plan = expand_sweep(load_sweep_spec(write_spec(tmp_path)), tmp_path / "out")
    timed: list[Config] = []

    def timer(cfg: Config, steps: int) -> float:
        timed.append(cfg)
        return 0.5 if cfg.mask.variant == "s3d" else 0.25

    estimates = estimate_sweep(plan, measure_steps=2, step_timer=timer)
    # pretraining dense, pretraining s3d, fine-tuning (dense proxy at the fine-tuning batch)
    assert len(timed) == 2 + 1
    by_name = {e.run.name: e for e in estimates}
    pt = by_name["pt_mask.ratio=0.6_mask.variant=s3d"]
    cfg = pt.run.config
    val = -(-cfg.pretrain.steps // cfg.pretrain.val_every) * cfg.pretrain.val_batches * 0.5 / 3
    assert pt.estimated_s == pytest.approx(7 * 0.5 + val)
    ft = by_name["ft_d1_pt_mask.ratio=0.6_mask.variant=s3d_finetune.schedule=sawtooth_seed0"]
    assert ft.estimated_s == pytest.approx(5 * 0.25) and ft.state == "pending"
    text = format_estimates(estimates, measure_steps=2)
    assert "24 runs (4 pretraining, 20 fine-tuning), 24 to do" in text
    assert "from 2 timed steps" in text
    none = estimate_sweep(plan, measure_steps=0)
    assert all(e.estimated_s is None for e in none)
    assert "no time estimate" in format_estimates(none, measure_steps=0)


# --------------------------------------------------------------------------------------------------
# Command line


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


# --------------------------------------------------------------------------------------------------
# The real thing, at the smallest size


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


def test_pretrained_checkpoint_choice(tmp_path: Path) -> None:
    plan = expand_sweep(load_sweep_spec(write_spec(tmp_path)), tmp_path / "out")
    run = plan.finetune_runs[-1]
    ckpts = plan.run_dir(run.pretrain_run or "") / "checkpoints"
    assert plan.pretrained_checkpoint(run) == ckpts / "final.pt"
    assert plan.pretrained_checkpoint(plan.finetune_runs[0]) is None  # scratch
    best = expand_sweep(
        load_sweep_spec(write_spec(tmp_path, pretrained_checkpoint="best")), tmp_path / "out"
    )
    assert best.pretrained_checkpoint(run) == ckpts / "final.pt"  # no best.pt: final
    ckpts.mkdir(parents=True)
    (ckpts / "best.pt").touch()
    assert best.pretrained_checkpoint(run) == ckpts / "best.pt"


def test_parameter_count_counts_shared_tensors_once(tmp_path: Path) -> None:
    import torch

    from toolkit.engine.checkpoint import save_checkpoint
    from toolkit.sweep import count_checkpoint_parameters

    conv = torch.zeros(4, 2, 3, 3, 3)
    state = {"conv": conv, "all_modules.0": conv, "bias": torch.zeros(4)}
    save_checkpoint(tmp_path / "ft.pt", {"model": state})
    assert count_checkpoint_parameters(tmp_path / "ft.pt") == 4 * 2 * 27 + 4
    save_checkpoint(
        tmp_path / "pt.pt", {"network_weights": state, "extra_weights": {"token": torch.zeros(8)}}
    )
    assert count_checkpoint_parameters(tmp_path / "pt.pt") == 4 * 2 * 27 + 4 + 8
