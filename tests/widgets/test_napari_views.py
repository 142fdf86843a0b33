"""napari views: layer data without a display, then real viewers under Xvfb with screenshots.

The viewer tests are marked ``napari``; they run under pytest-xvfb (Xvfb installed, see .ci/run) or
on a real display, and are skipped with the reason otherwise (fixtures in conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.widgets.conftest import block_mask, needs_display, phantom, tissue_labels
from toolkit.orientation import AXIS_LABELS, from_display
from widgets.napari_views import (
    ERROR_COLOURS,
    ERROR_OPACITY,
    infill_layer,
    open_run,
    reconstruction_layers,
    segmentation_layers,
    show_plane,
)
from widgets.slices import LABEL_COLOURS, intensity_window

RECON_NAMES = ["input", "mask", "masked input", "reconstruction", "error"]


def test_reconstruction_layer_data() -> None:
    image, mask = phantom(), block_mask()
    rec = image + 0.2 * (1 - mask)
    layers = reconstruction_layers(
        image, mask, rec, spacing_mm=(1.0, 1.5, 2.0), origin_mm=(10.0, 20.0, 30.0)
    )
    assert [kw["name"] for _, kw, _ in layers] == RECON_NAMES
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "image", "image"]
    data = {kw["name"]: from_display(d) for d, kw, _ in layers}  # back to RAS
    assert np.array_equal(data["mask"], (mask == 0).astype(np.uint8))  # labels mark masked blocks
    assert np.allclose(data["error"], 0.2 * (1 - mask))
    # masked input: visible voxels keep the (windowed) image, masked ones sit above the window,
    # where the colour map is the masked colour, not black
    masked_kw = layers[2][1]
    lo, hi = intensity_window(image)
    assert masked_kw["contrast_limits"][0] == lo and masked_kw["contrast_limits"][1] > hi
    assert (data["masked input"][mask == 0] == masked_kw["contrast_limits"][1]).all()
    assert np.allclose(data["masked input"][mask == 1], np.clip(image, lo, hi)[mask == 1])
    # display axes are (S, A, R) reversed: scale (2, 1.5, 1); translate puts each voxel at -RAS mm
    for _, kw, _ in layers:
        assert kw["scale"] == (2.0, 1.5, 1.0)
        assert kw["axis_labels"] == ("axial (S→I)", "coronal (A→P)", "sagittal (R→L)")
    n = image.shape
    assert layers[0][1]["translate"] == pytest.approx(
        (-(30 + (n[2] - 1) * 2.0), -(20 + (n[1] - 1) * 1.5), -(10 + (n[0] - 1) * 1.0))
    )
    roles = [kw["metadata"]["role"] for _, kw, _ in layers]
    assert roles == ["input", "derived", "derived", "derived", "derived"]
    with pytest.raises(ValueError, match="one \\(D, H, W\\) shape"):
        reconstruction_layers(image, mask[:-1], rec)


def test_segmentation_layer_data() -> None:
    image = phantom()
    ref = tissue_labels()
    pred = ref.copy()
    pred[ref == 3] = 2
    layers = segmentation_layers(image, ref, pred, label_names={0: "bg", 2: "gm", 3: "wm"})
    assert [kw["name"] for _, kw, _ in layers] == ["image", "reference", "prediction", "errors"]
    errors = from_display(layers[3][0])
    assert set(np.unique(errors[ref == 3])) == {3}  # wrong class where wm became gm
    assert (errors[ref != 3] == 0).all()
    assert layers[1][1]["features"]["name"] == ["bg", "1", "gm", "wm"]
    assert layers[1][1]["colormap"] == layers[2][1]["colormap"]  # one colour per class
    assert layers[1][1]["opacity"] == layers[2][1]["opacity"] == 0.5  # the anatomy shows through
    assert layers[3][1]["opacity"] < 0.5
    # FP / FN / wrong-class colours are far from every label colour (CSF, GM, WM, ...).
    for hex_colour in ERROR_COLOURS.values():
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert np.linalg.norm(LABEL_COLOURS - rgb, axis=1).min() > 100
    no_ref = segmentation_layers(image, None, pred)
    assert [kw["name"] for _, kw, _ in no_ref] == ["image", "prediction"]


# --------------------------------------------------------------------------------------------------
# Real viewers


def _assert_each_layer_shows(viewer: Any, shots: Any) -> None:
    """Each layer drawn alone gives a non-blank canvas (an empty canvas is uniform)."""
    visible = {layer.name: layer.visible for layer in viewer.layers}
    for layer in viewer.layers:
        layer.visible = False
    assert shots(viewer, "", save=False).std() == 0  # nothing drawn: a blank canvas
    for layer in viewer.layers:
        layer.visible = True
        assert shots(viewer, "", save=False).std() > 0, f"layer {layer.name!r} draws nothing"
        layer.visible = False
    for layer in viewer.layers:
        layer.visible = visible[layer.name]


def _settle(viewer: Any) -> None:
    """Let Qt lay out the new window, then fit the data to the canvas it really has."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.reset_view()


@pytest.mark.napari
@needs_display
def test_reconstruction_view_2d_and_3d(make_viewer: Any, pretrain_run: Path, shots: Any) -> None:
    viewer = make_viewer(show=True)
    open_run(pretrain_run, viewer)
    _settle(viewer)
    assert [layer.name for layer in viewer.layers] == [*RECON_NAMES, "in-fill baseline"]
    assert viewer.canvas.grid.enabled
    assert all(layer.name_overlay.visible for layer in viewer.layers)  # titled panels
    assert viewer.layers.selection.active is viewer.layers["input"]  # not a derived layer
    assert tuple(viewer.dims.axis_labels) == AXIS_LABELS
    step, n = viewer.dims.current_step[0], viewer.layers["input"].data.shape[0]
    assert 0 <= step < n  # the slider counts slices from 0
    shot = shots(viewer, "reconstruction_2d")
    assert shot.std() > 0
    # The mask panel shows the masked-block colour somewhere (blue dominant over red).
    assert ((shot[..., 2].astype(int) - shot[..., 0]) > 30).any()
    _assert_each_layer_shows(viewer, shots)
    viewer.dims.ndisplay = 3
    shot3 = shots(viewer, "reconstruction_3d")
    assert shot3.std() > 0 and not np.array_equal(shot3, shot)
    _assert_each_layer_shows(viewer, shots)


@pytest.mark.napari
@needs_display
def test_segmentation_view_2d_and_3d(
    make_viewer: Any, finetune_run: tuple[Path, Path], shots: Any
) -> None:
    run, manifest = finetune_run
    viewer = make_viewer(show=True)
    open_run(run, viewer, manifest=manifest, case="c0")
    _settle(viewer)
    assert [layer.name for layer in viewer.layers] == ["image", "reference", "prediction", "errors"]
    assert viewer.layers.selection.active is viewer.layers["image"]  # an input, not "errors"
    assert viewer.layers["reference"].contour == 1  # outlines over the filled prediction
    # A coronal slice: the false-negative slab (S 14-18) is a band across the middle.
    show_plane(viewer, "coronal")
    shot = shots(viewer, "segmentation_2d")
    assert shot.std() > 0
    _assert_each_layer_shows(viewer, shots)
    viewer.layers["image"].visible = False
    for layer in ("reference", "prediction"):
        viewer.layers[layer].visible = False
    errors_only = shots(viewer, "segmentation_errors_2d").astype(float)
    fn = np.array([int(ERROR_COLOURS[2][i : i + 2], 16) for i in (1, 3, 5)])
    # False negatives are drawn in their colour at the errors' opacity (over a black canvas) ...
    on_fn = np.abs(errors_only - ERROR_OPACITY * fn).max(-1) < 12
    assert on_fn.sum() > 100
    # ... and do not hide the image: where they are drawn, the image still changes the picture.
    viewer.layers["image"].visible = True
    with_image = shots(viewer, "segmentation_errors_on_image_2d").astype(float)
    assert np.abs(with_image - errors_only)[on_fn].max(-1).mean() > 20
    viewer.dims.ndisplay = 3
    shot3 = shots(viewer, "segmentation_3d")
    assert shot3.std() > 0
    _assert_each_layer_shows(viewer, shots)


def test_infill_layer_of_a_snapshot(pretrain_run: Path) -> None:
    from widgets.inline import infill_volume
    from widgets.runs import load_snapshot

    snap = load_snapshot(pretrain_run)
    data, kw, kind = infill_layer(snap)
    assert kind == "image" and kw["name"] == "in-fill baseline"
    assert np.array_equal(from_display(data), infill_volume(snap))
    assert kw["metadata"]["role"] == "derived"
