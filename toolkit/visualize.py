"""Matplotlib figures of training runs: loss curves and reconstruction snapshots.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global
figure state, no GUI backend: safe in workers, on servers and inside notebooks, where a returned
Figure displays inline). :func:`save_figure` writes a PNG atomically.

Example:
    >>> fig = plot_loss_curves([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    >>> len(fig.axes)
    2
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from toolkit.orientation import display_slice, screen_sides

PathLike = str | os.PathLike[str]
ArrayLike = Any  # numpy array or torch tensor

#: The three mid-slice views of a RAS (D, H, W) volume: (plane, the RAS axis it cuts), drawn by
#: the toolkit's orientation rule (:mod:`toolkit.orientation`: radiological, superior and anterior
#: up), the same way napari and the notebook slice viewer draw them.
VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
#: RGB (0-255) of label values 1, 2, ... (cycled; 0 is never drawn), shared by every view (napari,
#: notebook viewer, figures, reports) so a class has one colour everywhere.
LABEL_RGB: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # 1 red
    (60, 180, 75),  # 2 green
    (0, 130, 200),  # 3 blue
    (255, 225, 25),  # 4 yellow
    (245, 130, 48),  # 5 orange
    (145, 30, 180),  # 6 purple
    (70, 240, 240),  # 7 cyan
    (240, 50, 230),  # 8 magenta
)
#: RGB (0-255) of masked blocks: bright on black, a colour no grey intensity takes, apart from the
#: label colours.
MASKED_RGB: tuple[int, int, int] = (0, 200, 255)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: PathLike, *, dpi: int = 100) -> Path:
    """Save ``fig`` as PNG via a temporary file and rename (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(path)
    return path


def plot_loss_curves(
    history: Sequence[Mapping[str, Any]] | Any,
    *,
    loss_keys: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Training and validation losses (left) and learning rates (right) against the step.

    Args:
        history: records ``{"step": int, "loss": float, "val_loss": float, "lr": float, ...}``
            as in ``metrics.jsonl`` (or a pandas DataFrame with those columns). Missing values
            are skipped, so training and validation rows can alternate.
        loss_keys: metrics to draw on the loss axes (default: ``loss`` and every ``val_*``).
        title: figure title.

    A pretraining history with ``infill_loss`` also gets the in-fill baseline as a dashed
    horizontal reference line: ``val_loss`` must end below it (see :mod:`toolkit.infill_gate`).
    """
    records = _records(history)
    keys = sorted({k for r in records for k in r})
    if loss_keys is None:
        loss_keys = [k for k in keys if k == "loss" or k.startswith("val_")]
    lr_keys = [k for k in keys if k == "lr" or k.startswith("lr_")]
    fig = _new_figure(10, 3.8)
    ax_loss, ax_lr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    positive = True
    for key in loss_keys:
        steps, values = _series(records, key)
        if not steps:
            continue
        positive &= bool(np.all(np.asarray(values) > 0))
        marker = "o" if key.startswith("val_") else None
        ax_loss.plot(steps, values, label=key, marker=marker, markersize=3)
    _, infill = _series(records, "infill_loss")
    if infill and ax_loss.lines:
        positive &= infill[-1] > 0
        ax_loss.axhline(
            infill[-1],
            color="0.35",
            linestyle="--",
            linewidth=1.2,
            label=f"in-fill baseline {infill[-1]:.3g}",
        )
    if positive and ax_loss.lines:
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, alpha=0.3)
    if ax_loss.lines:
        ax_loss.legend(loc="upper right", fontsize="small")
    for key in lr_keys:
        steps, values = _series(records, key)
        if steps:
            ax_lr.plot(steps, values, label=key)
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.grid(True, alpha=0.3)
    if len(ax_lr.lines) > 1:
        ax_lr.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _records(history: Any) -> list[Mapping[str, Any]]:
    if hasattr(history, "to_dict") and hasattr(history, "columns"):  # pandas DataFrame
        return list(history.to_dict("records"))
    return list(history)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if v is None or "step" not in r:
            continue
        v = float(v)
        if np.isfinite(v):
            steps.append(float(r["step"]))
            values.append(v)
    return steps, values


def _to_numpy(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _volume(x: ArrayLike, name: str, channel: int) -> np.ndarray:
    arr = _to_numpy(x)
    while arr.ndim > 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 4:
        arr = arr[channel]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a (D, H, W) or (C, D, H, W) volume, got {arr.shape}")
    return arr


def plot_reconstruction(
    image: ArrayLike,
    mask: ArrayLike,
    reconstruction: ArrayLike,
    *,
    infill: ArrayLike | None = None,
    channel: int = 0,
    title: str | None = None,
) -> Figure:
    """Mid-slices of input, masked input, reconstruction and absolute error, one row per plane.

    Args:
        image: (C, D, H, W) or (D, H, W) input patch (a leading batch axis of 1 is dropped).
        mask: (1, D, H, W) or (D, H, W) full-resolution mask, 1 = visible, 0 = masked.
        reconstruction: same shape as ``image``.
        infill: optional in-fill baseline of the same crop (:func:`toolkit.infill.infill`), same
            shape as ``image``: shown as an extra column before the error, the reference the
            reconstruction has to beat.
        channel: which channel to show.
        title: figure title (e.g. the step).

    Volumes are RAS; rows are the axial, coronal and sagittal mid-slices, oriented by
    :mod:`toolkit.orientation` (radiological, superior and anterior up; letters on the first
    column name the screen sides). Masked voxels are drawn in :data:`MASKED_RGB` in the "masked
    input" column; input, masked input and reconstruction share one intensity window (1st-99th
    percentile of the input).
    """
    img = _volume(image, "image", channel)
    rec = _volume(reconstruction, "reconstruction", channel)
    msk = _volume(mask, "mask", 0)
    if not img.shape == rec.shape == msk.shape:
        raise ValueError(
            f"image {img.shape}, mask {msk.shape} and reconstruction {rec.shape} must match"
        )
    err = np.abs(rec - img)
    lo, hi = (float(v) for v in np.percentile(img, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    err_hi = max(float(np.percentile(err, 99)), 1e-6)
    masked = np.where(msk > 0.5, img, np.nan)
    columns = [
        ("input", img, "gray", (lo, hi)),
        ("masked input", masked, "gray", (lo, hi)),
        ("reconstruction", rec, "gray", (lo, hi)),
        ("|error|", err, "magma", (0.0, err_hi)),
    ]
    if infill is not None:
        fill = _volume(infill, "infill", channel)
        if fill.shape != img.shape:
            raise ValueError(f"infill {fill.shape} must match image {img.shape}")
        columns.insert(3, ("in-fill baseline", fill, "gray", (lo, hi)))
    fig = _new_figure(3 * len(columns), 9)
    axes = fig.subplots(3, len(columns))
    for row, (view, axis) in enumerate(VIEWS):
        index = img.shape[axis] // 2
        for col, (name, vol, cmap, (vmin, vmax)) in enumerate(columns):
            ax = axes[row, col]
            sl = display_slice(vol, axis, index)
            cm = _colormap(cmap)
            im = ax.imshow(sl, cmap=cm, vmin=vmin, vmax=vmax, interpolation="none")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name)
            if col == 0:
                ax.set_ylabel(f"{view} {index}")
                label_sides(ax, axis)
            if col == len(columns) - 1:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if title:
        fig.suptitle(title)
    return fig


def _colormap(name: str) -> Any:
    import matplotlib

    # Masked blocks in a colour no grey-scale intensity takes.
    r, g, b = (c / 255 for c in MASKED_RGB)
    return matplotlib.colormaps[name].with_extremes(bad=(r, g, b))


def label_sides(ax: Any, axis: int) -> None:
    """Write the anatomical side letters (e.g. A, P, R, L) at the edges of a slice's axes.

    Args:
        ax: matplotlib axes showing :func:`toolkit.orientation.display_slice` of ``axis``.
        axis: the RAS axis the slice cuts.
    """
    top, bottom, left, right = screen_sides(axis)
    style = {
        "color": "yellow",
        "fontsize": "small",
        "fontweight": "bold",
        "transform": ax.transAxes,
    }
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)


def plot_probe(table: Any, *, title: str | None = None) -> Figure:
    """Frozen-encoder probe Dice per seed: one panel per probe, a strip per label and encoder.

    Args:
        table: rows ``probe``, ``encoder``, ``seed``, ``label_name``, ``dice`` (a pandas
            DataFrame, as :func:`toolkit.probe.probe_encoders` returns).
        title: figure title.

    Example:
        >>> import pandas as pd
        >>> rows = [("linear", "mae", 0, "mean", 0.8), ("linear", "random", 0, "mean", 0.5)]
        >>> df = pd.DataFrame(rows, columns=["probe", "encoder", "seed", "label_name", "dice"])
        >>> len(plot_probe(df).axes)
        1
    """
    probes = list(dict.fromkeys(table["probe"]))
    labels = list(dict.fromkeys(table["label_name"]))
    encoders = list(dict.fromkeys(table["encoder"]))
    fig = _new_figure(max(4.0, 1.2 * len(labels)) * len(probes), 3.5)
    axes = np.atleast_1d(fig.subplots(1, len(probes), sharey=True))
    width = 0.7 / max(1, len(encoders))
    colors = ("tab:blue", "tab:grey", "tab:orange", "tab:green")
    for ax, probe in zip(axes, probes, strict=True):
        part = table[table["probe"] == probe]
        for j, enc in enumerate(encoders):
            rows = part[part["encoder"] == enc]
            xs = [
                labels.index(v) + (j - (len(encoders) - 1) / 2) * width for v in rows["label_name"]
            ]
            ax.scatter(xs, rows["dice"], s=18, color=colors[j % len(colors)], label=enc)
            for k, name in enumerate(labels):
                values = rows.loc[rows["label_name"] == name, "dice"]
                if len(values):
                    x = k + (j - (len(encoders) - 1) / 2) * width
                    ax.hlines(float(values.mean()), x - width / 3, x + width / 3, color="black")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(f"{probe} probe")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("validation Dice (dots: seeds, bars: mean)")
    axes[-1].legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def plot_label_count_dice(rows: Any, *, title: str | None = None) -> Figure:
    """Test Dice against the number of labelled training subjects, one panel per test set.

    Args:
        rows: columns ``dataset``, ``labels`` (count), ``arm``, ``seed``, ``dice`` (a pandas
            DataFrame; one row per run and test set).
        title: figure title.

    Example:
        >>> import pandas as pd
        >>> rows = pd.DataFrame([("syn", 1, "pretrained", 0, 0.6), ("syn", 1, "scratch", 0, 0.5)],
        ...                     columns=["dataset", "labels", "arm", "seed", "dice"])
        >>> len(plot_label_count_dice(rows).axes)
        1
    """
    datasets = list(dict.fromkeys(rows["dataset"]))
    arms = list(dict.fromkeys(rows["arm"]))
    counts = sorted(set(int(c) for c in rows["labels"]))
    fig = _new_figure(4.0 * len(datasets), 3.5)
    axes = np.atleast_1d(fig.subplots(1, len(datasets), sharey=True))
    colors = ("tab:orange", "tab:grey", "tab:blue", "tab:green")
    width = 0.6 / max(1, len(arms))
    for ax, dataset in zip(axes, datasets, strict=True):
        part = rows[rows["dataset"] == dataset]
        for j, arm in enumerate(arms):
            offset = (j - (len(arms) - 1) / 2) * width
            sub = part[part["arm"] == arm]
            xs = [counts.index(int(c)) + offset for c in sub["labels"]]
            ax.scatter(xs, sub["dice"], s=18, color=colors[j % len(colors)], label=arm)
            means = sub.groupby("labels")["dice"].mean()
            ax.plot(
                [counts.index(int(c)) + offset for c in means.index],
                means.to_numpy(),
                color=colors[j % len(colors)],
                marker="_",
                markersize=14,
                linestyle="-",
            )
        ax.set_xticks(range(len(counts)), [str(c) for c in counts])
        ax.set_xlabel("labelled training subjects")
        ax.set_title(str(dataset))
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean test Dice (dots: seeds, line: mean)")
    axes[-1].legend(loc="lower right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


__all__ = [
    "LABEL_RGB",
    "MASKED_RGB",
    "VIEWS",
    "label_sides",
    "plot_label_count_dice",
    "plot_loss_curves",
    "plot_probe",
    "plot_reconstruction",
    "save_figure",
]
