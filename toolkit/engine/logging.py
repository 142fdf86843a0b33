"""Metric logging for a run folder: CSV, JSONL, TensorBoard and a loss-curve PNG.

One :class:`MetricWriter` per run writes every record three ways:

* ``metrics.jsonl`` — one JSON object per log event (``{"step": 50, "loss": 0.81, "lr": ...}``);
  the source the loss-curve figure and notebooks read back.
* ``metrics.csv`` — the same values in tidy long form, one row per metric
  (``step,metric,value,time_s``), so rows with different metrics (training vs validation) share one
  header and ``pandas.read_csv`` gives a table ready for plotting.
* ``tb/`` — TensorBoard scalars (``torch.utils.tensorboard``).

On resume the writer drops every record after the resumed step, so a run killed between two
checkpoints does not leave duplicate steps behind.

Only the main process writes; other DDP ranks get a writer with ``enabled=False``.

Example:
    >>> import tempfile
    >>> w = MetricWriter(tempfile.mkdtemp())
    >>> w.log(10, {"loss": 0.5, "lr": 0.01})
    >>> [r["loss"] for r in w.history()]
    [0.5]
    >>> w.close()
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]

METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
LOSS_PNG = "loss.png"
CSV_HEADER = ("step", "metric", "value", "time_s")


def _json_value(v: float) -> float | None:
    # JSON has no NaN/inf; None keeps the line valid and the gap visible.
    return v if math.isfinite(v) else None


def read_history(run_dir: PathLike) -> list[dict[str, Any]]:
    """All records of ``RUN_DIR/metrics.jsonl`` (empty if none); skips a torn last line."""
    path = Path(run_dir) / METRICS_JSONL
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; everything before it is intact
    return records


class MetricWriter:
    """Writes scalar metrics of a run to CSV, JSONL and TensorBoard.

    Args:
        run_dir: the run folder.
        enabled: False on non-main DDP ranks (every call becomes a no-op).
        resume_step: when resuming, records with ``step > resume_step`` are dropped first.
        tensorboard: also write TensorBoard event files.
    """

    #: Minimum seconds between loss-curve redraws that are not forced.
    redraw_interval_s: float = 15.0

    def __init__(
        self,
        run_dir: PathLike,
        *,
        enabled: bool = True,
        resume_step: int | None = None,
        tensorboard: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._start = time.perf_counter()
        self._records: list[dict[str, Any]] = []
        self._tb: Any = None
        self._last_draw = -math.inf
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for name in (METRICS_CSV, METRICS_JSONL):
                (self.run_dir / name).unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
            self._records = read_history(self.run_dir)
            if self._records:
                # Keep the time axis continuous across restarts.
                self._start -= float(self._records[-1].get("time_s", 0.0))
        if not (self.run_dir / METRICS_CSV).exists():
            with open(self.run_dir / METRICS_CSV, "w", newline="") as fh:
                csv.writer(fh).writerow(CSV_HEADER)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(self.run_dir / TENSORBOARD_DIR),
                purge_step=None if resume_step is None else resume_step + 1,
            )

    def _truncate(self, step: int) -> None:
        kept = [r for r in read_history(self.run_dir) if int(r.get("step", 0)) <= step]
        _write_atomic(self.run_dir / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in kept))
        csv_path = self.run_dir / METRICS_CSV
        if csv_path.is_file():
            with open(csv_path, newline="") as fh:
                rows = [r for r in csv.reader(fh) if r]
            steps = [_csv_step(r) for r in rows[1:]]
            body = [r for r, s in zip(rows[1:], steps, strict=True) if s is not None and s <= step]
            lines: list[Any] = [CSV_HEADER, *body]
            tmp = csv_path.with_name(csv_path.name + ".tmp")
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows(lines)
            tmp.replace(csv_path)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Append one record: ``values`` are scalars measured at optimiser ``step``."""
        if not self.enabled:
            return
        elapsed = round(time.perf_counter() - self._start, 3)
        clean = {k: float(v) for k, v in values.items()}
        record: dict[str, Any] = {"step": int(step), "time_s": elapsed}
        record.update({k: _json_value(v) for k, v in clean.items()})
        self._records.append(record)
        with open(self.run_dir / METRICS_JSONL, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        with open(self.run_dir / METRICS_CSV, "a", newline="") as fh:
            writer = csv.writer(fh)
            for k, v in clean.items():
                writer.writerow((int(step), k, repr(v), elapsed))
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def history(self) -> list[dict[str, Any]]:
        """Every record logged so far in this run folder (including before a resume)."""
        return list(self._records)

    def save_loss_curve(self, *, force: bool = True) -> Path | None:
        """Redraw ``RUN_DIR/loss.png`` from the history (atomically).

        Args:
            force: redraw now; otherwise only if :attr:`redraw_interval_s` has passed since the
                last drawing (rendering costs ~0.2 s, too much for every log line of a fast run).

        Returns:
            The PNG path, or None when nothing was drawn.
        """
        if not self.enabled or not self._records:
            return None
        now = time.perf_counter()
        if not force and now - self._last_draw < self.redraw_interval_s:
            return None
        from toolkit.visualize import plot_loss_curves, save_figure

        fig = plot_loss_curves(self._records)
        self._last_draw = now
        return save_figure(fig, self.run_dir / LOSS_PNG)

    def flush(self) -> None:
        """Flush TensorBoard events to disk."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _csv_step(row: list[str]) -> int | None:
    try:
        return int(row[0])
    except (ValueError, IndexError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = [
    "CSV_HEADER",
    "LOSS_PNG",
    "METRICS_CSV",
    "METRICS_JSONL",
    "TENSORBOARD_DIR",
    "MetricWriter",
    "read_history",
]
