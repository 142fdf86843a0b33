"""Open runs and volumes in napari as named layers.

Layers are first built as napari *layer data tuples* ``(data, kwargs, layer_type)`` by pure numpy
functions (:func:`reconstruction_layers`, :func:`segmentation_layers`), so they can be tested
without a display and returned from worker threads by the plugin; :func:`add_layers` puts them in
a viewer. napari is imported only inside the functions that need a viewer.

Reconstruction view (pretraining): ``input``, ``mask`` (labels: masked blocks), ``masked input``,
``reconstruction``, ``error`` (``|reconstruction - input|``). Segmentation view (fine-tuning):
``image``, ``reference`` and ``prediction`` (labels, named by the dataset's label names) and
``errors`` (labels: 1 false positive, 2 false negative, 3 wrong class).

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

from widgets.runs import (
    ERROR_LABELS,
    ReconstructionVolumes,
    SegmentationVolumes,
    error_labels,
    load_segmentation,
    load_snapshot,
    run_kind,
)
from widgets.slices import LABEL_COLOURS, MASKED_COLOUR, intensity_window

if TYPE_CHECKING:
    import napari

__all__ = [
    "ERROR_COLOURS",
    "LayerData",
    "add_layers",
    "infill_layer",
    "label_colormap",
    "open_reconstruction",
    "open_run",
    "open_segmentation",
    "reconstruction_layers",
    "segmentation_layers",
    "view_run",
]

PathLike = str | os.PathLike[str]
LayerData = tuple[np.ndarray, dict[str, Any], str]

#: Colours of the error labels: false positive red, false negative blue, wrong class yellow.
ERROR_COLOURS: dict[int, str] = {1: "#e6194b", 2: "#0082c8", 3: "#ffe119"}


def _hex(rgb: np.ndarray) -> str:
    r, g, b = (int(v) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


def label_colormap(values: Sequence[int]) -> dict[int | None, str]:
    """napari label colours for ``values``: 0 transparent, the slice viewer's colours otherwise."""
    cmap: dict[int | None, str] = {0: "transparent", None: "transparent"}
    for v in values:
        if v > 0:
            cmap[int(v)] = _hex(LABEL_COLOURS[(int(v) - 1) % len(LABEL_COLOURS)])
    return cmap


def _scale(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    return (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))


def reconstruction_layers(
    image: np.ndarray,
    mask: np.ndarray,
    reconstruction: np.ndarray,
    *,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    prefix: str = "",
) -> list[LayerData]:
    """Layer data of one masked reconstruction.

    Args:
        image: (D, H, W) input.
        mask: (D, H, W) full-resolution mask, 1 = visible, 0 = masked.
        reconstruction: (D, H, W) network output.
        spacing_mm: voxel size, used as the layers' scale.
        prefix: prepended to every layer name (e.g. ``"ratio 0.9: "``) to compare several runs.

    Returns:
        ``input``, ``mask``, ``masked input``, ``reconstruction`` and ``error`` layer tuples.

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
    scale = _scale(spacing_mm)
    window = intensity_window(img)
    err = np.abs(rec - img)
    err_hi = max(float(np.percentile(err, 99)), 1e-6)
    masked_blocks = (msk < 0.5).astype(np.uint8)
    grey = {"colormap": "gray", "contrast_limits": window, "scale": scale}
    return [
        (img, {"name": f"{prefix}input", **grey}, "image"),
        (
            masked_blocks,
            {
                "name": f"{prefix}mask",
                "scale": scale,
                "opacity": 0.5,
                "colormap": {0: "transparent", None: "transparent", 1: _hex(MASKED_COLOUR)},
                "metadata": {"meaning": "1 = masked block (the MAE mask is 0 there)"},
            },
            "labels",
        ),
        (img * msk, {"name": f"{prefix}masked input", **grey}, "image"),
        (rec, {"name": f"{prefix}reconstruction", **grey}, "image"),
        (
            err,
            {
                "name": f"{prefix}error",
                "colormap": "magma",
                "contrast_limits": (0.0, err_hi),
                "scale": scale,
            },
            "image",
        ),
    ]


def infill_layer(volumes: ReconstructionVolumes) -> LayerData:
    """Layer data of the in-fill baseline of a snapshot (the reference the MAE must beat).

    Args:
        volumes: from :func:`widgets.runs.load_snapshot`.

    Returns:
        An ``in-fill baseline`` image layer tuple, (D, H, W), windowed like the input.
    """
    from widgets.inline import infill_volume

    return (
        infill_volume(volumes),
        {
            "name": "in-fill baseline",
            "colormap": "gray",
            "contrast_limits": intensity_window(np.asarray(volumes.input, np.float32)),
            "scale": _scale(volumes.spacing_mm),
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
    prefix: str = "",
) -> list[LayerData]:
    """Layer data of one segmented image.

    Args:
        image: (D, H, W) image.
        reference: (D, H, W) reference labels, or None (then no ``reference``/``errors`` layers).
        prediction: (D, H, W) predicted labels.
        label_names: label value -> name, shown in napari's status bar.
        spacing_mm: voxel size, used as the layers' scale.
        prefix: prepended to every layer name.

    Returns:
        ``image``, ``reference``, ``prediction`` and ``errors`` layer tuples (the reference-based
        ones only with a reference).
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
    scale = _scale(spacing_mm)
    names = dict(label_names or {})
    values = set(np.unique(pred).tolist()) | set(names)
    if ref is not None:
        values |= set(np.unique(ref).tolist())
    ordered = sorted(int(v) for v in values)
    # One table and one colour map for reference and prediction, so a class looks the same in both.
    features = {"index": ordered, "name": [names.get(v, str(v)) for v in ordered]}
    colormap = label_colormap(ordered)

    def labels(data: np.ndarray, name: str) -> LayerData:
        kwargs = {"name": f"{prefix}{name}", "scale": scale, "opacity": 0.6}
        return (data, {**kwargs, "colormap": colormap, "features": features}, "labels")

    window = intensity_window(img)
    layers: list[LayerData] = [
        (
            img,
            {
                "name": f"{prefix}image",
                "colormap": "gray",
                "contrast_limits": window,
                "scale": scale,
            },
            "image",
        )
    ]
    if ref is not None:
        layers.append(labels(ref, "reference"))
    layers.append(labels(pred, "prediction"))
    if ref is not None:
        err = error_labels(ref, pred)
        layers.append(
            (
                err,
                {
                    "name": f"{prefix}errors",
                    "scale": scale,
                    "opacity": 0.8,
                    "colormap": {0: "transparent", None: "transparent", **ERROR_COLOURS},
                    "features": {
                        "index": [0, *ERROR_LABELS],
                        "name": ["correct", *ERROR_LABELS.values()],
                    },
                },
                "labels",
            )
        )
    return layers


def add_layers(viewer: napari.Viewer, layers: Sequence[LayerData]) -> list[Any]:
    """Add layer data tuples to ``viewer``; a layer of the same name is replaced in place."""
    added = []
    for data, kwargs, kind in layers:
        name = kwargs.get("name")
        if name in viewer.layers:
            layer = viewer.layers[name]
            if type(layer).__name__.lower() == kind and layer.data.shape == data.shape:
                layer.data = data
                added.append(layer)
                continue
            viewer.layers.remove(name)
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added


def _viewer(viewer: napari.Viewer | None, title: str) -> napari.Viewer:
    if viewer is not None:
        return viewer
    import napari

    return napari.Viewer(title=title)


def open_reconstruction(
    volumes: ReconstructionVolumes,
    viewer: napari.Viewer | None = None,
    *,
    grid: bool = True,
) -> napari.Viewer:
    """Show a reconstruction snapshot: input, mask, masked input, reconstruction, error and the
    in-fill baseline.

    Args:
        volumes: from :func:`widgets.runs.load_snapshot`.
        viewer: an existing viewer (default: a new one).
        grid: one panel per layer (napari grid mode), so all six are visible side by side.
    """
    v = _viewer(viewer, f"MAE reconstruction, step {volumes.step}")
    add_layers(
        v,
        reconstruction_layers(
            volumes.input, volumes.mask, volumes.reconstruction, spacing_mm=volumes.spacing_mm
        )
        + [infill_layer(volumes)],
    )
    v.canvas.grid.enabled = grid
    v.reset_view()
    return v


def open_segmentation(
    volumes: SegmentationVolumes,
    viewer: napari.Viewer | None = None,
    *,
    grid: bool = False,
) -> napari.Viewer:
    """Show an evaluated case: image, reference, prediction and errors (FP / FN / wrong class).

    Args:
        volumes: from :func:`widgets.runs.load_segmentation`.
        viewer: an existing viewer (default: a new one).
        grid: one panel per layer instead of overlays on the image.
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
        ),
    )
    v.canvas.grid.enabled = grid
    v.reset_view()
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
