"""``mae3d view``: figures when headless, a clear error without a run or without the front-ends."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.widgets.conftest import make_pretrain_run, needs_display
from toolkit.cli import main


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
