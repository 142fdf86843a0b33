"""The headless fallback: backend choice and the matplotlib figures of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from tests.widgets.conftest import SHAPE, SPACING, block_mask, phantom
from widgets.inference import Reconstruction
from widgets.inline import (
    choose_backend,
    comparison_figure,
    has_display,
    infill_volume,
    run_figures,
    show_reconstructions,
    show_run,
)
from widgets.runs import load_snapshot


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAE3D_VIEWER", "inline")
    assert choose_backend() == "inline"
    assert choose_backend("napari") == "napari"  # an explicit argument wins
    monkeypatch.setenv("MAE3D_VIEWER", "auto")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert not has_display()
    assert choose_backend() == "inline"
    monkeypatch.setenv("DISPLAY", ":99")
    assert choose_backend() == "napari"
    with pytest.raises(ValueError, match="MAE3D_VIEWER"):
        choose_backend("qt")


def test_pretrain_run_figures(pretrain_run: Path) -> None:
    figures = run_figures(pretrain_run)
    assert list(figures) == ["loss", "reconstruction"]
    assert all(isinstance(f, Figure) for f in figures.values())
    assert "step 20" in figures["reconstruction"].texts[0].get_text()  # the latest snapshot
    recon = figures["reconstruction"]
    image_axes = [ax for ax in recon.axes if ax.images]
    assert len(image_axes) == 15  # 3 axes x 5 columns
    assert [ax.get_title() for ax in image_axes[:5]] == [
        "input",
        "masked input",
        "reconstruction",
        "in-fill baseline",
        "|error|",
    ]
    # the title carries the run's verdict (last validation, step 20: 0.3 vs 0.4)
    assert "MAE beats in-fill by 0.1" in recon.texts[0].get_text()
    # the in-fill panel is the in-fill of the snapshot's input and mask, not a copy of the input
    from toolkit.infill import infill

    snap = load_snapshot(pretrain_run)
    x = torch.from_numpy(snap.input)[None, None]
    expected = infill(x, torch.from_numpy(snap.mask)[None, None])[0, 0].numpy()
    assert np.allclose(infill_volume(snap), expected)
    assert not np.allclose(infill_volume(snap), snap.input)
    # the loss figure has the in-fill as a reference line
    labels = [line.get_label() for line in figures["loss"].axes[0].lines]
    assert "in-fill baseline 0.4" in labels


def test_finetune_run_figures(finetune_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = finetune_run
    figures = show_run(run, backend="inline", case="c1")
    assert len(figures) == 1  # no metrics in this run folder: only the segmentation figure
    fig = figures[0]
    assert "case c1" in fig.texts[0].get_text()
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "reference", "prediction", "errors"]
    fig.savefig(tmp_path / "seg.png")
    assert (tmp_path / "seg.png").stat().st_size > 0


def _reconstruction(ratio: float) -> Reconstruction:
    image, mask = phantom(), block_mask()
    rec = image + 0.1
    return Reconstruction(
        input=image,
        mask=mask,
        reconstruction=rec,
        error=np.abs(rec - image),
        masked_fraction=float((mask == 0).mean()),
        spacing_mm=SPACING,
        origin_mm=(0.0, 0.0, 0.0),
        settings={"ratio": ratio, "block_size": 4, "seed": 0, "patch_size": SHAPE},
    )


def test_comparison_figure_has_a_row_per_setting() -> None:
    fig = show_reconstructions([_reconstruction(0.6), _reconstruction(0.9)], backend="inline")
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 6
    labels = [ax.get_ylabel() for ax in images if ax.get_ylabel()]
    assert labels[0].startswith("ratio 0.60") and labels[1].startswith("ratio 0.90")
    with pytest.raises(ValueError, match="nothing to compare"):
        comparison_figure([])
