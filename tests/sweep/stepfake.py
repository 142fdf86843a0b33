"""A fake run that takes time, resumes like training does and logs when it ran.

It is shipped to submitit's subprocesses, so it is a module-level class that imports little.
Each run "trains" ``run.steps`` steps of ``step_s`` seconds, saving its step counter after each
one (``fake_step.txt``, the stand-in for the ``latest`` checkpoint) and appending one JSON line per
event to ``fake_log.jsonl``: ``start`` (with the step it resumes from and its pid), ``step`` and
``end``, each with a wall-clock time. Fine-tuning runs write ``evaluation/metrics.csv`` with Dice
values that depend only on the run's configuration, so any executor gives the same results.
"""

from __future__ import annotations

import csv
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

from toolkit.sweep import Run, SweepPlan

LOG = "fake_log.jsonl"
STEP = "fake_step.txt"


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a fake run, oldest first."""
    path = run_dir / LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _log(run_dir: Path, event: str, **extra: Any) -> None:
    with (run_dir / LOG).open("a") as fh:
        fh.write(json.dumps({"event": event, "t": time.time(), "pid": os.getpid(), **extra}) + "\n")


class StepFake:
    """``executor(plan, run)`` that sleeps through its steps and can be killed and resumed.

    Args:
        step_s: seconds per step.
    """

    def __init__(self, step_s: float = 0.3) -> None:
        self.step_s = step_s

    def __call__(self, plan: SweepPlan, run: Run) -> dict[str, Any]:
        run_dir = plan.run_dir(run)
        if run.pretrain_run is not None:
            assert (plan.run_dir(run.pretrain_run) / "done.json").is_file(), "dependency not done"
        counter = run_dir / STEP
        step = int(counter.read_text()) if counter.is_file() else 0
        _log(run_dir, "start", from_step=step)
        while step < run.steps:
            time.sleep(self.step_s)
            step += 1
            tmp = counter.with_suffix(".tmp")
            tmp.write_text(str(step))
            tmp.replace(counter)
            _log(run_dir, "step", step=step)
        if run.kind == "finetune":
            base = (zlib.crc32(f"{run.config_label}/{run.dataset}".encode()) % 1000) / 2000
            (run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
            with (run_dir / "evaluation" / "metrics.csv").open("w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["case", "subject", "label", "label_name", "dice", "hd95_mm"])
                for c in range(2):
                    for label, name in ((1, "csf"), (2, "gm"), (3, "wm")):
                        dice = 0.4 + base + 0.01 * label
                        writer.writerow([f"c{c}", f"s{c}", label, name, dice, 3.0])
        _log(run_dir, "end")
        return {"train_time_s": 1.5, "num_params": 1234}
