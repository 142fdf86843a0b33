"""Sweeps through submitit: local subprocesses in parallel, a SIGKILLed run resumed, SLURM jobs.

The local tests run :class:`tests.sweep.stepfake.StepFake` (sleeping steps with a resumable step
counter) in submitit's ``LocalExecutor`` subprocesses; the SLURM test builds the real
``SlurmExecutor`` and its sbatch script without submitting anything.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.sweep.fakes import spec_dict
from tests.sweep.stepfake import StepFake, read_log
from toolkit.errors import ConfigError
from toolkit.sweep import (
    JobOptions,
    expand_sweep,
    load_sweep_spec,
    read_attempts,
    run_sweep,
    sbatch_script,
    slurm_parameters,
)
from toolkit.sweep.executors import Launcher

ROOT = Path(__file__).resolve().parents[2]


def small_spec(tmp_path: Path, pretrain_steps: int) -> Path:
    """pt_base, ft_d1_scratch_seed0 (independent of it) and ft_d1_pt_base_seed0 (depends on it)."""
    data = spec_dict(tmp_path)
    del data["axes"]
    data["datasets"] = ["d1.yaml"]
    data["overrides"] = [f"pretrain.steps={pretrain_steps}", "finetune.steps=5"]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def window(run_dir: Path) -> tuple[float, float]:
    """First start and last logged event of a fake run."""
    log = read_log(run_dir)
    return log[0]["t"], log[-1]["t"]


def kill_when_running_beside(victim: Path, other: Path, min_step: int, found: dict[str, Any]):
    """SIGKILL the victim's process once it is past ``min_step`` while ``other`` has started."""

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            log, beside = read_log(victim), read_log(other)
            steps = [e["step"] for e in log if e["event"] == "step"]
            if any(e["event"] == "end" for e in log):
                found["error"] = "the victim finished before the other run started"
                return
            if steps and steps[-1] >= min_step and beside:
                found["pid"], found["step"] = log[0]["pid"], steps[-1]
                os.kill(log[0]["pid"], signal.SIGKILL)
                found["killed_at"] = time.time()
                return
            time.sleep(0.05)
        found["error"] = "timed out"

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_local_executor_parallel_kill_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # submitit's subprocesses unpickle StepFake from this package.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    spec = small_spec(tmp_path, pretrain_steps=24)
    plan = expand_sweep(load_sweep_spec(spec), tmp_path / "local")
    pt, scratch, ft = (r.name for r in plan.runs)
    assert plan.run(ft).pretrain_run == pt and plan.run(scratch).pretrain_run is None

    reference = run_sweep(spec, tmp_path / "inline", executor=StepFake(0.0), progress=False)
    assert sorted(reference.completed) == sorted([pt, scratch, ft])

    out = tmp_path / "local"
    jobs = JobOptions(executor="local", max_parallel=2, timeout_min=10)
    found: dict[str, Any] = {}
    watcher = kill_when_running_beside(out / pt, out / scratch, 2, found)
    first = run_sweep(spec, out, executor=StepFake(0.25), jobs=jobs, retries=0, progress=False)
    watcher.join(timeout=5)
    assert "error" not in found, found
    # Two runs were in flight at once, each in its own process.
    # (the victim's window ends when it is killed, after its last logged step)
    (pt_start, _), (sc_start, sc_end) = window(out / pt), window(out / scratch)
    assert max(pt_start, sc_start) < min(found["killed_at"], sc_end)
    pids = {read_log(out / pt)[0]["pid"], read_log(out / scratch)[0]["pid"], os.getpid()}
    assert len(pids) == 3
    # The killed pretraining run is a failed attempt; its fine-tuning run is blocked.
    assert first.completed == [scratch] and first.failed == [pt] and first.blocked == [ft]
    (attempt,) = read_attempts(out / pt)
    assert attempt["outcome"] == "failed" and "without recording an outcome" in attempt["error"]
    failures = pd.read_csv(out / "failures.csv").set_index("run")
    assert failures.loc[pt, "state"] == "failed" and failures.loc[ft, "state"] == "blocked"
    assert not (out / ft).exists()

    # The rerun resumes the killed run where its counter stopped, then runs its fine-tuning.
    again = run_sweep(spec, out, executor=StepFake(0.25), jobs=jobs, retries=0, progress=False)
    assert again.completed == [pt, ft] and again.skipped == [scratch] and not again.failed
    starts = [e for e in read_log(out / pt) if e["event"] == "start"]
    assert len(starts) == 2 and starts[1]["from_step"] >= found["step"] >= 2
    steps = [e["step"] for e in read_log(out / pt) if e["event"] == "step"]
    assert steps[-1] == 24 and steps.count(24) == 1
    assert window(out / ft)[0] >= window(out / pt)[1]  # fine-tuning started after pretraining
    assert [a["outcome"] for a in read_attempts(out / pt)] == ["failed", "ok"]
    assert pd.read_csv(out / "failures.csv").empty
    assert (pd.read_csv(out / "status.csv")["state"] == "done").all()
    # Same results as one after another in this process.
    local = pd.read_csv(out / "results.csv")
    inline = pd.read_csv(tmp_path / "inline" / "results.csv")
    assert len(local) == 2 * 2 * 3  # 2 fine-tuning runs x 2 cases x 3 labels
    pd.testing.assert_frame_equal(local, inline)
    assert list((out / "jobs").glob("*_log.err"))  # submitit's job logs


def test_slurm_jobs_are_built_by_submitit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import submitit

    opts = JobOptions(
        executor="slurm",
        slurm_partition="gpu",
        gpus_per_run=2,
        cpus_per_run=16,
        mem_gb=64,
        timeout_min=600,
        max_parallel=4,
        slurm_options={"account": "lab", "qos": "high"},
        setup=("source .venv/bin/activate",),
    )
    # No cluster here: submitit's own SlurmExecutor, told that srun exists, validates the
    # parameters and writes the sbatch script; nothing is submitted.
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    launcher = Launcher(opts, tmp_path / "jobs")
    executor = launcher._submitit()
    assert isinstance(executor, submitit.SlurmExecutor)
    executor.update_parameters(**slurm_parameters(opts, "mae3d-toy-pt_base"))
    script = executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --mem=65536M",
        "#SBATCH --time=600",
        "#SBATCH --job-name=mae3d-toy-pt_base",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "source .venv/bin/activate",
    ):
        assert line in script.splitlines(), line
    preview = sbatch_script(opts, "mae3d-toy-pt_base", tmp_path / "jobs")
    assert [x for x in preview.splitlines() if x.startswith("#SBATCH")] == [
        x for x in script.splitlines() if x.startswith("#SBATCH")
    ]
    assert opts.cap == 4 and JobOptions(executor="slurm").cap is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor": "pbs"}, "--executor: must be one of inline, local, slurm"),
        ({"max_parallel": 2}, "the inline executor runs one run at a time"),
        ({"executor": "local", "slurm_partition": "gpu"}, "--slurm-partition: only for"),
        ({"executor": "local", "max_parallel": 0}, "--max-parallel: must be >= 1"),
    ],
)
def test_bad_job_options(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobOptions(**kwargs)


def test_slurm_without_a_cluster_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="no sbatch/srun on this machine"):
        Launcher(JobOptions(executor="slurm"), tmp_path)


@pytest.mark.slow
def test_real_tiny_sweep_in_local_subprocesses_equals_inline(tmp_path: Path) -> None:
    """Pretraining, scratch and fine-tuning with the toolkit in submitit jobs, 2 at a time."""
    from toolkit.sweep import parse_sweep_spec

    stages = ("pretrain", "finetune")
    steps = {f"{stage}.{k}": 4 for stage in stages for k in ("steps", "val_every")}
    spec = {
        "name": "e2e",
        "base": "tiny",
        "overrides": {
            **steps,
            "pretrain.checkpoint_every": 2,
            "pretrain.snapshot_every": 4,
            "finetune.checkpoint_every": 2,
            "data.patch_size": [32, 32, 32],
            "data.target_spacing_mm": [4.0, 4.0, 4.0],
            "runtime.threads": 1,  # the same arithmetic in every process
        },
        "pretrain_data": {"synthetic": {"subjects": 2, "seed": 0, "spacing_mm": 4.0}},
        "datasets": [{"synthetic": {"labelled": 3, "seed": 1, "spacing_mm": 4.0}, "name": "syn"}],
        "scratch": True,
    }
    parsed = parse_sweep_spec(spec, source=tmp_path / "e2e.yaml")
    inline = run_sweep(parsed, tmp_path / "inline", progress=False)
    jobs = JobOptions(executor="local", max_parallel=2, timeout_min=30)
    local = run_sweep(parsed, tmp_path / "local", jobs=jobs, progress=False)
    assert sorted(local.completed) == sorted(inline.completed) and len(local.completed) == 3
    assert not local.failed and not local.blocked
    pids = {read_attempts(tmp_path / "local" / name)[-1]["pid"] for name in local.completed}
    assert len(pids) == 3 and os.getpid() not in pids
    a = pd.read_csv(tmp_path / "inline" / "results.csv")
    b = pd.read_csv(tmp_path / "local" / "results.csv")
    keys = ["run", "case", "label"]
    a, b = a.sort_values(keys).reset_index(drop=True), b.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[[*keys, "dice"]], b[[*keys, "dice"]], rtol=1e-6)
    assert set(a["arm"]) == {"pretrained", "scratch"}
