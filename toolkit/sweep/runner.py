"""Running a sweep: launch every run not yet done, respecting dependencies, retries and a cap.

The one loop below serves every executor (:mod:`toolkit.sweep.executors`). Runs are taken in
plan order; a fine-tuning run of pretrained weights is launched only once its pretraining run has
``done.json`` (and is *blocked* if that run failed); at most ``JobOptions.cap`` attempts are in
flight. Whether an attempt succeeded is read from the run folder, never from the job, so a job
that was killed (SIGKILL, out of memory, a SLURM time limit) and wrote nothing is recorded as a
failed attempt with its job id and log, retried while ``retries`` allow, and resumed from its
``latest`` checkpoint by the next attempt or the next call.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass

import yaml

from toolkit.config import save_config
from toolkit.errors import ConfigError
from toolkit.sweep.execute import (
    RunExecutor,
    execute_run,
    prepare_caches,
    prepare_data,
)
from toolkit.sweep.executors import JobHandle, JobOptions, Launcher
from toolkit.sweep.layout import (
    CONFIG_FILE,
    JOBS_DIR,
    PLAN_FILE,
    SPEC_FILE,
    append_attempt,
    read_attempts,
    read_done,
    write_atomic,
)
from toolkit.sweep.plan import Run, SweepPlan, expand_sweep
from toolkit.sweep.spec import SweepSpec, load_sweep_spec
from toolkit.sweep.status import SweepReport, check_existing_configs, write_status

PathLike = str | os.PathLike[str]


@dataclass
class _InFlight:
    run: Run
    handle: JobHandle
    number: int
    known_attempts: int
    started: float


def _outcome(plan: SweepPlan, job: _InFlight) -> str:
    """How an ended attempt went, from the run folder; records a job that wrote nothing."""
    run_dir = plan.run_dir(job.run)
    attempts = read_attempts(run_dir)
    if len(attempts) > job.known_attempts:
        return str(attempts[-1].get("outcome", "failed"))
    append_attempt(
        run_dir,
        {
            "attempt": job.number,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(job.started)),
            "outcome": "failed",
            "wall_s": time.time() - job.started,
            "error": f"ended without recording an outcome (killed?): {job.handle.describe()}",
        },
    )
    return "failed"


def run_sweep(
    spec: SweepSpec | PathLike,
    out_dir: PathLike,
    *,
    executor: RunExecutor | None = None,
    jobs: JobOptions | None = None,
    retries: int = 1,
    progress: bool = True,
    write_results: bool = True,
) -> SweepReport:
    """Run (or continue) a sweep: every run not yet done, pretraining before its fine-tuning.

    A run that fails is retried ``retries`` times (resuming from its ``latest`` checkpoint when
    there is one), then recorded as failed; the sweep goes on with the other runs, and fine-tuning
    runs of a failed pretraining run are reported as blocked. Ctrl-C (which cancels the jobs in
    flight) or a STOP file in a run folder stops the sweep after recording the attempt; rerunning
    continues where it stopped.

    Args:
        spec: a :class:`~toolkit.sweep.spec.SweepSpec` or the path of a spec YAML.
        out_dir: the sweep folder (created).
        executor: does the work of one run (default
            :func:`~toolkit.sweep.execute.execute_run`); tests pass a fake. With a ``local`` or
            ``slurm`` executor it must be picklable (a module-level function or class instance).
        jobs: where runs are launched (default: inline, one after another in this process).
        retries: extra attempts per failing run in this call.
        progress: a progress bar over runs.
        write_results: collect ``results.csv`` at the end (:func:`toolkit.results.write_results`).

    Returns:
        A :class:`~toolkit.sweep.status.SweepReport`; ``status.csv``, ``failures.csv`` and
        ``report.md`` are rewritten whenever a run ends.

    Raises:
        ConfigError: a bad spec, or a folder made from another spec.
    """
    from tqdm.auto import tqdm

    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"retries: must be >= 0, got {retries!r}")
    opts = jobs if jobs is not None else JobOptions()
    start = time.perf_counter()
    plan = expand_sweep(spec, out_dir)
    check_existing_configs(plan)
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SPEC_FILE, yaml.safe_dump(spec.raw, sort_keys=False))
    write_atomic(out / PLAN_FILE, json.dumps(plan.to_dict(), indent=1))
    report = SweepReport(out_dir=out)
    pending = deque(r for r in plan.runs if read_done(plan.run_dir(r)) is None)
    report.skipped = [r.name for r in plan.runs if r not in pending]
    blocked: dict[str, str] = {}
    run_one = executor if executor is not None else execute_run
    launcher = Launcher(opts, out / JOBS_DIR)
    if pending:
        prepare_data(plan, progress=progress)
        if executor is None and not launcher.inline:
            prepare_caches(plan, list(pending), progress=progress)
    bar = tqdm(
        total=len(plan.runs),
        initial=len(report.skipped),
        desc="sweep",
        unit="run",
        disable=not progress,
    )
    in_flight: dict[str, _InFlight] = {}
    failures: dict[str, int] = {}
    finished_bad: set[str] = set()
    try:
        while True:
            if not report.stopped:
                for run in list(pending):
                    if opts.cap is not None and len(in_flight) >= opts.cap:
                        break
                    dep = run.pretrain_run
                    if dep is not None and read_done(plan.run_dir(dep)) is None:
                        if dep in finished_bad or dep in blocked:
                            blocked[run.name] = f"pretraining run {dep} did not finish"
                            report.blocked.append(run.name)
                            pending.remove(run)
                            bar.update()
                        continue
                    pending.remove(run)
                    run_dir = plan.run_dir(run)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    save_config(run.config, run_dir / CONFIG_FILE)
                    known = len(read_attempts(run_dir))
                    bar.set_postfix_str(run.name, refresh=True)
                    tick = time.time()
                    handle = launcher.submit(plan, run, run_one, known + 1)
                    in_flight[run.name] = _InFlight(run, handle, known + 1, known, tick)
                    if launcher.inline:
                        break  # handle it before launching the next one
            if not in_flight:
                break
            for handle in launcher.wait([j.handle for j in in_flight.values()]):
                job = next(j for j in in_flight.values() if j.handle is handle)
                del in_flight[job.run.name]
                outcome = _outcome(plan, job)
                name = job.run.name
                if outcome == "ok":
                    report.completed.append(name)
                elif outcome in ("stopped", "interrupted"):
                    report.stopped = True
                    err = read_attempts(plan.run_dir(job.run))[-1].get("error", outcome)
                    bar.write(f"{name}: {err}")
                    finished_bad.add(name)
                else:
                    failures[name] = failures.get(name, 0) + 1
                    err = read_attempts(plan.run_dir(job.run))[-1].get("error", "")
                    bar.write(f"{name}: attempt {failures[name]} failed: {err}")
                    if failures[name] <= retries:
                        pending.appendleft(job.run)
                        continue
                    report.failed.append(name)
                    finished_bad.add(name)
                bar.update()
            write_status(plan, blocked)
    except KeyboardInterrupt:
        for job in in_flight.values():
            job.handle.cancel()
        raise
    finally:
        bar.close()
        write_status(plan, blocked)
    if write_results:
        from toolkit.results import write_results as write_table

        report.results = write_table(out)
    report.wall_s = time.perf_counter() - start
    return report


__all__ = ["run_sweep"]
