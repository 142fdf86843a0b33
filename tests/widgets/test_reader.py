"""The npe2 NIfTI reader: label maps vs images, File > Open's lookup, and napari's picture.

The napari test opens a left-anterior-superior marker volume stored LAS (so the reader has to use
the affine) and asserts where each marker lands in axial, coronal and sagittal screenshots, then
opens the real MNI152 template and saves its three planes for a person to look at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_orientation import (
    CUT_AXIS,
    MARKER_SHAPE,
    MARKERS,
    assert_markers_land,
    marker_labels,
)
from tests.widgets.conftest import needs_display, phantom, tissue_labels
from toolkit.data.io import save_volume
from toolkit.errors import DataError
from toolkit.orientation import AXIS_LABELS, from_display
from widgets.reader import get_reader, read_nifti
from widgets.slices import LABEL_COLOURS

SPACING = (1.0, 1.2, 1.5)
ORIGIN = (-10.0, -14.0, -20.0)


def _save_las(array: np.ndarray, path: Path, dtype: type | None = None) -> Path:
    """Write a RAS array as a LAS file (first axis stored right-to-left), same world position."""
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = ORIGIN
    affine[0, 3] = ORIGIN[0] + (array.shape[0] - 1) * SPACING[0]
    return save_volume(array[::-1], affine, path, dtype=dtype)


def test_reader_tells_label_maps_from_images(tmp_path: Path) -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    files = {
        "image": save_volume(phantom(), affine, tmp_path / "t1.nii.gz"),
        "by dtype": save_volume(tissue_labels(), affine, tmp_path / "tissue.nii", dtype=np.uint8),
        "by _seg": save_volume(tissue_labels() * 1.0, affine, tmp_path / "c0_seg.nii.gz"),
        "by labelsTr": save_volume(
            tissue_labels() * 1.0, affine, tmp_path / "labelsTr" / "c0.nii.gz"
        ),
        "many integers": save_volume(
            np.arange(np.prod(tissue_labels().shape)).reshape(tissue_labels().shape),
            affine,
            tmp_path / "counts.nii.gz",
            dtype=np.int32,
        ),
    }
    kinds = {}
    for what, path in files.items():
        reader = get_reader(str(path))
        assert reader is not None
        ((data, kwargs, kind),) = reader(str(path))
        kinds[what] = kind
        assert kwargs["axis_labels"] == AXIS_LABELS and kwargs["scale"] == (2.0, 2.0, 2.0)
        assert kwargs["metadata"]["role"] == "input"
    assert kinds == {
        "image": "image",
        "by dtype": "labels",
        "by _seg": "labels",
        "by labelsTr": "labels",
        "many integers": "image",
    }
    ((labels, kw, _),) = read_nifti(files["by _seg"])
    assert np.array_equal(from_display(labels), tissue_labels()) and kw["opacity"] == 0.5
    assert get_reader(str(tmp_path / "photo.png")) is None


def test_reader_rejects_a_corrupt_file_with_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="broken.nii.gz: not a readable NIfTI"):
        read_nifti(str(bad))


def test_file_open_finds_the_reader(tmp_path: Path) -> None:
    """File > Open asks napari's ``_npe2.get_readers`` which plugins can read the path."""
    pytest.importorskip("napari")
    from napari.plugins._npe2 import get_readers
    from npe2 import PluginManager

    PluginManager.instance().discover()  # what napari does at start-up
    path = save_volume(phantom(), np.eye(4), tmp_path / "head.nii.gz")
    assert "mae3d-toolkit" in get_readers(str(path))  # what the Open dialog offers
    commands = [r.command for r in PluginManager.instance().iter_compatible_readers([str(path)])]
    assert "mae3d-toolkit.get_reader" in commands


def _marker_pixels(shot: np.ndarray) -> dict[str, np.ndarray]:
    """Marker pixels (by label colour) inside the drawn volume's box (non-black pixels)."""
    drawn = shot.max(-1) > 20
    rows, cols = np.nonzero(drawn)
    box = shot[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(int)
    return {
        side: (np.abs(box - LABEL_COLOURS[value - 1]).max(-1) < 30)
        for value, (side, _) in MARKERS.items()
    }


def _extent(shot: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(shot.max(-1) > 20)
    return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))


@pytest.mark.napari
@needs_display
def test_napari_opens_nifti_upright_in_every_plane(
    make_viewer: Any, shots: Any, tmp_path: Path
) -> None:
    from qtpy.QtWidgets import QApplication

    from toolkit.data.mni import mni152_paths
    from widgets.napari_views import show_plane

    labels = marker_labels()
    box_path = _save_las(np.full(MARKER_SHAPE, 0.3, np.float32), tmp_path / "box.nii.gz")
    marker_path = _save_las(labels, tmp_path / "markers.nii.gz", dtype=np.int16)
    viewer = make_viewer(show=True)
    viewer.open(str(box_path), plugin="mae3d-toolkit")
    viewer.open(str(marker_path), plugin="mae3d-toolkit")
    box, markers = viewer.layers
    assert type(box).__name__ == "Image" and type(markers).__name__ == "Labels"
    box.contrast_limits = (0.0, 1.0)
    markers.opacity = 1.0  # exact label colours on screen
    assert tuple(viewer.dims.axis_labels) == AXIS_LABELS
    QApplication.processEvents()
    for plane, order in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        show_plane(viewer, plane)  # type: ignore[arg-type]
        axis = CUT_AXIS[plane]
        n = MARKER_SHAPE[axis]
        viewer.dims.set_current_step(order, n - 1 - n // 2)  # the RAS mid-slice
        assert 0 <= viewer.dims.current_step[order] < n  # the slider counts slices from 0
        QApplication.processEvents()
        shot = shots(viewer, f"markers_{plane}")
        assert_markers_land(plane, _marker_pixels(shot), "napari")
        # physical aspect: rows and columns scaled by their spacing
        rows_axis, cols_axis = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}[plane]
        h, w = _extent(shot)
        expected = (MARKER_SHAPE[rows_axis] * SPACING[rows_axis]) / (
            MARKER_SHAPE[cols_axis] * SPACING[cols_axis]
        )
        assert h / w == pytest.approx(expected, rel=0.1)

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(Exception, match="broken.nii.gz"):
        viewer.open(str(bad), plugin="mae3d-toolkit")

    # The real brain, for a person to look at: three upright planes.
    viewer.layers.clear()
    viewer.open(str(mni152_paths()["t1"]), plugin="mae3d-toolkit")
    for plane in ("axial", "coronal", "sagittal"):
        show_plane(viewer, plane)  # type: ignore[arg-type]
        QApplication.processEvents()
        assert shots(viewer, f"mni152_{plane}").std() > 0
