"""Figures return matplotlib Figures and save as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from toolkit.visualize import plot_loss_curves, plot_reconstruction, save_figure


def test_loss_curves_draw_train_val_and_lr(tmp_path: Path) -> None:
    history = [
        {"step": 10, "loss": 1.0, "lr": 0.01},
        {"step": 20, "loss": 0.5, "lr": 0.005},
        {"step": 20, "val_loss": 0.7},
        {"step": 30, "loss": None, "lr": 0.001},  # a NaN step logged as a gap
    ]
    fig = plot_loss_curves(history, title="run")
    assert isinstance(fig, Figure)
    ax_loss, ax_lr = fig.axes
    labels = [line.get_label() for line in ax_loss.lines]
    assert labels == ["loss", "val_loss"]
    assert list(ax_loss.lines[0].get_xdata()) == [10.0, 20.0]
    assert ax_loss.get_yscale() == "log"
    assert list(ax_lr.lines[0].get_ydata()) == [0.01, 0.005, 0.001]
    path = save_figure(fig, tmp_path / "loss.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*tmp*"))


def test_loss_curves_accept_a_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    fig = plot_loss_curves(pd.DataFrame({"step": [1, 2], "loss": [2.0, -1.0]}))
    assert fig.axes[0].get_yscale() == "linear"  # a negative value rules out a log axis


def test_reconstruction_panel_has_three_views_of_four_columns() -> None:
    image = torch.randn(1, 1, 8, 10, 12)
    mask = torch.ones(1, 1, 8, 10, 12)
    mask[..., :6] = 0
    fig = plot_reconstruction(image, mask, image * 0.5, title="step 5")
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 12
    titles = [ax.get_title() for ax in image_axes[:4]]
    assert titles == ["input", "masked input", "reconstruction", "|error|"]
    masked = [ax.images[0].get_array() for ax in image_axes[1::4]]
    assert np.ma.count_masked(masked[1]) > 0  # coronal: masked voxels drawn in the "bad" colour
    assert image_axes[0].images[0].get_array().shape == (10, 8)  # axial: A rows, R columns


def test_reconstruction_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="must match"):
        plot_reconstruction(np.zeros((4, 4, 4)), np.ones((4, 4, 4)), np.zeros((4, 4, 5)))


def test_loss_curves_draw_the_infill_baseline_as_a_reference_line() -> None:
    history = [
        {"step": 10, "loss": 1.0},
        {"step": 10, "val_loss": 0.5, "infill_loss": 0.417, "infill_margin": -0.083},
        {"step": 20, "val_loss": 0.39, "infill_loss": 0.417, "infill_margin": 0.027},
    ]
    ax_loss = plot_loss_curves(history).axes[0]
    lines = {line.get_label(): line for line in ax_loss.lines}
    assert set(lines) == {"loss", "val_loss", "in-fill baseline 0.417"}
    assert list(lines["in-fill baseline 0.417"].get_ydata()) == [0.417, 0.417]
    assert len(plot_loss_curves(history[:1]).axes[0].lines) == 1  # no baseline, no line


def test_reconstruction_with_the_infill_column() -> None:
    image = torch.randn(1, 1, 8, 10, 12)
    mask = torch.ones(1, 1, 8, 10, 12)
    fig = plot_reconstruction(image, mask, image, infill=image * 0.9)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in image_axes[:5]] == [
        "input",
        "masked input",
        "reconstruction",
        "in-fill baseline",
        "|error|",
    ]
    with pytest.raises(ValueError, match="infill"):
        plot_reconstruction(image, mask, image, infill=np.zeros((4, 4, 4)))


def test_png_reconstruction_figure_puts_markers_on_their_sides(tmp_path: Path) -> None:
    """The saved PNG, read back: each marker lands where the orientation rule says."""
    from matplotlib.image import imread

    from tests.test_orientation import EXPECTED, MARKERS, assert_markers_land, marker_labels
    from toolkit.visualize import VIEWS

    labels = marker_labels()
    pixels: dict[str, dict[str, np.ndarray]] = {plane: {} for plane in EXPECTED}
    for value, (side, _) in MARKERS.items():
        # one marker at a time on a dim box: the bright pixels of the input panel are that marker
        image = np.where(labels == value, 1.0, 0.2).astype(np.float32)
        fig = plot_reconstruction(image, np.ones_like(image), image)
        path = save_figure(fig, tmp_path / f"marker_{side}.png", dpi=int(fig.dpi))
        png = imread(path)[..., :3]
        height = png.shape[0]
        inputs = [ax for ax in fig.axes if ax.images][::4]  # first column, one row per plane
        for (plane, _), ax in zip(VIEWS, inputs, strict=True):
            box = ax.get_window_extent()
            panel = png[
                round(height - box.y1) : round(height - box.y0), round(box.x0) : round(box.x1)
            ]
            grey = np.ptp(panel, axis=-1) < 0.05  # the side letters are yellow, not grey
            pixels[plane][side] = grey & (panel.mean(-1) > 0.5)
    for plane in EXPECTED:
        assert_markers_land(plane, pixels[plane], "PNG")
