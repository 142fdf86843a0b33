"""npe2 reader: *File > Open* (and ``viewer.open``) on ``.nii`` / ``.nii.gz`` files.

The file is read by :func:`toolkit.data.io.load_volume` (reoriented to RAS, errors that name the
file) and added in the toolkit's display orientation with its world geometry
(:mod:`toolkit.orientation`: radiological, superior and anterior up, sliders in mm named by the
plane they step through). Label maps become a Labels layer at opacity 0.5, everything else an
Image layer. A file is a label map when its path says so (a ``_seg`` name, as in BraTS, or a
``labelsTr``/``labelsTs`` folder, as in nnU-Net's raw data) or when it holds integers with few
distinct values.

Example (with a display)::

    viewer.open("sub-01_T1w.nii.gz", plugin="mae3d-toolkit")   # an Image layer, axial slices
    viewer.open("labelsTr/sub-01.nii.gz", plugin="mae3d-toolkit")  # a Labels layer
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.io import Volume, load_volume, read_header
from toolkit.orientation import to_display
from widgets.napari_layers import LABEL_OPACITY, ROLE, LayerData, geometry, label_colormap
from widgets.slices import intensity_window

__all__ = [
    "LABEL_FOLDERS",
    "MAX_LABELS",
    "get_reader",
    "is_label_map",
    "read_nifti",
    "volume_layer",
]

PathLike = str | os.PathLike[str]
#: Folders whose NIfTI files are label maps (nnU-Net raw data layout).
LABEL_FOLDERS = ("labelsTr", "labelsTs")
#: An integer volume with at most this many distinct values is a label map.
MAX_LABELS = 64
_SUFFIXES = (".nii", ".nii.gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _path_says_labels(path: Path) -> bool:
    stem = _stem(path).lower()
    return stem.endswith("_seg") or "_seg_" in stem or any(p in LABEL_FOLDERS for p in path.parts)


def is_label_map(path: PathLike, array: np.ndarray | None = None) -> bool:
    """Whether a NIfTI file holds a label map.

    Args:
        path: the file.
        array: its voxels, if already read (otherwise only the path and header dtype are used).

    Returns:
        True for a ``_seg`` name or a ``labelsTr``/``labelsTs`` folder, or for integer voxels
        (stored as integers, or float without a fraction) with at most :data:`MAX_LABELS` values.
    """
    p = Path(path)
    if _path_says_labels(p):
        return True
    if array is None:
        return False
    stored = read_header(p).get_data_dtype()
    if not np.issubdtype(stored, np.integer):
        return False
    values = np.unique(array)
    return len(values) <= MAX_LABELS and bool(np.all(values == np.rint(values)))


def volume_layer(vol: Volume, *, kind: str | None = None, name: str | None = None) -> LayerData:
    """The napari layer data of a RAS volume, in the toolkit's display orientation.

    Args:
        vol: from :func:`toolkit.data.io.load_volume` with ``canonical=True``.
        kind: ``image`` or ``labels`` (default: :func:`is_label_map` of ``vol.path``).
        name: layer name (default: the file name without ``.nii``/``.nii.gz``).

    Returns:
        ``(display array, kwargs, kind)`` with scale, translate, axis labels and units (mm).
    """
    path = vol.path or Path("volume.nii.gz")
    if kind is None:
        kind = "labels" if is_label_map(path, vol.array) else "image"
    origin = tuple(float(v) for v in vol.affine[:3, 3])
    kwargs: dict[str, Any] = {
        "name": name or _stem(path),
        **geometry(vol.shape, vol.spacing_mm, origin),
        "metadata": {ROLE: "input", "path": str(path), "affine": vol.affine.tolist()},
    }
    if kind == "labels":
        data = np.rint(vol.array).astype(np.int32)
        values = sorted(int(v) for v in np.unique(data))
        kwargs.update(opacity=LABEL_OPACITY, colormap=label_colormap(values))
        return (to_display(data), kwargs, "labels")
    kwargs.update(colormap="gray", contrast_limits=intensity_window(vol.array))
    return (to_display(vol.array), kwargs, "image")


def read_nifti(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """Read one or more NIfTI files as layers (the reader function napari calls).

    Raises:
        DataError: a missing, unreadable, corrupt or non-3-D file (the message names it).
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers = []
    for p in paths:
        vol = load_volume(Path(p), canonical=True)
        layers.append(volume_layer(vol))
    return layers


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """npe2 ``get_reader``: :func:`read_nifti` for ``.nii``/``.nii.gz`` paths, else None.

    Only the name is checked here; the file is read (and errors raised) by :func:`read_nifti`.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if paths and all(str(p).lower().endswith(_SUFFIXES) for p in paths):
        return read_nifti
    return None
