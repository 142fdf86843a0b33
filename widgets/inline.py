"""The headless fallback: matplotlib figures instead of napari, chosen when no display exists.

:func:`show_run` is what notebooks call. It opens napari when a display and napari are available
and inline figures otherwise (a remote kernel, CI, a server). ``MAE3D_VIEWER=inline`` or
``MAE3D_VIEWER=napari`` forces the choice (the notebook tests force ``inline``).

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (see
:mod:`toolkit.visualize`); in a notebook :func:`show_run` displays them.

Example:
    >>> choose_backend("inline")
    'inline'
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from toolkit.visualize import VIEWS, label_sides
from widgets.inference import Reconstruction
from widgets.runs import (
    ERROR_LABELS,
    ReconstructionVolumes,
    SegmentationVolumes,
    error_labels,
    load_segmentation,
    load_snapshot,
    run_kind,
)
from widgets.slices import (
    ERROR_COLOURS,
    LABEL_COLOURS,
    MASKED_COLOUR,
    display_slice,
    intensity_window,
)

__all__ = [
    "VIEWER_ENV",
    "choose_backend",
    "comparison_figure",
    "has_display",
    "infill_volume",
    "reconstruction_figure",
    "run_verdict",
    "run_figures",
    "figure_png",
    "segmentation_figure",
    "show_figures",
    "show_reconstructions",
    "show_run",
]

PathLike = str | os.PathLike[str]
#: Environment variable that forces the viewer: ``napari``, ``inline`` or ``auto`` (default).
VIEWER_ENV = "MAE3D_VIEWER"


def has_display() -> bool:
    """Whether a window can open: on macOS/Windows always, on Linux with an X/Wayland server."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def choose_backend(prefer: str | None = None) -> str:
    """``napari`` or ``inline``.

    Args:
        prefer: ``napari``, ``inline`` or ``auto``; default: the ``MAE3D_VIEWER`` environment
            variable, else ``auto`` (napari when :func:`has_display` and napari is installed).

    Raises:
        ValueError: an unknown choice.
    """
    choice = (prefer or os.environ.get(VIEWER_ENV) or "auto").lower()
    if choice not in ("napari", "inline", "auto"):
        raise ValueError(f"{VIEWER_ENV}: must be napari, inline or auto, got {choice!r}")
    if choice != "auto":
        return choice
    napari_ok = importlib.util.find_spec("napari") is not None
    return "napari" if napari_ok and has_display() else "inline"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def reconstruction_figure(
    volumes: ReconstructionVolumes, verdict: Mapping[str, Any] | None = None
) -> Figure:
    """Input, masked input, reconstruction, in-fill baseline and error mid-slices.

    Args:
        volumes: a snapshot (:func:`widgets.runs.load_snapshot`).
        verdict: the run's in-fill verdict (:func:`toolkit.infill_gate.infill_verdict`); its
            sentence goes into the title.
    """
    from toolkit.visualize import plot_reconstruction

    title = f"reconstruction snapshot, step {volumes.step}"
    if verdict is not None:
        title += f"\nstep {verdict['step']}: {verdict['message']}"
    return plot_reconstruction(
        volumes.input,
        volumes.mask,
        volumes.reconstruction,
        infill=infill_volume(volumes),
        title=title,
    )


def infill_volume(volumes: ReconstructionVolumes) -> np.ndarray:
    """The in-fill baseline (:func:`toolkit.infill.infill`) of a snapshot, (D, H, W) float32."""
    import torch

    from toolkit.infill import infill

    x = torch.from_numpy(np.ascontiguousarray(volumes.input, dtype=np.float32))[None, None]
    m = torch.from_numpy(np.ascontiguousarray(volumes.mask > 0.5, dtype=np.float32))[None, None]
    return infill(x, m)[0, 0].numpy()


def run_verdict(run_dir: PathLike) -> dict[str, Any] | None:
    """The in-fill verdict of a pretraining run, or None when it has none (yet)."""
    from toolkit.errors import DataError
    from toolkit.infill_gate import infill_verdict

    try:
        return infill_verdict(run_dir)
    except DataError:
        return None


def _label_rgba(labels: np.ndarray, colours: Mapping[int, np.ndarray]) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for v, c in colours.items():
        on = labels == v
        rgba[on, :3] = np.asarray(c, np.float32) / 255.0
        rgba[on, 3] = 0.5
    return rgba


def segmentation_figure(volumes: SegmentationVolumes) -> Figure:
    """Image, reference, prediction and errors through the centre of the reference foreground.

    One row per plane (axial, coronal, sagittal; oriented by :mod:`toolkit.orientation`); labels
    use the slice viewer's colours at opacity 0.5, errors :data:`widgets.slices.ERROR_COLOURS`
    (lime false positive, pink false negative, white wrong class), apart from every label colour.
    """
    img, ref, pred = volumes.image, volumes.reference, volumes.prediction
    err = error_labels(ref, pred)
    fg = np.argwhere(ref > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(img.shape) // 2
    values = sorted((set(np.unique(ref).tolist()) | set(np.unique(pred).tolist())) - {0})
    label_colours = {v: LABEL_COLOURS[(v - 1) % len(LABEL_COLOURS)] for v in values}
    error_colours = {v: np.array(rgb) for v, (rgb, _) in ERROR_COLOURS.items()}
    lo, hi = intensity_window(img)
    columns = (
        ("image", None, None),
        ("reference", ref, label_colours),
        ("prediction", pred, label_colours),
        ("errors", err, error_colours),
    )
    fig = _figure(12, 9)
    axes = fig.subplots(3, 4)
    for row, (plane, axis) in enumerate(VIEWS):
        index = int(centre[axis])
        base = display_slice(img, axis, index)
        for col, (name, labels, colours) in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(base, cmap="gray", vmin=lo, vmax=hi, interpolation="none")
            if labels is not None and colours is not None:
                ax.imshow(
                    _label_rgba(display_slice(labels, axis, index), colours), interpolation="none"
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(f"{plane} {index}")
                label_sides(ax, axis)
    names = volumes.label_names
    legend = ", ".join(f"{v} {names.get(v, v)}" for v in values)
    errors = ", ".join(f"{ERROR_LABELS[v]} {name}" for v, (_, name) in ERROR_COLOURS.items())
    fig.suptitle(f"case {volumes.case}: labels {legend}; errors: {errors}", fontsize="medium")
    return fig


def run_figures(
    run_dir: PathLike,
    *,
    step: int | None = None,
    manifest: PathLike | None = None,
    case: str | None = None,
) -> dict[str, Figure]:
    """The figures of a run, by name: ``loss`` (when metrics exist) and ``reconstruction``
    (pretraining) or ``segmentation`` (fine-tuning).

    Args:
        run_dir: run folder.
        step: pretraining snapshot step (default: the latest).
        manifest: fine-tuning: the evaluated manifest (default: the run's own).
        case: fine-tuning: case id (default: the first evaluated case).
    """
    from toolkit.engine.logging import read_history
    from toolkit.visualize import plot_loss_curves

    figures: dict[str, Figure] = {}
    history = read_history(run_dir)
    if history:
        figures["loss"] = plot_loss_curves(history, title=Path(run_dir).name)
    if run_kind(run_dir) == "pretrain":
        figures["reconstruction"] = reconstruction_figure(
            load_snapshot(run_dir, step), run_verdict(run_dir)
        )
    else:
        figures["segmentation"] = segmentation_figure(load_segmentation(run_dir, manifest, case))
    return figures


def show_figures(figures: Sequence[Figure]) -> None:
    """Display figures in a notebook as PNG images; outside IPython this does nothing.

    The figures are rendered here rather than left to IPython's matplotlib hook, which only
    exists for the inline backend: the images then show in any kernel and in saved notebooks.
    """
    if "IPython" not in sys.modules:
        return
    from IPython import get_ipython
    from IPython.display import Image, display

    if get_ipython() is None:
        return
    for fig in figures:
        display(Image(data=figure_png(fig), format="png"))


def figure_png(fig: Figure, *, dpi: int = 80) -> bytes:
    """PNG bytes of a figure."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def show_run(
    run_dir: PathLike,
    *,
    backend: str | None = None,
    step: int | None = None,
    manifest: PathLike | None = None,
    case: str | None = None,
) -> Any:
    """Show a run in napari if a display and napari are available, else as inline figures.

    Args:
        run_dir: run folder (pretraining or evaluated fine-tuning).
        backend: ``napari``, ``inline`` or ``auto`` (default: ``MAE3D_VIEWER`` or ``auto``).
        step: pretraining snapshot step (default: the latest).
        manifest: fine-tuning: the evaluated manifest (default: the run's own).
        case: fine-tuning: case id (default: the first evaluated case).

    Returns:
        The napari viewer, or the list of figures (already displayed in a notebook).
    """
    if choose_backend(backend) == "napari":
        from widgets.napari_views import open_run

        return open_run(run_dir, step=step, manifest=manifest, case=case)
    figures = list(run_figures(run_dir, step=step, manifest=manifest, case=case).values())
    show_figures(figures)
    return figures


def comparison_figure(results: Sequence[Reconstruction], *, axis: int = 2) -> Figure:
    """One row per reconstruction: masked input, reconstruction and error through the middle.

    Args:
        results: from :func:`widgets.inference.reconstruct`, e.g. one per mask ratio.
        axis: the RAS axis the slices cut (2 axial, the default; 1 coronal; 0 sagittal).
    """
    if not results:
        raise ValueError("results: nothing to compare")
    import matplotlib

    # Masked blocks in the slice viewer's masked colour, not in a grey an image could have.
    r_, g_, b_ = (float(c) / 255.0 for c in MASKED_COLOUR)
    masked_grey = matplotlib.colormaps["gray"].with_extremes(bad=(r_, g_, b_))
    lo, hi = intensity_window(results[0].input)
    err_hi = max(float(np.percentile(np.concatenate([r.error.ravel() for r in results]), 99)), 1e-6)
    fig = _figure(9, 2.6 * len(results) + 0.4)
    axes = np.atleast_2d(fig.subplots(len(results), 3))
    for row, r in enumerate(results):
        index = r.input.shape[axis] // 2
        masked = np.where(r.mask > 0.5, r.input, np.nan)
        panels = (
            ("masked input", masked, masked_grey, lo, hi),
            ("reconstruction", r.reconstruction, "gray", lo, hi),
            ("|error|", r.error, "magma", 0.0, err_hi),
        )
        for col, (name, vol, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(display_slice(vol, axis, index), cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
        s = r.settings
        masked_voxels = r.mask < 0.5
        err = float(r.error[masked_voxels].mean()) if masked_voxels.any() else float("nan")
        axes[row, 0].set_ylabel(
            f"ratio {s['ratio']:.2f}, block {s['block_size']}\n"
            f"masked {100 * r.masked_fraction:.0f} %, |err| {err:.2f}",
            fontsize="small",
        )
    return fig


def show_reconstructions(results: Sequence[Reconstruction], *, backend: str | None = None) -> Any:
    """Compare reconstructions in napari (one layer group per setting) or as an inline figure.

    Args:
        results: from :func:`widgets.inference.reconstruct`.
        backend: ``napari``, ``inline`` or ``auto`` (default: ``MAE3D_VIEWER`` or ``auto``).

    Returns:
        The napari viewer, or the figure (already displayed in a notebook).
    """
    if choose_backend(backend) == "napari":
        import napari

        from widgets.napari_views import add_layers, reconstruction_layers

        viewer = napari.Viewer(title="MAE reconstructions")
        for r in results:
            prefix = f"ratio {r.settings['ratio']:.2f} block {r.settings['block_size']}: "
            layers = reconstruction_layers(
                r.input,
                r.mask,
                r.reconstruction,
                spacing_mm=r.spacing_mm,
                origin_mm=r.origin_mm,
                prefix=prefix,
            )
            add_layers(viewer, layers)
        return viewer
    fig = comparison_figure(results)
    show_figures([fig])
    return fig
