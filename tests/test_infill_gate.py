"""The in-fill gate: verdict of a run folder, the CLI sentence, and scoring any checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.config import load_config
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.engine.logging import MetricWriter
from toolkit.engine.runtime import Runtime
from toolkit.errors import ConfigError, DataError
from toolkit.infill_gate import compare_with_infill, infill_verdict, score_infill, verdict_line
from toolkit.pretrain import PretrainTask


def _write_run(run: Path, rows: list[tuple[int, float, float]]) -> Path:
    writer = MetricWriter(run, tensorboard=False)
    writer.log(1, {"loss": 1.0})
    for step, val, fill in rows:
        writer.log(step, {"val_loss": val, "infill_loss": fill, "infill_margin": fill - val})
    writer.close()
    return run


def test_verdict_of_a_run_folder(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "a", [(10, 0.50, 0.417), (20, 0.39, 0.417), (30, 0.40, 0.417)])
    v = infill_verdict(run)
    assert v["step"] == 30 and v["val_loss"] == 0.40 and v["beats_infill"] is True
    assert v["infill_margin"] == pytest.approx(0.017)
    assert v["best_step"] == 20 and v["best_margin"] == pytest.approx(0.027)
    assert v["message"] == "val_loss 0.4 vs in-fill 0.417: MAE beats in-fill by 0.017"

    behind = infill_verdict(_write_run(tmp_path / "b", [(10, 0.439, 0.417)]))
    assert behind["beats_infill"] is False
    assert behind["message"] == (
        "val_loss 0.439 vs in-fill 0.417: MAE has NOT beaten in-fill yet (behind by 0.022)"
    )
    assert verdict_line({"val_loss": 0.417, "infill_loss": 0.417}).endswith("(behind by 0)")


def test_verdict_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="metrics.jsonl: no metrics"):
        infill_verdict(tmp_path)
    old = MetricWriter(tmp_path / "old", tensorboard=False)
    old.log(5, {"val_loss": 0.3})  # a run from before the gate
    old.close()
    with pytest.raises(DataError, match="no validation with infill_loss.*score_infill"):
        infill_verdict(tmp_path / "old")


def _setup() -> tuple[PretrainTask, torch.nn.Module, ArrayPatchSource]:
    from toolkit.models import build_mae

    cfg = load_config(
        "tiny",
        {
            "runtime.device": "cpu",
            "data.patch_size": [16, 16, 16],
            "pretrain.batch_size": 2,
            "pretrain.val_batches": 1,
        },
    )
    rng = np.random.default_rng(0)
    source = ArrayPatchSource(
        {k: rng.normal(size=(1, 18, 18, 18)).astype(np.float32) for k in ("a", "b")}
    )
    torch.manual_seed(0)
    return PretrainTask(cfg, source, ["a"], ["b"]), build_mae(cfg), source


def test_score_infill_of_a_model_and_of_a_checkpoint(tmp_path: Path) -> None:
    task, model, source = _setup()
    with torch.no_grad():
        expected = task.validate(model.eval(), Runtime(device=torch.device("cpu")))
    scored = score_infill(model, cfg=task.cfg, source=source, val_ids=["b"])
    for key in ("val_loss", "infill_loss", "infill_margin"):
        assert scored[key] == pytest.approx(expected[key], rel=1e-6)
    assert scored["num_crops"] == 2 and scored["step"] == -1

    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    save_checkpoint(ckpt, {**task.model_state(model), "config": task.cfg.to_dict(), "step": 7})
    from_disk = score_infill(tmp_path / "run", source=source, val_ids=["b"])
    assert from_disk["step"] == 7
    assert from_disk["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
    # more crops: a different (larger) validation set, the same baseline definition
    more = score_infill(ckpt, source=source, val_ids=["b"], overrides={"pretrain.val_batches": 2})
    assert more["num_crops"] == 4

    with pytest.raises(ConfigError, match="cfg"):
        score_infill(model)
    with pytest.raises(ConfigError, match="val_ids"):
        score_infill(model, cfg=task.cfg, source=source)
    with pytest.raises(DataError, match="checkpoint not found"):
        score_infill(tmp_path / "nothing", source=source, val_ids=["b"])


def test_compare_one_reconstruction_with_the_infill() -> None:
    from toolkit.infill import infill

    x = torch.randn(6, 6, 6, generator=torch.Generator().manual_seed(0))
    m = torch.ones(6, 6, 6)
    m[:3] = 0
    fill = infill(x[None, None], m[None, None])[0, 0]
    # the in-fill itself ties; a reconstruction that is exact wins by the whole in-fill loss
    tie = compare_with_infill(x.numpy(), m.numpy(), fill.numpy())
    assert tie["infill_margin"] == pytest.approx(0.0, abs=1e-7) and tie["infill_loss"] > 0
    exact = compare_with_infill(x, m, x)
    assert exact["val_loss"] == 0 and exact["infill_margin"] == pytest.approx(tie["infill_loss"])
