"""Where the runs of a sweep run: in this process, in local subprocesses, or as SLURM jobs.

Three executors share one plan and one bookkeeping (the run folders, see
:mod:`toolkit.sweep.status`); only the place where :func:`~toolkit.sweep.execute.attempt_run`
executes changes:

* ``inline`` (default): one run after another inside the ``mae3d sweep`` process, as always.
* ``local``: each run is one job of submitit's ``LocalExecutor`` (a subprocess), at most
  ``max_parallel`` at a time (default 1). With ``gpus_per_run=N`` each job gets its own N GPUs out
  of ``0 .. max_parallel*N-1`` (submitit sets the visible devices of the job).
* ``slurm``: each run is one ``sbatch`` job through submitit's ``SlurmExecutor`` (partition, GPUs,
  CPUs, memory, time, extra ``#SBATCH`` options, setup lines); ``max_parallel`` caps the jobs
  queued or running at once (default: no cap).

The ``mae3d sweep`` process stays in the foreground with every executor: it submits a run when it
is ready (a fine-tuning run once its pretraining run has written ``done.json``) and a slot is free,
waits on the jobs, and records the outcome. This is why no ``afterok`` dependency is needed: a
fine-tuning job is never queued before its weights exist, and a failed pretraining run blocks its
fine-tuning runs in ``failures.csv`` instead of leaving jobs pending forever. Ctrl-C cancels the
jobs in flight; rerunning the command resumes them from their ``latest`` checkpoint. Job files
(pickled calls, stdout/stderr logs) go to ``SWEEP_DIR/jobs/``.

Example:
    >>> opts = JobOptions(executor="slurm", slurm_partition="gpu", gpus_per_run=1)
    >>> slurm_parameters(opts, "pt_base")["partition"]
    'gpu'
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from toolkit.errors import ConfigError
from toolkit.sweep.execute import RunExecutor, attempt_run
from toolkit.sweep.plan import Run, SweepPlan

#: The executors ``mae3d sweep --executor`` accepts.
EXECUTORS = ("inline", "local", "slurm")


@dataclass(frozen=True)
class JobOptions:
    """How and where the runs of a sweep are launched.

    Attributes:
        executor: ``inline``, ``local`` or ``slurm`` (see the module docstring).
        max_parallel: jobs in flight at once; None = 1 for ``inline``/``local``, no cap for
            ``slurm``.
        gpus_per_run: GPUs of each job (``local``: taken from a pool of max_parallel x N; ``slurm``:
            ``--gpus-per-node``).
        cpus_per_run: ``--cpus-per-task`` of each SLURM job (None: the cluster's default).
        mem_gb: memory of each SLURM job in GB (None: the cluster's default).
        timeout_min: wall-time limit of each job in minutes.
        slurm_partition: ``--partition`` (None: the cluster's default).
        slurm_options: further ``#SBATCH`` options, e.g. ``{"account": "lab", "qos": "high"}``.
        setup: shell lines run before each job (``module load ...``, ``source venv/bin/activate``).
        poll_s: seconds between checks of the jobs in flight.
    """

    executor: str = "inline"
    max_parallel: int | None = None
    gpus_per_run: int = 0
    cpus_per_run: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 48 * 60
    slurm_partition: str | None = None
    slurm_options: Mapping[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()
    poll_s: float | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"--executor: must be one of {', '.join(EXECUTORS)}, got {self.executor!r}"
            )
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ConfigError(f"--max-parallel: must be >= 1, got {self.max_parallel}")
        if self.executor == "inline" and (self.max_parallel or 1) > 1:
            raise ConfigError(
                "--max-parallel: the inline executor runs one run at a time; use --executor local "
                "or slurm"
            )
        if self.gpus_per_run < 0 or self.timeout_min < 1:
            raise ConfigError("--gpus-per-run must be >= 0 and --timeout-min >= 1")
        slurm_only = {
            "--slurm-partition": self.slurm_partition,
            "--slurm-option": dict(self.slurm_options) or None,
            "--cpus-per-run": self.cpus_per_run,
            "--mem-gb": self.mem_gb,
        }
        given = [name for name, value in slurm_only.items() if value is not None]
        if given and self.executor != "slurm":
            raise ConfigError(f"{', '.join(given)}: only for --executor slurm")

    @property
    def cap(self) -> int | None:
        """Jobs in flight at once (None: no cap)."""
        if self.max_parallel is not None:
            return self.max_parallel
        return None if self.executor == "slurm" else 1

    @property
    def poll_interval(self) -> float:
        """Seconds between checks of the jobs (SLURM state queries are rate-limited)."""
        if self.poll_s is not None:
            return self.poll_s
        return 15.0 if self.executor == "slurm" else 0.25


def job_name(plan: SweepPlan, run: Run) -> str:
    """The job's name in the queue: ``mae3d-<sweep>-<run>``."""
    return f"mae3d-{plan.spec.name}-{run.name}"


def slurm_parameters(opts: JobOptions, name: str) -> dict[str, Any]:
    """Keyword arguments of ``submitit.SlurmExecutor.update_parameters`` for one run's job.

    Args:
        opts: the job options.
        name: the job name (see :func:`job_name`).

    Returns:
        Parameters in submitit's SLURM names (``partition``, ``time``, ``gpus_per_node``, ...);
        options left unset are left out, so the cluster's defaults apply.
    """
    params: dict[str, Any] = {
        "job_name": name,
        "time": int(opts.timeout_min),
        "nodes": 1,
        "ntasks_per_node": 1,
        "additional_parameters": dict(opts.slurm_options),
        "setup": list(opts.setup),
    }
    if opts.gpus_per_run:
        params["gpus_per_node"] = opts.gpus_per_run
    if opts.slurm_partition:
        params["partition"] = opts.slurm_partition
    if opts.cpus_per_run:
        params["cpus_per_task"] = opts.cpus_per_run
    if opts.mem_gb:
        params["mem"] = f"{max(1, round(opts.mem_gb * 1024))}M"
    return params


def sbatch_script(opts: JobOptions, name: str, folder: Path) -> str:
    """The ``sbatch`` script submitit writes for a run's job, without submitting anything.

    This is what ``mae3d sweep --executor slurm --dry-run`` prints; the command line at its end
    is submitit's (it unpickles :func:`~toolkit.sweep.execute.attempt_run` and its arguments).
    """
    import shlex
    import sys

    from submitit.slurm.slurm import _make_sbatch_string

    python = shlex.quote(sys.executable)
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **slurm_parameters(opts, name))


class JobHandle(Protocol):
    """A launched attempt: inline (already finished) or a submitit job."""

    def done(self) -> bool:
        """Whether the attempt has ended (successfully or not)."""
        ...

    def cancel(self) -> None:
        """Ask the job to stop (Ctrl-C in the sweep process)."""
        ...

    def describe(self) -> str:
        """Job id, state and log file, for an attempt that ended without recording an outcome."""
        ...


class _Finished:
    """The handle of an inline attempt (it ran to its end inside ``submit``)."""

    def done(self) -> bool:
        return True

    def cancel(self) -> None:
        return None

    def describe(self) -> str:
        return "inline run"


class _SubmititHandle:
    def __init__(self, job: Any, on_end: Callable[[], None]) -> None:
        self.job = job
        self._on_end = on_end
        self._ended = False

    def done(self) -> bool:
        ended = bool(self.job.done())
        if ended and not self._ended:
            self._ended = True
            self._on_end()
        return ended

    def cancel(self) -> None:
        self.job.cancel(check=False)

    def describe(self) -> str:
        return f"job {self.job.job_id} ended as {self.job.state}; log: {self.job.paths.stderr}"


class Launcher:
    """Launches attempts of runs with one executor and waits for them.

    Args:
        opts: the job options.
        folder: where submitit writes its job files (``SWEEP_DIR/jobs``).
    """

    def __init__(self, opts: JobOptions, folder: Path) -> None:
        self.opts = opts
        self.folder = Path(folder)
        self._executor: Any = None
        if opts.executor == "slurm":
            import shutil

            if shutil.which("sbatch") is None or shutil.which("srun") is None:
                raise ConfigError(
                    "--executor slurm: no sbatch/srun on this machine; run the sweep on a SLURM "
                    "login node (--dry-run prints the sbatch script of a job)"
                )
        cap = opts.cap or 1
        self._free_gpus = list(range(cap * opts.gpus_per_run))

    @property
    def inline(self) -> bool:
        """Attempts run inside this process."""
        return self.opts.executor == "inline"

    def _submitit(self) -> Any:
        if self._executor is None:
            import submitit

            self.folder.mkdir(parents=True, exist_ok=True)
            if self.opts.executor == "local":
                ex: Any = submitit.LocalExecutor(folder=self.folder)
                ex.update_parameters(timeout_min=self.opts.timeout_min)
                if self.opts.setup:
                    ex.update_parameters(setup=list(self.opts.setup))
            else:
                ex = submitit.SlurmExecutor(folder=self.folder)
            self._executor = ex
        return self._executor

    def submit(self, plan: SweepPlan, run: Run, run_one: RunExecutor, number: int) -> JobHandle:
        """Start attempt ``number`` of ``run`` (inline: run it to its end now)."""
        if self.inline:
            attempt_run(plan, run, run_one, number)
            return _Finished()
        ex = self._submitit()
        gpus: list[int] = []
        if self.opts.executor == "local":
            n = self.opts.gpus_per_run
            gpus, self._free_gpus = self._free_gpus[:n], self._free_gpus[n:]
            ex.update_parameters(gpus_per_node=n, visible_gpus=tuple(gpus))
        else:
            ex.update_parameters(**slurm_parameters(self.opts, job_name(plan, run)))
        job = ex.submit(attempt_run, plan, run, run_one, number)

        def release() -> None:
            self._free_gpus.extend(gpus)

        return _SubmititHandle(job, release)

    def wait(self, jobs: Sequence[JobHandle]) -> list[JobHandle]:
        """Block until at least one of ``jobs`` has ended; return those that have."""
        while True:
            ended = [j for j in jobs if j.done()]
            if ended or not jobs:
                return ended
            time.sleep(self.opts.poll_interval)


__all__ = [
    "EXECUTORS",
    "JobHandle",
    "JobOptions",
    "Launcher",
    "job_name",
    "sbatch_script",
    "slurm_parameters",
]
