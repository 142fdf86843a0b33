"""Open runs and volumes in napari as named layers.

Layers are first built as napari *layer data tuples* ``(data, kwargs, layer_type)`` by pure numpy
functions (:func:`reconstruction_layers`, :func:`segmentation_layers`), so they can be tested
without a display and returned from worker threads by the plugin; :func:`add_layers` puts them in
a viewer. napari is imported only inside the functions that need a viewer.

Orientation: every layer holds the *display array* of a RAS volume
(:func:`toolkit.orientation.to_display`, radiological, superior and anterior up) with its
world geometry (``scale`` = spacing, ``translate`` from the origin, in mm; ``axis_labels``
naming the plane each slider steps through). The first slider steps through axial slices;
:func:`show_plane` switches to coronal or sagittal slices, upright as well. The notebook slice
viewer and the PNG figures draw the same slices (:func:`toolkit.orientation.display_slice`).

Reconstruction view (pretraining): ``input``, ``mask`` (labels: masked blocks), ``masked input``,
``reconstruction``, ``error`` (``|reconstruction - input|``). Segmentation view (fine-tuning):
``image``, ``reference`` and ``prediction`` (labels at opacity 0.5, named by the dataset's label
names) and ``errors`` (labels: 1 false positive, 2 false negative, 3 wrong class, in colours no
label takes, at opacity 0.45). Layers carry ``metadata["role"]``: ``input`` or ``derived``.

Example (with a display)::

    from widgets.napari_views import open_run
    viewer = open_run("runs/mae_tiny")      # latest reconstruction snapshot, grid of 5 panels
    viewer = open_run("runs/ft", manifest="data/labelled.yaml", case="sub-101")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.orientation import NAPARI_ORDER, Plane, display_geometry, to_display
from widgets.runs import (
    ERROR_LABELS,
    ReconstructionVolumes,
    SegmentationVolumes,
    error_labels,
    load_segmentation,
    load_snapshot,
    run_kind,
)
from widgets.slices import ERROR_COLOURS as _ERR
from widgets.slices import LABEL_COLOURS, MASKED_COLOUR, intensity_window

if TYPE_CHECKING:
    import napari

__all__ = [
    "ERROR_COLOURS",
    "ERROR_OPACITY",
    "LABEL_OPACITY",
    "LayerData",
    "add_layers",
    "geometry",
    "infill_layer",
    "label_colormap",
    "masked_input_layer",
    "open_reconstruction",
    "open_run",
    "open_segmentation",
    "reconstruction_layers",
    "segmentation_layers",
    "show_plane",
    "view_run",
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
            **geometry(fill.shape, volumes.spacing_mm, _origin(volumes.affine)),
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


def add_layers(
    viewer: napari.Viewer, layers: Sequence[LayerData], *, titles: bool = False
) -> list[Any]:
    """Add layer data tuples to ``viewer``; a layer of the same name is replaced in place.

    Args:
        viewer: the napari viewer.
        layers: ``(data, kwargs, kind)`` tuples.
        titles: show each layer's name on its panel (napari's layer name overlay; grid mode).
    """
    added = []
    for data, kwargs, kind in layers:
        name = kwargs.get("name")
        if name in viewer.layers:
            layer = viewer.layers[name]
            if type(layer).__name__.lower() == kind and layer.data.shape == data.shape:
                layer.data = data
                for key in ("scale", "translate", "contrast_limits", "metadata"):
                    if key in kwargs:
                        setattr(layer, key, kwargs[key])
                added.append(layer)
                continue
            viewer.layers.remove(name)
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    for layer in added:
        layer.name_overlay.visible = titles
    return added


def show_plane(viewer: napari.Viewer, plane: Plane = "axial") -> None:
    """Show ``axial``, ``coronal`` or ``sagittal`` slices of display-oriented layers, upright.

    Sets ``viewer.dims.order`` (:data:`toolkit.orientation.NAPARI_ORDER`) and fits the view.
    """
    if plane not in NAPARI_ORDER:
        raise ValueError(f"plane: must be one of {', '.join(NAPARI_ORDER)}, got {plane!r}")
    viewer.dims.order = NAPARI_ORDER[plane]
    viewer.reset_view()


def _select_input(viewer: napari.Viewer) -> None:
    # The dock widgets follow the active layer: make it an input, never a derived layer.
    for layer in viewer.layers:
        if layer.metadata.get(ROLE) == "input" and type(layer).__name__ == "Image":
            viewer.layers.selection.active = layer
            return


def _viewer(viewer: napari.Viewer | None, title: str) -> napari.Viewer:
    if viewer is not None:
        return viewer
    import napari

    return napari.Viewer(title=title)


def _origin(affine: np.ndarray) -> tuple[float, float, float]:
    o = np.asarray(affine, np.float64)[:3, 3]
    return (float(o[0]), float(o[1]), float(o[2]))


def open_reconstruction(
    volumes: ReconstructionVolumes,
    viewer: napari.Viewer | None = None,
    *,
    grid: bool = True,
    plane: Plane = "axial",
) -> napari.Viewer:
    """Show a reconstruction snapshot: input, mask, masked input, reconstruction, error and the
    in-fill baseline.

    Args:
        volumes: from :func:`widgets.runs.load_snapshot`.
        viewer: an existing viewer (default: a new one).
        grid: one titled panel per layer (napari grid mode), so all six are visible side by side.
        plane: ``axial``, ``coronal`` or ``sagittal`` (:func:`show_plane`).
    """
    v = _viewer(viewer, f"MAE reconstruction, step {volumes.step}")
    add_layers(
        v,
        reconstruction_layers(
            volumes.input,
            volumes.mask,
            volumes.reconstruction,
            spacing_mm=volumes.spacing_mm,
            origin_mm=_origin(volumes.affine),
        )
        + [infill_layer(volumes)],
        titles=grid,
    )
    v.canvas.grid.enabled = grid
    _select_input(v)
    show_plane(v, plane)
    return v


def open_segmentation(
    volumes: SegmentationVolumes,
    viewer: napari.Viewer | None = None,
    *,
    grid: bool = False,
    plane: Plane = "axial",
) -> napari.Viewer:
    """Show an evaluated case: image, reference, prediction and errors (FP / FN / wrong class).

    Args:
        volumes: from :func:`widgets.runs.load_segmentation` (RAS arrays).
        viewer: an existing viewer (default: a new one).
        grid: one titled panel per layer instead of overlays on the image.
        plane: ``axial``, ``coronal`` or ``sagittal`` (:func:`show_plane`).
    """
    v = _viewer(viewer, f"segmentation of {volumes.case}")
    add_layers(
        v,
        segmentation_layers(
            volumes.image,
            volumes.reference,
            volumes.prediction,
            label_names=volumes.label_names,
            spacing_mm=volumes.spacing_mm,
            origin_mm=_origin(volumes.affine),
        ),
        titles=grid,
    )
    v.canvas.grid.enabled = grid
    _select_input(v)
    show_plane(v, plane)
    return v


def open_run(
    run_dir: PathLike,
    viewer: napari.Viewer | None = None,
    *,
    step: int | None = None,
    manifest: PathLike | None = None,
    case: str | None = None,
) -> napari.Viewer:
    """Open a run folder: the latest (or ``step``) snapshot of a pretraining run, or an evaluated
    case of a fine-tuning run.

    Args:
        run_dir: run folder.
        viewer: an existing viewer (default: a new one).
        step: pretraining snapshot step (default: the latest).
        manifest: fine-tuning: the evaluated labelled manifest (default: the run's own).
        case: fine-tuning: case id (default: the first evaluated case).

    Raises:
        DataError: not a run folder, or nothing to show yet.
    """
    if run_kind(run_dir) == "pretrain":
        return open_reconstruction(load_snapshot(run_dir, step), viewer)
    return open_segmentation(load_segmentation(run_dir, manifest, case), viewer)


def view_run(
    run_dir: PathLike,
    *,
    step: int | None = None,
    manifest: PathLike | None = None,
    case: str | None = None,
) -> None:
    """Open a run in a new napari window and block until it is closed (``mae3d view``)."""
    import napari

    open_run(run_dir, step=step, manifest=manifest, case=case)
    napari.run()
