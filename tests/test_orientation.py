"""The one orientation rule: display arrays, world geometry and where anatomy lands on screen.

The marker volume and :func:`assert_markers_land` are shared with the view tests (PNG figures in
``tests/test_visualize.py``, the notebook viewer in ``tests/widgets/test_slices.py``, napari in
``tests/widgets/test_reader.py``): every view must put the same marker on the same side.
"""

from __future__ import annotations

import numpy as np
import pytest

from toolkit.orientation import (
    NAPARI_ORDER,
    PLANE_OF_RAS_AXIS,
    display_geometry,
    display_slice,
    from_display,
    ras_geometry,
    screen_sides,
    to_display,
)

#: (R, A, S) shape of the marker volume; its mid-slices (shape // 2) cut every marker.
MARKER_SHAPE = (20, 24, 28)
#: label value -> (anatomical side, RAS centre voxel of its 3^3 cube)
MARKERS: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("superior", (10, 12, 24)),
    2: ("anterior", (10, 20, 14)),
    3: ("left", (3, 12, 14)),
}
#: plane -> {marker side: where it must land on screen} (radiological, superior/anterior up)
EXPECTED: dict[str, dict[str, str]] = {
    "axial": {"anterior": "top", "left": "right"},
    "coronal": {"superior": "top", "left": "right"},
    "sagittal": {"superior": "top", "anterior": "left"},
}
#: the RAS axis each plane cuts
CUT_AXIS = {plane: PLANE_OF_RAS_AXIS.index(plane) for plane in EXPECTED}


def marker_labels() -> np.ndarray:
    """(R, A, S) int16 volume with a 3^3 cube per :data:`MARKERS` entry (value = its key)."""
    vol = np.zeros(MARKER_SHAPE, np.int16)
    for value, (_, (r, a, s)) in MARKERS.items():
        vol[r - 1 : r + 2, a - 1 : a + 2, s - 1 : s + 2] = value
    return vol


def centroid_fraction(on: np.ndarray) -> tuple[float, float]:
    """(row, column) of the centre of ``on``'s True pixels as fractions of its height and width."""
    rows, cols = np.nonzero(on)
    assert rows.size, "marker not drawn"
    return ((rows.mean() + 0.5) / on.shape[0], (cols.mean() + 0.5) / on.shape[1])


def assert_lands(frac: tuple[float, float], where: str, what: str) -> None:
    """``frac`` (row, column) lies on side ``where`` (top/left/right), centred across it."""
    row, col = frac
    ok = {
        "top": row < 0.35 and abs(col - 0.5) < 0.15,
        "left": col < 0.35 and abs(row - 0.5) < 0.15,
        "right": col > 0.65 and abs(row - 0.5) < 0.15,
    }[where]
    assert ok, f"{what}: expected {where}, drawn at row {row:.2f}, column {col:.2f} of the view"


def assert_markers_land(plane: str, marker_pixels: dict[str, np.ndarray], view: str) -> None:
    """For each marker expected on ``plane``, its pixels (a boolean screen image) sit there."""
    for side, where in EXPECTED[plane].items():
        assert_lands(centroid_fraction(marker_pixels[side]), where, f"{view} {plane} {side}")


# --------------------------------------------------------------------------------------------------


def test_display_array_round_trip_and_axis_order() -> None:
    ras = np.random.default_rng(0).random((3, 4, 5, 6))  # a leading channel axis is kept
    disp = to_display(ras)
    assert disp.shape == (3, 6, 5, 4)
    assert np.array_equal(from_display(disp), ras)
    # display index 0 is the superior, anterior, right end of each axis
    assert disp[0, 0, 0, 0] == ras[0, -1, -1, -1]
    with pytest.raises(ValueError, match="volume"):
        to_display(np.zeros((4, 4)))


def test_world_geometry_is_negated_ras_millimetres() -> None:
    shape, spacing, origin = (4, 5, 6), (1.0, 1.5, 2.0), (-90.0, -120.0, -60.0)
    geo = display_geometry(shape, spacing, origin)
    scale, translate = np.array(geo["scale"]), np.array(geo["translate"])
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    disp_shape = to_display(np.zeros(shape)).shape
    rng = np.random.default_rng(1)
    for _ in range(5):
        ijk = np.array([rng.integers(n) for n in shape])
        ras_mm = (affine @ [*ijk, 1.0])[:3]
        # where that voxel lands in the display array, and its napari world coordinate there
        marker = np.zeros(shape, bool)
        marker[tuple(ijk)] = True
        d_idx = np.argwhere(to_display(marker))[0]
        world = translate + scale * d_idx
        assert world == pytest.approx(-ras_mm[[2, 1, 0]])
    back_spacing, back_origin = ras_geometry(disp_shape, scale, translate)
    assert back_spacing == pytest.approx(spacing) and back_origin == pytest.approx(origin)


@pytest.mark.parametrize("plane", list(EXPECTED))
def test_display_slices_put_each_marker_on_its_side(plane: str) -> None:
    labels = marker_labels()
    axis = CUT_AXIS[plane]
    sl = display_slice(labels, axis, labels.shape[axis] // 2)
    pixels = {side: sl == value for value, (side, _) in MARKERS.items()}
    assert_markers_land(plane, pixels, "display_slice")
    top, _, left, right = screen_sides(axis)
    assert {"axial": ("A", "R", "L"), "coronal": ("S", "R", "L"), "sagittal": ("S", "A", "P")}[
        plane
    ] == (top, left, right)


def test_napari_order_slices_the_display_array_like_display_slice() -> None:
    """The plane napari draws for NAPARI_ORDER[plane] is display_slice's picture of it."""
    labels = marker_labels()
    disp = to_display(labels)
    for plane, order in NAPARI_ORDER.items():
        axis = CUT_AXIS[plane]
        k = order[0]  # the sliced display axis; napari draws the other two in order
        index = labels.shape[axis] - 1 - labels.shape[axis] // 2
        drawn = np.take(disp, index, axis=k)
        if order[1] > order[2]:
            drawn = drawn.T
        assert np.array_equal(drawn, display_slice(labels, axis, labels.shape[axis] // 2))
    with pytest.raises(IndexError):
        display_slice(labels, 0, labels.shape[0])
