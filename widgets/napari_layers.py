"""napari layer data of runs and volumes: pure numpy, no viewer, no Qt.

Layers are napari *layer data tuples* ``(data, kwargs, layer_type)``, so they can be tested without
a display, returned from worker threads by the plugin and from the NIfTI reader;
:func:`widgets.napari_views.add_layers` puts them in a viewer.

Orientation: every layer holds the *display array* of a RAS volume
(:func:`toolkit.orientation.to_display`, radiological, superior and anterior up) with its
world geometry (``scale`` = spacing, ``translate`` from the origin, in mm; ``axis_labels``
naming the plane each slider steps through).

Reconstruction (pretraining): ``input``, ``mask`` (labels: masked blocks, bright on black),
``masked input`` (masked blocks tinted), ``reconstruction``, ``error`` (``|reconstruction -
input|``, additive). Segmentation (fine-tuning): ``image``, ``reference`` and ``prediction``
(labels at opacity 0.5, named by the dataset's label names) and ``errors`` (1 false positive, 2
false negative, 3 wrong class, in colours no label takes, at opacity 0.45). Layers carry
``metadata["role"]``: ``input`` or ``derived`` (the dock widgets never default to a derived one).

Example:
    >>> import numpy as np
    >>> img = np.zeros((4, 5, 6), np.float32)
    >>> [kw["name"] for _, kw, _ in reconstruction_layers(img, np.ones_like(img), img)]
    ['input', 'mask', 'masked input', 'reconstruction', 'error']
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.orientation import display_geometry, to_display
from widgets.runs import ERROR_LABELS, ReconstructionVolumes, error_labels
from widgets.slices import ERROR_COLOURS as _ERR
from widgets.slices import LABEL_COLOURS, MASKED_COLOUR, intensity_window

__all__ = [
    "ERROR_COLOURS",
    "ERROR_OPACITY",
    "LABEL_OPACITY",
    "ROLE",
    "LayerData",
    "geometry",
    "infill_layer",
    "label_colormap",
    "masked_input_layer",
    "origin_of",
    "reconstruction_layers",
    "segmentation_layers",
]

PathLike = str | os.PathLike[str]
LayerData = tuple[np.ndarray, dict[str, Any], str]

#: napari colours of the error labels (1 false positive, 2 false negative, 3 wrong class), the
#: slice viewer's :data:`widgets.slices.ERROR_COLOURS`: none near a label colour.
ERROR_COLOURS: dict[int, str] = {
    v: "#{:02x}{:02x}{:02x}".format(*rgb) for v, (rgb, _) in _ERR.items()
}
#: Opacity of label overlays (reference, prediction): the anatomy shows through.
LABEL_OPACITY = 0.5
#: Opacity of the segmentation error labels, drawn over image, reference and prediction.
ERROR_OPACITY = 0.45
#: ``layer.metadata["role"]``: ``input`` (an image you may run a checkpoint on) or ``derived``
#: (mask, reconstruction, error, prediction...: the dock widgets never pick these by default).
ROLE = "role"


def _hex(rgb: Sequence[float] | np.ndarray) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def label_colormap(values: Sequence[int]) -> dict[int | None, str]:
    """napari label colours for ``values``: 0 transparent, the slice viewer's colours otherwise."""
    cmap: dict[int | None, str] = {0: "transparent", None: "transparent"}
    for v in values:
        if v > 0:
            cmap[int(v)] = _hex(LABEL_COLOURS[(int(v) - 1) % len(LABEL_COLOURS)])
    return cmap


def geometry(
    shape: Sequence[int],
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict[str, Any]:
    """napari ``scale``/``translate``/``axis_labels`` of a RAS volume's display array.

    See :func:`toolkit.orientation.display_geometry` (radiological; sliders step through axial,
    coronal and sagittal slices in mm).
    """
    return display_geometry(shape, spacing_mm, origin_mm)


def masked_input_layer(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    name: str = "masked input",
    window: tuple[float, float] | None = None,
    **kwargs: Any,
) -> LayerData:
    """The masked input with its masked voxels tinted (not black, which reads as background).

    Args:
        image: (D, H, W) image (any orientation; the layer keeps it).
        mask: (D, H, W) mask, 1 = visible, 0 = masked.
        name: layer name.
        window: grey range of visible voxels (default: :func:`widgets.slices.intensity_window`).
        **kwargs: further layer keyword arguments (geometry, metadata).

    Returns:
        An image layer: visible voxels clipped to ``window`` and drawn grey; masked voxels set just
        above it, where the colour map turns to the masked colour.
    """
    lo, hi = window if window is not None else intensity_window(np.asarray(image, np.float32))
    top = lo + (hi - lo) / _GREY_PART
    data = np.where(mask > 0.5, np.clip(image, lo, hi), top).astype(np.float32)
    tint = [c / 255.0 for c in MASKED_COLOUR] + [1.0]
    colormap = {
        "name": "grey, masked tinted",
        "colors": [[0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], tint, tint],
        "controls": [0.0, _GREY_PART, _GREY_PART + 1e-4, 1.0],
    }
    meta = {ROLE: "derived", "meaning": "tinted = masked block (not seen by the network)"}
    layer_kwargs = {"name": name, "colormap": colormap, "contrast_limits": (lo, top)}
    return (data, {**layer_kwargs, "metadata": meta, **kwargs}, "image")


# The grey ramp of the masked input's colour map ends here; the rest is the masked colour.
_GREY_PART = 0.9


def reconstruction_layers(
    image: np.ndarray,
    mask: np.ndarray,
    reconstruction: np.ndarray,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    prefix: str = "",
) -> list[LayerData]:
    """Layer data of one masked reconstruction, in the toolkit's display orientation.

    Args:
        image: (D, H, W) RAS input.
        mask: (D, H, W) full-resolution mask, 1 = visible, 0 = masked.
        reconstruction: (D, H, W) network output.
        spacing_mm: RAS voxel size.
        origin_mm: RAS millimetre coordinate of voxel (0, 0, 0), so patches sit on their volume.
        prefix: prepended to every layer name (e.g. ``"ratio 0.9: "``) to compare several runs.

    Returns:
        ``input``, ``mask`` (labels: masked blocks in the masked colour), ``masked input`` (masked
        blocks tinted), ``reconstruction`` and ``error`` (additive ``magma``: zero error adds
        nothing, so it never hides a layer under it) layer tuples, each holding the display array
        (:func:`toolkit.orientation.to_display`) with its world geometry.

    Raises:
        ValueError: the three arrays differ in shape.
    """
    img = np.asarray(image, np.float32)
    msk = np.asarray(mask, np.float32)
    rec = np.asarray(reconstruction, np.float32)
    if not img.shape == msk.shape == rec.shape or img.ndim != 3:
        raise ValueError(
            f"image {img.shape}, mask {msk.shape} and reconstruction {rec.shape} must be one "
            "(D, H, W) shape"
        )
    geo = geometry(img.shape, spacing_mm, origin_mm)
    window = intensity_window(img)
    err = np.abs(rec - img)
    err_hi = max(float(np.percentile(err, 99)), 1e-6)
    masked_blocks = (msk < 0.5).astype(np.uint8)
    img_d, msk_d, rec_d = to_display(img), to_display(msk), to_display(rec)
    grey = {"colormap": "gray", "contrast_limits": window, **geo}
    derived = {ROLE: "derived"}
    return [
        (img_d, {"name": f"{prefix}input", **grey, "metadata": {ROLE: "input"}}, "image"),
        (
            to_display(masked_blocks),
            {
                "name": f"{prefix}mask",
                **geo,
                "opacity": 0.8,
                "colormap": {0: "transparent", None: "transparent", 1: _hex(MASKED_COLOUR)},
                "metadata": {**derived, "meaning": "1 = masked block (the MAE mask is 0 there)"},
            },
            "labels",
        ),
        masked_input_layer(img_d, msk_d, name=f"{prefix}masked input", window=window, **geo),
        (rec_d, {"name": f"{prefix}reconstruction", **grey, "metadata": derived}, "image"),
        (
            to_display(err),
            {
                "name": f"{prefix}error",
                "colormap": "magma",
                "blending": "additive",
                "contrast_limits": (0.0, err_hi),
                **geo,
                "metadata": {**derived, "meaning": "|reconstruction - input|"},
            },
            "image",
        ),
    ]


def infill_layer(volumes: ReconstructionVolumes) -> LayerData:
    """Layer data of the in-fill baseline of a snapshot (the reference the MAE must beat).

    Args:
        volumes: from :func:`widgets.runs.load_snapshot`.

    Returns:
        An ``in-fill baseline`` image layer tuple (display array), windowed like the input.
    """
    from widgets.inline import infill_volume

    fill = infill_volume(volumes)
    return (
        to_display(fill),
        {
            "name": "in-fill baseline",
            "colormap": "gray",
            "contrast_limits": intensity_window(np.asarray(volumes.input, np.float32)),
            **geometry(fill.shape, volumes.spacing_mm, origin_of(volumes.affine)),
            "metadata": {ROLE: "derived"},
        },
        "image",
    )


def segmentation_layers(
    image: np.ndarray,
    reference: np.ndarray | None,
    prediction: np.ndarray,
    *,
    label_names: Mapping[int, str] | None = None,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    prefix: str = "",
) -> list[LayerData]:
    """Layer data of one segmented image, in the toolkit's display orientation.

    Args:
        image: (D, H, W) RAS image.
        reference: (D, H, W) reference labels, or None (then no ``reference``/``errors`` layers).
        prediction: (D, H, W) predicted labels.
        label_names: label value -> name, shown in napari's status bar.
        spacing_mm: RAS voxel size.
        origin_mm: RAS millimetre coordinate of voxel (0, 0, 0).
        prefix: prepended to every layer name.

    Returns:
        ``image``, ``reference`` and ``prediction`` (labels at opacity 0.5) and ``errors``
        (:data:`ERROR_COLOURS`, apart from every label colour, at :data:`ERROR_OPACITY`) layer
        tuples (the reference-based ones only with a reference).
    """
    img = np.asarray(image, np.float32)
    pred = np.rint(np.asarray(prediction)).astype(np.int32)
    if img.shape != pred.shape or img.ndim != 3:
        raise ValueError(
            f"image {img.shape} and prediction {pred.shape} must be one (D, H, W) shape"
        )
    ref = None if reference is None else np.rint(np.asarray(reference)).astype(np.int32)
    if ref is not None and ref.shape != img.shape:
        raise ValueError(f"reference {ref.shape} and image {img.shape} differ in shape")
    geo = geometry(img.shape, spacing_mm, origin_mm)
    names = dict(label_names or {})
    values = set(np.unique(pred).tolist()) | set(names)
    if ref is not None:
        values |= set(np.unique(ref).tolist())
    ordered = sorted(int(v) for v in values)
    # One table and one colour map for reference and prediction, so a class looks the same in both.
    features = {"index": ordered, "name": [names.get(v, str(v)) for v in ordered]}
    colormap = label_colormap(ordered)

    def labels(data: np.ndarray, name: str, role: str) -> LayerData:
        kwargs = {"name": f"{prefix}{name}", **geo, "opacity": LABEL_OPACITY}
        extra = {"colormap": colormap, "features": features, "metadata": {ROLE: role}}
        return (to_display(data), {**kwargs, **extra}, "labels")

    window = intensity_window(img)
    layers: list[LayerData] = [
        (
            to_display(img),
            {
                "name": f"{prefix}image",
                "colormap": "gray",
                "contrast_limits": window,
                **geo,
                "metadata": {ROLE: "input"},
            },
            "image",
        )
    ]
    if ref is not None:
        layers.append(labels(ref, "reference", "input"))
    layers.append(labels(pred, "prediction", "derived"))
    if ref is not None:
        err = error_labels(ref, pred)
        layers.append(
            (
                to_display(err),
                {
                    "name": f"{prefix}errors",
                    **geo,
                    "opacity": ERROR_OPACITY,
                    "colormap": {0: "transparent", None: "transparent", **ERROR_COLOURS},
                    "features": {
                        "index": [0, *ERROR_LABELS],
                        "name": ["correct", *ERROR_LABELS.values()],
                    },
                    "metadata": {ROLE: "derived"},
                },
                "labels",
            )
        )
    return layers


def origin_of(affine: np.ndarray) -> tuple[float, float, float]:
    """RAS millimetre coordinate of voxel (0, 0, 0) of a (4, 4) affine."""
    o = np.asarray(affine, np.float64)[:3, 3]
    return (float(o[0]), float(o[1]), float(o[2]))
