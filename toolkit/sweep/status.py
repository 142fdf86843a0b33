"""Where a sweep stands: run states, ``status.csv``, ``failures.csv`` and ``report.md``.

A run's state is read from its folder only (``done.json``, ``attempts.jsonl``), so every executor
(inline, local subprocesses, SLURM jobs) reports the same way and a rerun knows what is left:

* ``done``: ``done.json`` exists;
* ``failed``: the last attempt raised (or its job ended without recording an outcome, e.g.
  killed);
* ``started``: the last attempt was interrupted (Ctrl-C, a STOP file, a cancelled job);
* ``pending``: never attempted; ``blocked`` (in the tables only): its pretraining run failed.

``report.md`` lists every run with its state and, for each fine-tuning run, the command that opens
it in napari (``mae3d view RUN_DIR --manifest M --evaluate``).
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ConfigError, ToolkitError
from toolkit.sweep.layout import (
    CONFIG_FILE,
    FAILURES_FILE,
    REPORT_FILE,
    STATUS_FILE,
    read_attempts,
    read_done,
    write_atomic,
)
from toolkit.sweep.plan import Run, SweepPlan

#: Columns of ``status.csv`` and ``failures.csv``.
STATUS_COLUMNS = (
    "run",
    "kind",
    "arm",
    "dataset",
    "seed",
    "state",
    "attempts",
    "wall_s",
    "error",
    "view",
)


def run_state(plan: SweepPlan, run: Run) -> str:
    """``done``, ``failed`` (last attempt raised), ``started`` (interrupted) or ``pending``."""
    run_dir = plan.run_dir(run)
    if read_done(run_dir) is not None:
        return "done"
    attempts = read_attempts(run_dir)
    if attempts:
        return "failed" if attempts[-1].get("outcome") == "failed" else "started"
    return "pending"


def check_existing_configs(plan: SweepPlan) -> None:
    """Refuse to continue in a folder whose runs were made from a different spec.

    Raises:
        ConfigError: a run folder's ``config.yaml`` differs from the planned config (the message
            names the run and the first differing fields).
    """
    from toolkit.config import from_dict

    for run in plan.runs:
        path = plan.run_dir(run) / CONFIG_FILE
        if not path.is_file():
            continue
        try:
            saved = from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path)).to_dict()
        except (yaml.YAMLError, ToolkitError):
            raise ConfigError(f"{path}: unreadable run config; delete the run folder") from None
        diffs = _diff(saved, run.config.to_dict())
        if diffs:
            raise ConfigError(
                f"{plan.run_dir(run)}: made with another config than this spec "
                f"({'; '.join(diffs[:3])}); use a new sweep folder or delete this run"
            )


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def view_command(plan: SweepPlan, run: Run) -> str:
    """The command that opens a fine-tuning run in napari (``""`` for a pretraining run).

    Sweeps score their runs without writing predictions (thousands of label maps nobody opens),
    so the command asks ``mae3d view`` to make them on first use (``--evaluate``; a second view
    finds them).

    Example:
        ``mae3d view sweeps/x/ft_d1_pt_base_seed0 --manifest /data/d1.yaml --evaluate``
    """
    if run.kind != "finetune" or run.manifest is None:
        return ""
    return (
        f"mae3d view {shlex.quote(str(plan.run_dir(run)))} "
        f"--manifest {shlex.quote(str(run.manifest))} --evaluate"
    )


def status_rows(plan: SweepPlan, blocked: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per run (columns :data:`STATUS_COLUMNS`), read from the run folders.

    Args:
        plan: the expanded sweep.
        blocked: run name -> reason, for runs not started because a dependency failed.
    """
    blocked = dict(blocked or {})
    rows = []
    for run in plan.runs:
        attempts = read_attempts(plan.run_dir(run))
        state = run_state(plan, run)
        error = next((a.get("error", "") for a in reversed(attempts) if a.get("error")), "")
        if state != "done" and run.name in blocked:
            state, error = "blocked", blocked[run.name]
        rows.append(
            {
                "run": run.name,
                "kind": run.kind,
                "arm": run.arm,
                "dataset": run.dataset or "",
                "seed": "" if run.seed is None else run.seed,
                "state": state,
                "attempts": len(attempts),
                "wall_s": round(sum(float(a.get("wall_s", 0.0)) for a in attempts), 3),
                "error": "" if state == "done" else error,
                "view": view_command(plan, run),
            }
        )
    return rows


def _csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(STATUS_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _markdown(plan: SweepPlan, rows: Sequence[Mapping[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    lines = [
        f"# Sweep {plan.spec.name}",
        "",
        f"{len(rows)} runs: {summary}. Folder: `{plan.out_dir}`. Rerun the same `mae3d sweep` "
        "command to continue; failed runs are retried, interrupted ones resume.",
        "",
        "| run | kind | state | attempts | wall_s | open in napari |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        view = f"`{row['view']}`" if row["view"] else ""
        lines.append(
            f"| {row['run']} | {row['kind']} | {row['state']} | {row['attempts']} | "
            f"{float(row['wall_s']):.1f} | {view} |"
        )
    problems = [r for r in rows if r["state"] in ("failed", "blocked")]
    if problems:
        lines += ["", "## Failed and blocked runs", ""]
        lines += [f"- **{r['run']}** ({r['state']}): {r['error']}" for r in problems]
    return "\n".join(lines) + "\n"


def write_status(plan: SweepPlan, blocked: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``status.csv`` (every run), ``failures.csv`` (failed and blocked runs), ``report.md``.

    Args:
        plan: the expanded sweep.
        blocked: run name -> reason, for runs not started because a dependency failed.

    Returns:
        The paths of the two tables (``report.md`` is written next to them).
    """
    rows = status_rows(plan, blocked)
    status, failures = plan.out_dir / STATUS_FILE, plan.out_dir / FAILURES_FILE
    write_atomic(status, _csv(rows))
    write_atomic(failures, _csv([r for r in rows if r["state"] in ("failed", "blocked")]))
    write_atomic(plan.out_dir / REPORT_FILE, _markdown(plan, rows))
    return status, failures


@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes:
        out_dir: the sweep folder.
        completed: runs finished by this call.
        skipped: runs already finished before it.
        failed: runs that raised on every attempt of this call.
        blocked: fine-tuning runs not started because their pretraining run failed.
        stopped: the sweep stopped early (a STOP file); rerun to continue.
        wall_s: wall time of this call.
        results: the results table, if written.
    """

    out_dir: Path
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    stopped: bool = False
    wall_s: float = 0.0
    results: Path | None = None

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = [
            f"sweep {self.out_dir}: {len(self.completed)} run(s) finished now, "
            f"{len(self.skipped)} already done, {len(self.failed)} failed, "
            f"{len(self.blocked)} blocked ({self.wall_s:.1f} s)"
        ]
        if self.stopped:
            out.append("stopped early; run the same command again to continue")
        if self.failed or self.blocked:
            out.append(f"see {self.out_dir / FAILURES_FILE}")
        out.append(f"every run's state: {self.out_dir / REPORT_FILE}")
        if self.results is not None:
            out.append(f"results: {self.results}")
        return out


__all__ = [
    "STATUS_COLUMNS",
    "SweepReport",
    "check_existing_configs",
    "run_state",
    "status_rows",
    "view_command",
    "write_status",
]
