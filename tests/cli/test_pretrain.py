"""``mae3d pretrain`` ends with the in-fill verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import toolkit.pretrain
from toolkit.cli import main
from toolkit.engine.logging import MetricWriter


def _fake_pretrain(metrics: dict[str, float]) -> Any:
    def run(cfg: Any, out: Path, **kwargs: Any) -> Path:
        writer = MetricWriter(out, tensorboard=False)
        writer.log(2, metrics)
        writer.close()
        return Path(out)

    return run


@pytest.mark.parametrize(
    ("metrics", "last_line"),
    [
        (
            {"val_loss": 0.391, "infill_loss": 0.417, "infill_margin": 0.026},
            "val_loss 0.391 vs in-fill 0.417: MAE beats in-fill by 0.026",
        ),
        (
            {"val_loss": 0.439, "infill_loss": 0.417, "infill_margin": -0.022},
            "val_loss 0.439 vs in-fill 0.417: MAE has NOT beaten in-fill yet (behind by 0.022)",
        ),
        ({"loss": 1.0}, "in-fill check unavailable: "),
    ],
)
def test_last_line_is_the_infill_verdict(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    metrics: dict[str, float],
    last_line: str,
) -> None:
    monkeypatch.setattr(toolkit.pretrain, "pretrain", _fake_pretrain(metrics))
    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "tiny", "--out", str(tmp_path / "run"), "--no-progress"])
    assert exc.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("pretraining run: ")
    assert lines[-1].startswith(last_line)
