"""The one rule for putting a RAS volume on a screen: radiological, superior and anterior up.

Every view of the toolkit (napari layers, the notebook slice viewer, the PNG figures and the
reports) draws a volume through this module, so a brain looks the same everywhere:

* **axial** slices: anterior at the top, the patient's **left on the screen's right**
  (radiological convention, as in ITK-SNAP and most PACS);
* **coronal** slices: superior at the top, the patient's left on the screen's right;
* **sagittal** slices: superior at the top, anterior on the screen's left.

Volumes are RAS+ in memory (:mod:`toolkit.data.io` with ``canonical=True`` and the preprocessing
both reorient to it): array axis 0 runs towards the patient's Right, axis 1 towards Anterior, axis
2 towards Superior; an array is (D, H, W) = (R, A, S).

napari draws the last two array axes as rows (top to bottom) and columns (left to right) and has a
slider for the first. One array can show all three planes upright only with its axes reordered and
flipped: :func:`to_display` turns a RAS array into the *display array* (S→I, A→P, R→L), i.e.
index 0 of each axis is the superior, anterior and right end. Slicing display axis 0 then shows an
axial slice, display axis 1 a coronal one and display axis 2 a sagittal one, each upright as above
(napari's ``dims.order`` picks the plane: :data:`NAPARI_ORDER`). The 2-D figures take their slices
from the same display array (:func:`display_slice`), so napari, notebooks and PNGs cannot disagree.

World geometry of the display array (napari ``scale``/``translate``): display axis ``k`` has the
spacing of its RAS axis and a world coordinate that is the RAS millimetre coordinate negated
(inferior, posterior, left are positive), so layers of different crops of one scan overlay exactly.

Example:
    >>> import numpy as np
    >>> ras = np.zeros((4, 5, 6)); ras[0, 0, 5] = 1  # left, posterior, superior corner
    >>> disp = to_display(ras)
    >>> disp.shape, np.argwhere(disp)[0].tolist()  # top slice, bottom row, right column
    ((6, 5, 4), [0, 4, 3])
    >>> bool((from_display(disp) == ras).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "AXIS_LABELS",
    "CONVENTION",
    "DISPLAY_FROM_RAS",
    "NAPARI_ORDER",
    "PLANE_OF_RAS_AXIS",
    "Plane",
    "display_geometry",
    "display_slice",
    "from_display",
    "plane_label",
    "ras_geometry",
    "screen_sides",
    "slice_axes",
    "to_display",
]

Plane = Literal["axial", "coronal", "sagittal"]

#: The convention, named once for titles and docs.
CONVENTION = "radiological (patient's left on the screen's right; superior and anterior up)"
#: Display axis k is RAS axis DISPLAY_FROM_RAS[k], reversed (S→I, A→P, R→L).
DISPLAY_FROM_RAS: tuple[int, int, int] = (2, 1, 0)
#: napari slider labels of the display axes: the plane each one steps through and its direction.
AXIS_LABELS: tuple[str, str, str] = ("axial (S→I)", "coronal (A→P)", "sagittal (R→L)")
#: The plane a slice across RAS axis 0, 1, 2 shows.
PLANE_OF_RAS_AXIS: tuple[Plane, Plane, Plane] = ("sagittal", "coronal", "axial")
#: napari ``viewer.dims.order`` that shows each plane of a display array (last two are drawn).
NAPARI_ORDER: dict[Plane, tuple[int, int, int]] = {
    "axial": (0, 1, 2),
    "coronal": (1, 0, 2),
    "sagittal": (2, 0, 1),
}
# Screen (top, bottom, left, right) anatomical sides of each plane, for letters on figures.
_SIDES: dict[Plane, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


def to_display(ras: np.ndarray) -> np.ndarray:
    """The display array of a RAS volume (a view, no copy).

    Args:
        ras: (D, H, W) = (R, A, S) array, or (..., D, H, W) with leading axes kept.

    Returns:
        (S, A, R)-ordered array with every axis reversed: index 0 is superior, anterior, right.
    """
    if ras.ndim < 3:
        raise ValueError(f"expected a (..., D, H, W) volume, got shape {ras.shape}")
    lead = ras.ndim - 3
    axes = (*range(lead), *(lead + a for a in DISPLAY_FROM_RAS))
    return np.transpose(ras, axes)[..., ::-1, ::-1, ::-1]


def from_display(display: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_display`: the (..., R, A, S) array of a display array (a view)."""
    # The permutation (2, 1, 0) and the flips are their own inverses.
    return to_display(display)


def display_geometry(
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict[str, tuple]:
    """napari layer geometry of the display array of a RAS volume.

    Args:
        shape: (3,) RAS array shape (D, H, W).
        spacing_mm: (3,) RAS voxel size.
        origin_mm: (3,) RAS millimetre coordinate of voxel (0, 0, 0) (the affine's translation).

    Returns:
        ``scale``, ``translate`` and ``axis_labels`` keyword arguments for ``viewer.add_image`` /
        ``add_labels``: world coordinate of display axis k = minus the RAS coordinate of its RAS
        axis, in mm. (No napari ``units``: a layer without them, e.g. one a user adds, would then
        make napari warn about inconsistent units on every redraw.)
    """
    if not len(shape) == len(spacing_mm) == len(origin_mm) == 3:
        raise ValueError(
            f"shape {tuple(shape)}, spacing {tuple(spacing_mm)} and origin {tuple(origin_mm)} "
            "must have 3 values each"
        )
    scale, translate = [], []
    for a in DISPLAY_FROM_RAS:
        s = float(spacing_mm[a])
        # display index 0 is RAS index n-1, whose coordinate is origin + (n-1)s; world = -coord.
        scale.append(s)
        translate.append(-(float(origin_mm[a]) + (int(shape[a]) - 1) * s))
    return {
        "scale": tuple(scale),
        "translate": tuple(translate),
        "axis_labels": AXIS_LABELS,
    }


def ras_geometry(
    display_shape: Sequence[int], scale: Sequence[float], translate: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Inverse of :func:`display_geometry`: ``(spacing_mm, origin_mm)`` in RAS of a display layer.

    Args:
        display_shape: (3,) shape of the display array.
        scale: (3,) napari scale of the display array.
        translate: (3,) napari translate of the display array.
    """
    spacing = [0.0, 0.0, 0.0]
    origin = [0.0, 0.0, 0.0]
    for k, a in enumerate(DISPLAY_FROM_RAS):
        s = float(scale[k])
        spacing[a] = s
        origin[a] = -float(translate[k]) - (int(display_shape[k]) - 1) * s
    return (spacing[0], spacing[1], spacing[2]), (origin[0], origin[1], origin[2])


def slice_axes(axis: int) -> tuple[int, int]:
    """``(row axis, column axis)`` in RAS of the slice across RAS ``axis`` (for pixel aspect)."""
    rows_cols = {0: (2, 1), 1: (2, 0), 2: (1, 0)}
    if axis not in rows_cols:
        raise ValueError(f"axis: must be 0, 1 or 2, got {axis!r}")
    return rows_cols[axis]


def display_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` across RAS ``axis`` as drawn on screen (rows top to bottom).

    Args:
        volume: (D, H, W) RAS array.
        axis: 0 (sagittal slice), 1 (coronal) or 2 (axial).
        index: RAS voxel index along ``axis``.

    Returns:
        (rows, columns) array, oriented by the module's rule (the same pixels napari shows for
        that slice of the display array).
    """
    slice_axes(axis)  # validates axis
    n = volume.shape[axis]
    if not 0 <= index < n:
        raise IndexError(f"index {index} out of range for axis {axis} of size {n}")
    k = DISPLAY_FROM_RAS.index(axis)
    disp = to_display(volume)
    return np.take(disp, n - 1 - index, axis=k)


def plane_label(axis: int, index: int | None = None) -> str:
    """``"axial"`` (``"axial 12"`` with an index) for a slice across RAS ``axis``."""
    plane = PLANE_OF_RAS_AXIS[axis]
    return plane if index is None else f"{plane} {index}"


def screen_sides(axis: int) -> tuple[str, str, str, str]:
    """Anatomical letters at the (top, bottom, left, right) of a slice across RAS ``axis``."""
    return _SIDES[PLANE_OF_RAS_AXIS[axis]]
