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
from widgets.napari_views import (
    ERROR_COLOURS,
    infill_layer,
    open_run,
    reconstruction_layers,
    segmentation_layers,
)

RECON_NAMES = ["input", "mask", "masked input", "reconstruction", "error"]


def test_reconstruction_layer_data() -> None:
    image, mask = phantom(), block_mask()
    rec = image + 0.2 * (1 - mask)
    layers = reconstruction_layers(image, mask, rec, spacing_mm=(1.0, 1.0, 2.0))
    assert [kw["name"] for _, kw, _ in layers] == RECON_NAMES
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "image", "image"]
    data = {kw["name"]: d for d, kw, _ in layers}
    assert np.array_equal(data["mask"], (mask == 0).astype(np.uint8))  # labels mark masked blocks
    assert np.array_equal(data["masked input"], image * mask)
    assert np.allclose(data["error"], 0.2 * (1 - mask))
    assert all(kw["scale"] == (1.0, 1.0, 2.0) for _, kw, _ in layers)
    with pytest.raises(ValueError, match="one \\(D, H, W\\) shape"):
        reconstruction_layers(image, mask[:-1], rec)


def test_segmentation_layer_data() -> None:
    image = phantom()
    ref = tissue_labels()
    pred = ref.copy()
    pred[ref == 3] = 2
    layers = segmentation_layers(image, ref, pred, label_names={0: "bg", 2: "gm", 3: "wm"})
    assert [kw["name"] for _, kw, _ in layers] == ["image", "reference", "prediction", "errors"]
    errors = layers[3][0]
    assert set(np.unique(errors[ref == 3])) == {3}  # wrong class where wm became gm
    assert (errors[ref != 3] == 0).all()
    assert layers[1][1]["features"]["name"] == ["bg", "1", "gm", "wm"]
    assert layers[1][1]["colormap"] == layers[2][1]["colormap"]  # one colour per class
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
    # Show the slab with the false negatives (through the middle of the W axis).
    viewer.dims.set_point(2, 16 * 2.0)
    shot = shots(viewer, "segmentation_2d")
    assert shot.std() > 0
    _assert_each_layer_shows(viewer, shots)
    for layer in ("reference", "prediction"):
        viewer.layers[layer].visible = False
    errors_only = shots(viewer, "segmentation_errors_2d")
    fn = np.array([int(ERROR_COLOURS[2][i : i + 2], 16) for i in (1, 3, 5)])
    # False negatives (blue) are drawn: pixels close to the FN colour blended over the image.
    assert (errors_only[..., 2].astype(int) - errors_only[..., 0] > 60).any()
    assert fn[2] > fn[0]
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
    assert np.array_equal(data, infill_volume(snap)) and data.shape == snap.input.shape
