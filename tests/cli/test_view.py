"""``mae3d view``: figures when headless, a clear error without a run or without the front-ends;
a fine-tuning run's predictions found wherever its evaluation went, or made with ``--evaluate``."""

from __future__ import annotations

import builtins
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.widgets.conftest import (
    finetune_run,  # noqa: F401 (the fixture, shared with the widget tests)
    make_pretrain_run,
    needs_display,
    write_finetune_checkpoint,
)
from toolkit.cli import main
from toolkit.config import save_config
from toolkit.evaluate import EVALUATIONS_FILE, evaluations, find_predictions, record_evaluation


def run_ok(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0


def test_png_figures_of_a_pretraining_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_pretrain_run(tmp_path)
    run_ok(["view", str(run), "--png", str(tmp_path / "figs")])
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "loss.png",
        "reconstruction.png",
    ]
    assert "wrote" in capsys.readouterr().out


def test_headless_falls_back_to_figures_in_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAE3D_VIEWER", "inline")
    run = make_pretrain_run(tmp_path)
    run_ok(["view", str(run), "--step", "10"])
    assert (run / "figures" / "reconstruction.png").is_file()
    assert "no display for napari" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["view", str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "missing: no such run folder" in capsys.readouterr().err
    run = make_pretrain_run(tmp_path)
    with pytest.raises(SystemExit):
        main(["view", str(run), "--step", "7", "--png", str(tmp_path / "f")])
    assert "no snapshot at step 7" in capsys.readouterr().err


def test_without_the_front_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_widgets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("widgets"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    for key in [k for k in sys.modules if k.startswith("widgets")]:
        monkeypatch.delitem(sys.modules, key)
    with pytest.raises(SystemExit):
        main(["view", str(make_pretrain_run(tmp_path))])
    assert "pip install 'mae3d-toolkit[gui]'" in capsys.readouterr().err


@pytest.mark.napari
@needs_display
def test_opens_napari_with_a_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    napari = pytest.importorskip("napari")
    monkeypatch.setenv("MAE3D_VIEWER", "auto")
    shown: list[str] = []

    def close_instead_of_blocking() -> None:
        viewer = napari.current_viewer()
        shown.extend(layer.name for layer in viewer.layers)
        viewer.close()

    monkeypatch.setattr(napari, "run", close_instead_of_blocking)
    run_ok(["view", str(make_pretrain_run(tmp_path))])
    assert shown == ["input", "mask", "masked input", "reconstruction", "error", "in-fill baseline"]


def test_predictions_are_found_where_the_evaluation_recorded_them(
    finetune_run: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    run, manifest = finetune_run
    # Evaluated into a folder outside the run (as the demo once did), with the run recording it.
    elsewhere = tmp_path / "study" / "evaluation" / "ft_seed0" / "toy"
    elsewhere.parent.mkdir(parents=True)
    shutil.move(run / "evaluation" / "toy", elsewhere)
    record_evaluation(
        run, elsewhere, "toy", manifest=manifest, checkpoint="best", split=None,
        predictions=True, cases=2,
    )  # fmt: skip
    assert find_predictions(run, "toy") == (elsewhere / "predictions").resolve()
    run_ok(["view", str(run), "--manifest", str(manifest), "--png", str(tmp_path / "figs")])
    assert (tmp_path / "figs" / "segmentation.png").is_file()
    # an evaluation without label maps (as sweeps write) does not hide the one with them
    record_evaluation(
        run, run / "evaluation", "toy", manifest=manifest, checkpoint="best", split=None,
        predictions=False, cases=2,
    )  # fmt: skip
    assert find_predictions(run, "toy") == (elsewhere / "predictions").resolve()
    assert [e["predictions"] for e in evaluations(run)] == [True, False]


def test_without_predictions_the_error_names_evaluate(
    finetune_run: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run, manifest = finetune_run
    shutil.rmtree(run / "evaluation")
    with pytest.raises(SystemExit) as exc:
        main(["view", str(run), "--png", str(tmp_path / "figs")])  # the run's own manifest
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no predictions for dataset 'toy'" in err
    assert f"mae3d view {run} --manifest {manifest} --evaluate" in err
    assert not (tmp_path / "figs").exists()
    with pytest.raises(SystemExit):
        main(["view", str(make_pretrain_run(tmp_path)), "--evaluate"])
    assert "--evaluate is for fine-tuning runs" in capsys.readouterr().err


def test_evaluate_flag_predicts_then_shows(
    finetune_run: tuple[Path, Path],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from toolkit.config import load_config

    run, manifest = finetune_run
    shutil.rmtree(run / "evaluation")
    ckpt = write_finetune_checkpoint(run / "checkpoints" / "best.pt")
    cfg = load_config(run / "config.yaml")
    save_config(
        cfg.replace({"data.target_spacing_mm": [2.0, 2.0, 2.0], "runtime.device": "cpu"}),
        run / "config.yaml",
    )
    figs = tmp_path / "figs"
    argv = ["view", str(run), "--manifest", str(manifest), "--evaluate", "--png", str(figs)]
    run_ok([*argv, "--case", "c1"])
    out = capsys.readouterr().out
    assert "evaluating (best checkpoint)" in out and "| ft_run | csf |" in out
    assert (figs / "segmentation.png").is_file() and ckpt.is_file()
    folder = find_predictions(run, "toy")
    assert folder == (run / "evaluation" / "toy" / "predictions").resolve()
    assert sorted(p.name for p in folder.iterdir()) == ["c0.nii.gz", "c1.nii.gz"]
    assert (run / EVALUATIONS_FILE).is_file()
    # a second view finds them: no second evaluation
    run_ok(argv)
    assert "evaluating" not in capsys.readouterr().out
