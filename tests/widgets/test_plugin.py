"""The napari plugin: its jobs without a display, then the dock widgets from the manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.widgets.conftest import (
    SHAPE,
    SPACING,
    needs_display,
    phantom,
    write_finetune_checkpoint,
    write_pretrain_checkpoint,
)
from tests.widgets.test_napari_views import RECON_NAMES
from toolkit.data.io import save_volume
from toolkit.orientation import from_display
from widgets.plugin import reconstruction_job, segmentation_job

MANIFEST = Path(__file__).parents[2] / "widgets" / "napari.yaml"


def test_reconstruction_job_on_layer_data(tmp_path: Path) -> None:
    ckpt = write_pretrain_checkpoint(tmp_path / "mae.pt")
    layers, status = reconstruction_job(
        ckpt, phantom(), scale=SPACING, translate=(0.0, 0.0, 0.0), ratio=0.5, block_size=8, seed=0
    )
    assert [kw["name"] for _, kw, _ in layers] == RECON_NAMES
    assert all(kw["translate"] == layers[0][1]["translate"] for _, kw, _ in layers)
    assert status.startswith("masked 50.0 % of 8^3 blocks")


def test_jobs_open_a_nifti_file_as_a_layer(tmp_path: Path) -> None:
    path = save_volume(phantom(), np.diag([*SPACING, 1.0]), tmp_path / "head.nii.gz")
    layers, _ = segmentation_job(write_finetune_checkpoint(tmp_path / "ft.pt"), str(path))
    (image, image_kw, kind), (labels, labels_kw, labels_kind) = layers
    assert (kind, labels_kind) == ("image", "labels")
    assert image_kw["name"] == "head" and from_display(image).shape == SHAPE
    assert labels.shape == image.shape  # both display arrays on the file's grid
    assert labels_kw["scale"] == pytest.approx(SPACING)
    assert labels_kw["translate"] == image_kw["translate"]
    assert labels_kw["opacity"] == 0.5 and labels_kw["metadata"]["role"] == "derived"
    assert labels_kw["features"]["name"] == ["background", "csf", "gm", "wm"]


def test_manifest_names_the_widgets() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert manifest.name == "mae3d-toolkit"
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "MAE reconstruction",
        "Segmentation",
    ]


def _wait(widget: Any, timeout_s: float = 120.0) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.monotonic()
    while widget.worker is not None and not widget.run_button.enabled:
        QApplication.processEvents()
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"worker still running after {timeout_s} s: {widget.status.value}")
        time.sleep(0.05)
    QApplication.processEvents()


@pytest.mark.napari
@needs_display
def test_dock_widgets_add_layers(make_viewer: Any, shots: Any, tmp_path: Path) -> None:
    from qtpy.QtWidgets import QApplication

    viewer = make_viewer(show=True)
    viewer.add_image(phantom(), name="head", scale=SPACING)
    _, recon = viewer.window.add_plugin_dock_widget("mae3d-toolkit", "MAE reconstruction")
    assert recon.layer.value is viewer.layers["head"]  # follows the active image layer
    assert recon.run() is None and "checkpoint" in recon.status.value
    recon.checkpoint.value = ckpt = write_pretrain_checkpoint(tmp_path / "mae.pt")
    trained_block = torch.load(ckpt, weights_only=True)["config"]["mask"]["block_size"]
    assert trained_block != 16  # differs from the widget's default, so the next line can fail
    assert recon.block.value == trained_block  # the checkpoint's own mask settings
    recon.ratio.value = 0.5
    recon.run()
    _wait(recon)
    assert recon.status.value.startswith("masked 50.0 %"), recon.status.value
    assert [layer.name for layer in viewer.layers] == ["head", *RECON_NAMES]
    first_mask = viewer.layers["mask"].data.copy()
    recon.seed.value = 1
    recon.run()
    _wait(recon)
    assert [layer.name for layer in viewer.layers] == ["head", *RECON_NAMES]  # replaced in place
    assert not np.array_equal(viewer.layers["mask"].data, first_mask)

    _, seg = viewer.window.add_plugin_dock_widget("mae3d-toolkit", "Segmentation")
    viewer.layers.selection.active = viewer.layers["head"]
    seg.checkpoint.value = write_finetune_checkpoint(tmp_path / "ft.pt")
    seg.run()
    _wait(seg)
    assert seg.status.value.startswith("voxels per label"), seg.status.value
    prediction = viewer.layers["head prediction"]
    assert prediction.data.shape == viewer.layers["head"].data.shape  # on the image's grid
    # The image choice never offers a derived layer, and never follows the active one to it.
    viewer.layers.selection.active = viewer.layers["error"]
    _, seg2 = viewer.window.add_plugin_dock_widget("mae3d-toolkit", "Segmentation", tabify=True)
    assert seg2.layer.value is viewer.layers["head"]
    assert [layer.name for layer in seg2.layer.choices if layer] == ["head", "input"]

    for layer in viewer.layers:
        layer.visible = layer.name in ("reconstruction", "head prediction")
    QApplication.processEvents()
    viewer.reset_view()
    assert shots(viewer, "plugin_2d").std() > 0
    viewer.dims.ndisplay = 3
    assert shots(viewer, "plugin_3d").std() > 0
