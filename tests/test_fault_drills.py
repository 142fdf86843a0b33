"""Fault drills: ``kill -9`` and resume, a full disk on a checkpoint, a read-only run folder.

The kill drills start the real commands (``mae3d preprocess``, ``pretrain``, ``finetune`` and
``sweep``) as processes at tiny size, SIGKILL them at seeded moments (see
:mod:`tests.faults.drill`), rerun the same command until it finishes, and require the result of an
uninterrupted run: the same loss curve (``metrics.jsonl`` without timings) and bit-identical
weights and optimiser state on CPU, or a byte-identical cache. A rerun of ``pretrain`` /
``finetune`` adds ``--resume`` once the run folder holds a started run, as its error message asks.
The default suite kills each command twice (forked from a preloaded server, see
:mod:`tests.faults.launch`); ``-m slow`` kills each ten times through the console script.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.faults.drill import (
    count_files,
    count_lines,
    draw_kill_points,
    kill_and_rerun,
    reference_run,
    tree_bytes,
)
from tests.faults.launch import Launcher
from tests.faults.runs import (
    COMMON,
    Drills,
    assert_drill_ok,
    assert_same_run,
    finetune_argv,
    pretrain_argv,
    report,
    resume_when_started,
    write_manifests,
)
from toolkit.engine import checkpoint as checkpoint_module
from toolkit.engine import run_folder
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint

#: (kill points, launcher kind) of the default and the slow drill.
MODES = [
    pytest.param((2, "fork"), id="2-kills"),
    pytest.param((10, "exec"), id="10-kills", marks=pytest.mark.slow),
]
SEED = 20261129


@pytest.fixture(scope="module")
def drills(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drills]:
    from toolkit.data.preprocess import preprocess_manifest

    root = tmp_path_factory.mktemp("drills")
    write_manifests(root / "data")
    launcher = Launcher("fork", cwd=root)
    for name in ("pre", "lab"):
        preprocess_manifest(
            root / "data" / f"{name}.yaml",
            root / "cache" / name,
            target_spacing_mm=(1.0, 1.0, 1.0),
            workers=0,
            progress=False,
        )
    d = Drills(root, launcher, root / "cache" / "pre", root / "cache" / "lab", root / "ref_pt")
    ref = reference_run(
        launcher,
        pretrain_argv(d, d.pretrain_ref),
        lambda: count_lines(d.pretrain_ref / "metrics.jsonl"),
        root / "ref_pt.log",
    )
    assert ref.exit_code == 0, (root / "ref_pt.log").read_text()
    d.pretrain_clean = ref
    yield d


# --------------------------------------------------------------------------------------------------
# kill -9 drills


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_resume_pretrain(drills: Drills, mode: tuple[int, str]) -> None:
    num, kind = mode
    launcher = drills.launcher_for(kind)
    run = drills.root / f"pt_{num}"
    argv = pretrain_argv(drills, run)
    ref = drills.pretrain_ref
    clean = drills.pretrain_clean
    assert clean is not None
    points = draw_kill_points(SEED + num, num, clean.total, clean.gap_s)
    record = kill_and_rerun(
        launcher,
        resume_when_started(argv, run),
        lambda: count_lines(run / "metrics.jsonl"),
        points,
        drills.root / f"pt_{num}.log",
    )
    report("pretrain", record, clean)
    assert_drill_ok(record, drills.root / f"pt_{num}.log")
    assert_same_run(ref, run)


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_resume_finetune(drills: Drills, mode: tuple[int, str]) -> None:
    num, kind = mode
    launcher = drills.launcher_for(kind)
    ref, run = drills.root / f"ft_ref_{num}", drills.root / f"ft_{num}"
    clean = reference_run(
        launcher,
        finetune_argv(drills, ref),
        lambda: count_lines(ref / "metrics.jsonl"),
        drills.root / f"ft_ref_{num}.log",
    )
    assert clean.exit_code == 0
    argv = finetune_argv(drills, run)
    points = draw_kill_points(SEED + 1 + num, num, clean.total, clean.gap_s)
    log = drills.root / f"ft_{num}.log"
    record = kill_and_rerun(
        launcher,
        resume_when_started(argv, run),
        lambda: count_lines(run / "metrics.jsonl"),
        points,
        log,
    )
    report("finetune", record, clean)
    assert_drill_ok(record, log)
    assert_same_run(ref, run)
    assert json.loads((run / "transfer_report.json").read_text())["ok"]


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_resume_preprocess(drills: Drills, mode: tuple[int, str]) -> None:
    num, kind = mode
    launcher = drills.launcher_for(kind)
    data = drills.root / f"prep_data_{num}"
    write_manifests(data, num_pretrain=10, num_labelled=0)
    ref, out = drills.root / f"prep_ref_{num}", drills.root / f"prep_{num}"

    def argv(target: Path) -> list[str]:
        return ["preprocess", str(data / "pre.yaml"), "--out", str(target), "--spacing", "0.6"]

    common = ["--workers", "0", "--no-progress"]
    clean = reference_run(
        launcher,
        [*argv(ref), *common],
        lambda: count_files(ref / "cases", "*/done.json"),
        drills.root / f"prep_ref_{num}.log",
    )
    assert clean.exit_code == 0
    points = draw_kill_points(SEED + 2 + num, num, clean.total, clean.gap_s)
    log = drills.root / f"prep_{num}.log"
    record = kill_and_rerun(
        launcher,
        lambda: [*argv(out), *common],
        lambda: count_files(out / "cases", "*/done.json"),
        points,
        log,
    )
    report("preprocess", record, clean)
    assert_drill_ok(record, log)
    # plan.json included: it records no timings or per-call counts, so it is byte-identical too.
    assert tree_bytes(out) == tree_bytes(ref)


def sweep_spec(drills: Drills, path: Path) -> Path:
    steps = {
        "pretrain.steps": 4,
        "pretrain.log_every": 2,
        "pretrain.checkpoint_every": 3,
        "pretrain.val_every": 4,
        "pretrain.snapshot_every": 100,
        "finetune.steps": 4,
        "finetune.log_every": 2,
        "finetune.checkpoint_every": 3,
        "finetune.val_every": 4,
    }
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in COMMON)}
    spec = {
        "name": "drill",
        "base": "tiny",
        "overrides": {**overrides, **steps},
        "pretrain_data": str(drills.root / "data" / "pre.yaml"),
        "datasets": [str(drills.root / "data" / "lab.yaml")],
        "seeds": [0],
        "scratch": False,
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def sweep_progress(out: Path) -> int:
    """Finished cache cases, metric lines, evaluations and finished runs of a sweep folder."""
    return (
        count_files(out, "cache/*/cases/*/done.json")
        + sum(count_lines(p) for p in out.glob("*/metrics.jsonl"))
        + count_files(out, "*/evaluation/metrics.csv")
        + count_files(out, "*/done.json")
    )


def sweep_runs(out: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in out.glob("*/checkpoints/final.pt"))


#: results.csv columns that hold wall times (they differ between runs).
TIME_COLUMNS = ("time_s", "wall_s")


@pytest.mark.parametrize("mode", MODES)
def test_kill_and_resume_sweep(drills: Drills, mode: tuple[int, str]) -> None:
    num, kind = mode
    launcher = drills.launcher_for(kind)
    spec = sweep_spec(drills, drills.root / f"sweep_{num}.yaml")
    ref, out = drills.root / f"sweep_ref_{num}", drills.root / f"sweep_{num}"
    common = ["--no-progress", "--retries", "0"]
    ref_log = drills.root / f"sweep_ref_{num}.log"
    clean = reference_run(
        launcher,
        ["sweep", str(spec), "--out", str(ref), *common],
        lambda: sweep_progress(ref),
        ref_log,
    )
    assert clean.exit_code == 0, ref_log.read_text()[-3000:]
    points = draw_kill_points(SEED + 3 + num, num, clean.total, clean.gap_s)
    log = drills.root / f"sweep_{num}.log"
    record = kill_and_rerun(
        launcher,
        lambda: ["sweep", str(spec), "--out", str(out), *common],
        lambda: sweep_progress(out),
        points,
        log,
    )
    report("sweep", record, clean)
    assert_drill_ok(record, log)
    runs = sweep_runs(ref)
    assert runs == sweep_runs(out) and len(runs) == 2
    for name in runs:
        assert_same_run(ref / name, out / name, which=("final",))
    assert tree_bytes(out / "cache") == tree_bytes(ref / "cache")
    tables = [pd.read_csv(d / "results.csv") for d in (ref, out)]
    keep = [c for c in tables[0].columns if not c.endswith(TIME_COLUMNS)]
    pd.testing.assert_frame_equal(tables[0][keep], tables[1][keep])


# --------------------------------------------------------------------------------------------------
# A full disk while writing a checkpoint


def test_full_disk_on_a_checkpoint_keeps_the_previous_one(
    drills: Drills,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from toolkit.cli import main

    real_save = torch.save
    saves: list[int] = []

    def filling_save(obj: object, fh: io.BufferedWriter) -> None:
        saves.append(1)
        if len(saves) < 2:
            real_save(obj, fh)
            return
        buf = io.BytesIO()
        real_save(obj, buf)
        fh.write(buf.getvalue()[: buf.tell() // 2])  # half the file fits, then the disk is full
        fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", filling_save)
    run = tmp_path / "run"
    # checkpoint every 2nd step: latest at step 2, then best at step 3 (validation) fills the disk
    argv = [
        "pretrain.checkpoint_every=2" if a.startswith("pretrain.checkpoint_every=") else a
        for a in pretrain_argv(drills, run)
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    latest, best = checkpoint_path(run, "latest"), checkpoint_path(run, "best")
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith(f"error: disk full: cannot write checkpoint {best}")
    assert "intact (latest.pt)" in lines[0] and "Free at least" in lines[0]
    assert f"in {run}" in lines[0] and "--resume" in lines[0]
    # the first checkpoint (step 2) survived whole; nothing half-written is left next to it
    assert load_checkpoint(latest)["step"] == 2
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest.pt"]

    # with space again, --resume ends exactly where an uninterrupted run ends
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--resume"])
    assert exc.value.code == 0
    assert_same_run(drills.pretrain_ref, run)


def test_disk_full_message_says_what_to_free(tmp_path: Path) -> None:
    path = checkpoint_path(tmp_path / "run", "final")
    path.parent.mkdir(parents=True)
    (path.parent / "latest.pt").write_bytes(b"x" * 3000)
    (tmp_path / "run" / "snapshots").mkdir()
    (tmp_path / "run" / "snapshots" / "a.png").write_bytes(b"x" * 500)
    text = checkpoint_module.disk_full_message(path, 2_500_000)
    assert "\n" not in text
    assert f"cannot write checkpoint {path}" in text and "(latest.pt)" in text
    assert "Free at least 2.5 MB" in text and "3.5 KB in " in text and "500 B in snapshots/" in text


# --------------------------------------------------------------------------------------------------
# Read-only run folders are refused before any work


def _fail_probes_in(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make the write probe in ``folder`` fail as a read-only mount does (works as root too)."""
    real_open = os.open

    def guarded_open(path: str | os.PathLike[str], flags: int, *args: int) -> int:
        p = Path(path)
        if p.parent == folder and p.name.startswith(run_folder.PROBE_PREFIX):
            raise OSError(code, os.strerror(code), str(p))
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_folder.os, "open", guarded_open)


def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the run folder was checked")

    import toolkit.finetune
    import toolkit.pretrain

    monkeypatch.setattr(toolkit.pretrain, "setup_runtime", work)
    monkeypatch.setattr(toolkit.pretrain, "resolve_pretrain_cache", work)
    monkeypatch.setattr(toolkit.finetune, "read_pretrained", work)
    monkeypatch.setattr(toolkit.finetune, "setup_runtime", work)


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("where", ["folder", "parent", "checkpoints"])
def test_read_only_run_folder_is_refused_before_any_work(
    drills: Drills,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    where: str,
) -> None:
    from toolkit.cli import main

    run = tmp_path / "runs" / "exp"
    blocked = {"folder": run, "parent": run.parent, "checkpoints": run / "checkpoints"}[where]
    blocked.mkdir(parents=True)
    if where == "checkpoints":  # a started run whose checkpoints/ became read-only
        (run / "run.json").write_text("{}")
    _fail_probes_in(monkeypatch, blocked)
    _no_work(monkeypatch)
    argv = pretrain_argv(drills, run) if command == "pretrain" else finetune_argv(drills, run)
    if where == "checkpoints":
        argv.append("--resume")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert lines == [
        f"error: {run}: the run folder cannot be written ({blocked}: Read-only file system); "
        "choose another --out or make it writable"
    ]
    assert not any(p.name.startswith(run_folder.PROBE_PREFIX) for p in tmp_path.rglob("*"))


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permission bits"
)
def test_run_folder_without_write_permission_is_refused(
    drills: Drills, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from toolkit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o555)
    try:
        with pytest.raises(SystemExit) as exc:
            main(pretrain_argv(drills, run))
    finally:
        run.chmod(0o755)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run}: the run folder cannot be written")
