"""Metric files of a run folder and their truncation on resume."""

from __future__ import annotations

import csv
from pathlib import Path

from toolkit.engine.logging import LOSS_PNG, METRICS_CSV, MetricWriter, read_history


def test_writes_csv_jsonl_tensorboard_and_png(tmp_path: Path) -> None:
    w = MetricWriter(tmp_path)
    w.log(1, {"loss": 1.0, "lr": 0.1})
    w.log(2, {"loss": float("nan")})
    w.log(2, {"val_loss": 0.5})
    assert w.save_loss_curve() == tmp_path / LOSS_PNG
    w.close()

    history = read_history(tmp_path)
    assert history[0]["loss"] == 1.0 and history[1]["loss"] is None  # NaN kept as a gap
    with open(tmp_path / METRICS_CSV) as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["metric"]) for r in rows] == [
        ("1", "loss"),
        ("1", "lr"),
        ("2", "loss"),
        ("2", "val_loss"),
    ]
    assert float(rows[3]["value"]) == 0.5
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    assert (tmp_path / LOSS_PNG).read_bytes()[:4] == b"\x89PNG"


def test_resume_drops_records_after_the_checkpoint(tmp_path: Path) -> None:
    w = MetricWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        w.log(step, {"loss": float(step)})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "lo')  # a line torn by a kill

    w = MetricWriter(tmp_path, resume_step=2, tensorboard=False)
    assert [r["step"] for r in w.history()] == [1, 2]
    w.log(3, {"loss": 30.0})
    w.close()
    assert [r["loss"] for r in read_history(tmp_path)] == [1.0, 2.0, 30.0]
    with open(tmp_path / METRICS_CSV) as fh:
        assert [r["step"] for r in csv.DictReader(fh)] == ["1", "2", "3"]


def test_disabled_writer_writes_nothing(tmp_path: Path) -> None:
    w = MetricWriter(tmp_path / "run", enabled=False)
    w.log(1, {"loss": 1.0})
    assert w.save_loss_curve() is None
    assert not (tmp_path / "run").exists()
