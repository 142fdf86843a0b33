"""The slice viewer: what it draws for given slider, toggle and opacity values."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from tests.widgets.conftest import block_mask, phantom, tissue_labels
from toolkit.data.io import save_volume
from widgets.slices import (
    LABEL_COLOURS,
    MASKED_COLOUR,
    Overlay,
    SliceViewer,
    as_volume,
    display_slice,
    render_slice,
    show_slices,
)


def test_render_slice_blends_labels_mask_and_heat_exactly() -> None:
    image = np.full((2, 3), 0.5, np.float32)
    labels = np.array([[0, 1, 2], [0, 0, 0]])
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    heat = np.array([[0, 0, 0], [0, 0, 2.0]])
    rgb = render_slice(
        image,
        [
            (Overlay("l", labels[None], "labels", 1.0), labels),
            (Overlay("m", mask[None], "mask", 1.0), mask),
            (Overlay("h", heat[None], "heat", 1.0, vmax=2.0), heat),
        ],
        window=(0.0, 1.0),
    )
    grey = round(0.5 * 255)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert rgb[0, 0].tolist() == [grey] * 3  # nothing drawn on it
    assert rgb[0, 1].tolist() == LABEL_COLOURS[0].astype(int).tolist()
    assert rgb[0, 2].tolist() == LABEL_COLOURS[1].astype(int).tolist()
    assert rgb[1, 0].tolist() == MASKED_COLOUR.astype(int).tolist()
    assert rgb[1, 1].tolist() == [grey] * 3  # zero heat is transparent
    assert rgb[1, 2].tolist() != [grey] * 3  # the top of the heat scale is opaque colour


def test_render_slice_zoom_repeats_whole_pixels() -> None:
    image = np.arange(6, dtype=np.float32).reshape(2, 3)
    rgb = render_slice(image, window=(0.0, 5.0), zoom=(2, 3))
    assert rgb.shape == (4, 9, 3)
    assert np.array_equal(rgb[::2, ::3], render_slice(image, window=(0.0, 5.0)))


def test_sliders_choose_the_slice_that_is_drawn() -> None:
    vol = phantom()
    viewer = SliceViewer(vol, window=(0.0, 2.0))
    viewer.sliders[2].value = 5
    expected = render_slice(display_slice(vol, 2, 5), window=(0.0, 2.0))
    drawn = viewer.rgb[2]
    zoom = (drawn.shape[0] // expected.shape[0], drawn.shape[1] // expected.shape[1])
    assert np.array_equal(drawn[:: zoom[0], :: zoom[1]], expected)
    assert viewer.position == (vol.shape[0] // 2, vol.shape[1] // 2, 5)
    assert f"voxel {viewer.position}" in viewer.info.value
    # The Image widget holds exactly that picture as PNG.
    png = (imread(io.BytesIO(viewer.images[2].value))[..., :3] * 255).round().astype(np.uint8)
    assert np.array_equal(png, drawn)


def test_overlay_toggle_and_opacity_change_the_picture() -> None:
    vol = phantom()
    lab = tissue_labels()
    viewer = SliceViewer(vol, [Overlay("tissue", lab, "labels", 0.8)])
    with_labels = viewer.rgb[0].copy()
    viewer.toggles["tissue"].value = False
    plain = viewer.rgb[0].copy()
    assert not np.array_equal(with_labels, plain)
    grey = plain.max(axis=-1) == plain.min(axis=-1)
    assert grey.all()  # without overlays every pixel is grey
    viewer.toggles["tissue"].value = True
    assert np.array_equal(viewer.rgb[0], with_labels)
    viewer.opacity.value = 0.0
    assert np.array_equal(viewer.rgb[0], plain)


def test_label_overlays_start_half_transparent() -> None:
    viewer = show_slices(phantom(), labels=tissue_labels())
    assert viewer.opacity.value == 0.5 and viewer.opacity.description == "label opacity"
    assert [o.opacity for o in viewer.visible_overlays()] == [0.5]
    assert [s.description for s in viewer.sliders] == ["sagittal", "coronal", "axial"]
    assert [s.min for s in viewer.sliders] == [0, 0, 0]  # slice index from 0


def test_inline_viewer_puts_markers_on_their_sides() -> None:
    """The slice viewer's pictures follow the orientation rule (as napari and the PNGs do)."""
    from tests.test_orientation import (
        CUT_AXIS,
        EXPECTED,
        MARKERS,
        assert_markers_land,
        marker_labels,
    )

    labels = marker_labels()
    box = np.full(labels.shape, 0.5, np.float32)
    viewer = SliceViewer(box, [Overlay("markers", labels, "labels", 1.0)], window=(0.0, 1.0))
    assert viewer.position == tuple(n // 2 for n in labels.shape)  # mid-slices cut the markers
    for plane in EXPECTED:
        rgb = viewer.rgb[CUT_AXIS[plane]]
        pixels = {
            side: (rgb == LABEL_COLOURS[value - 1].astype(np.uint8)).all(-1)
            for value, (side, _) in MARKERS.items()
        }
        assert_markers_land(plane, pixels, "inline viewer")


def test_spacing_sets_the_displayed_aspect() -> None:
    vol = np.ones((20, 20, 10), np.float32)
    viewer = SliceViewer(vol, spacing=(1.0, 1.0, 2.0))
    h, w, _ = viewer.rgb[0].shape  # axis-0 slice: W (2 mm) runs vertically, H (1 mm) across
    assert h == pytest.approx(w, rel=0.1)


def test_set_volume_keeps_the_view_and_checks_shapes() -> None:
    vol = phantom()
    viewer = show_slices(vol, mask=block_mask())
    viewer.sliders[0].value = 3
    viewer.set_volume(vol * 2, [Overlay("mask", np.ones_like(vol), "mask", 0.6)])
    assert viewer.position[0] == 3
    assert (viewer.rgb[0].max(-1) == viewer.rgb[0].min(-1)).all()  # all-visible mask: no tint
    with pytest.raises(ValueError, match="shape"):
        viewer.set_volume(np.zeros((4, 4, 4)))


def test_inputs_tensor_and_nifti(tmp_path) -> None:
    vol = phantom()
    assert as_volume(torch.from_numpy(vol)[None, None]).shape == vol.shape
    path = save_volume(vol, np.eye(4), tmp_path / "v.nii.gz")
    assert np.array_equal(as_volume(path), vol)
    with pytest.raises(ValueError, match="expected a \\(D, H, W\\)"):
        as_volume(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="differs from the image"):
        SliceViewer(vol, {"bad": np.zeros((3, 3, 3))})
    with pytest.raises(ValueError, match="unique"):
        SliceViewer(vol, [Overlay("a", vol), Overlay("a", vol)])
