"""Open runs and volumes in napari: layers in a viewer, the plane shown, run folders.

The layers themselves are pure layer data tuples built in :mod:`widgets.napari_layers` (re-exported
here); :func:`add_layers` puts them in a viewer with panel titles, :func:`show_plane` shows axial,
coronal or sagittal slices upright (:mod:`toolkit.orientation`: radiological, superior and
anterior up; the first slider steps through axial slices), and :func:`open_run` opens a run
folder. napari is imported only inside the functions that need a viewer.

Example (with a display)::

    from widgets.napari_views import open_run, show_plane
    viewer = open_run("runs/mae_tiny")      # latest reconstruction snapshot, grid of 6 panels
    show_plane(viewer, "coronal")
    viewer = open_run("runs/ft", manifest="data/labelled.yaml", case="sub-101")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from toolkit.orientation import NAPARI_ORDER, Plane
from widgets.napari_layers import (
    ERROR_COLOURS,
    ERROR_OPACITY,
    LABEL_OPACITY,
    ROLE,
    LayerData,
    geometry,
    infill_layer,
    label_colormap,
    masked_input_layer,
    origin_of,
    reconstruction_layers,
    segmentation_layers,
)
from widgets.runs import (
    ReconstructionVolumes,
    SegmentationVolumes,
    load_segmentation,
    load_snapshot,
    run_kind,
)

if TYPE_CHECKING:
    import napari

__all__ = [
    "ERROR_COLOURS",
    "ERROR_OPACITY",
    "LABEL_OPACITY",
    "ROLE",
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
            origin_mm=origin_of(volumes.affine),
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

    Overlaid (``grid=False``) the reference is drawn as outlines, the prediction filled at 0.5 and
    the errors at :data:`ERROR_OPACITY` on top.

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
            origin_mm=origin_of(volumes.affine),
        ),
        titles=grid,
    )
    if not grid:
        # Overlaid, the reference as outlines over the filled prediction: both readable, and the
        # image still shows through.
        v.layers["reference"].contour = 1
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
