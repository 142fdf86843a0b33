"""The sweep folder on disk: file names, run-folder names and the readers of a run's state.

This is the one interface through which other code (``toolkit.results``, the widgets) reads a
sweep folder. It imports nothing else from the sweep package, so ``toolkit.results`` can depend on
it while the sweep runner depends on ``toolkit.results`` (an import-linter contract in
``pyproject.toml`` keeps it that way)::

    SWEEP_DIR/spec.yaml  plan.json  status.csv  failures.csv  report.md  results.csv
    SWEEP_DIR/data/<name>/      synthetic data sets        SWEEP_DIR/cache/<manifest>/  caches
    SWEEP_DIR/jobs/             submitit's job files (pickles, stdout/stderr logs)
    SWEEP_DIR/<run>/config.yaml  attempts.jsonl  done.json  evaluation/metrics.csv

Example:
    >>> format_value((48, 48, 32)), format_value(0.6), format_value(True)
    ('48x48x32', '0.6', 'true')
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import DataError

SPEC_FILE = "spec.yaml"
PLAN_FILE = "plan.json"
STATUS_FILE = "status.csv"
FAILURES_FILE = "failures.csv"
REPORT_FILE = "report.md"
RESULTS_FILE = "results.csv"
DATA_DIR = "data"
JOBS_DIR = "jobs"
CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"
ATTEMPTS_FILE = "attempts.jsonl"
EVAL_DIR = "evaluation"
EVAL_METRICS = "metrics.csv"


def format_value(value: Any) -> str:
    """A value as it appears in run names: ``0.6``, ``true``, ``48x48x48``, ``s3d``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same float
    if isinstance(value, list | tuple):
        return "x".join(format_value(v) for v in value)
    text = str(value)
    if "/" in text or os.sep in text:
        text = Path(text).stem
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text) or "empty"


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_plan(sweep_dir: Path) -> dict[str, Any]:
    """The ``plan.json`` of a sweep folder (sweep name, axes, every run's metadata).

    Raises:
        DataError: the file is missing, not JSON, or not a sweep plan.
    """
    path = Path(sweep_dir) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; is {sweep_dir} a sweep folder?") from None
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(plan, dict) or "runs" not in plan:
        raise DataError(f"{path}: not a sweep plan (no 'runs')")
    return plan


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The ``done.json`` of a finished run, or None (missing or unreadable = not finished)."""
    try:
        data = json.loads((Path(run_dir) / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded attempt of a run (oldest first); a torn last line is ignored."""
    path = Path(run_dir) / ATTEMPTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def append_attempt(run_dir: Path, record: Mapping[str, Any]) -> None:
    """Add one line to ``attempts.jsonl`` (a line torn by a crash is skipped when read)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ATTEMPTS_FILE).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


__all__ = [
    "ATTEMPTS_FILE",
    "CONFIG_FILE",
    "DATA_DIR",
    "DONE_FILE",
    "EVAL_DIR",
    "EVAL_METRICS",
    "FAILURES_FILE",
    "JOBS_DIR",
    "PLAN_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SPEC_FILE",
    "STATUS_FILE",
    "append_attempt",
    "format_value",
    "read_attempts",
    "read_done",
    "read_plan",
    "write_atomic",
]
