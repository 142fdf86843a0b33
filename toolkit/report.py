"""Figures of segmentation results and a small Markdown report writer.

Figures are :class:`matplotlib.figure.Figure` objects built without ``pyplot`` (as in
:mod:`toolkit.visualize`); :class:`MarkdownReport` saves them as PNG next to the report and links
them, so a report folder is self-contained and readable on GitHub or in any Markdown viewer.

Example:
    >>> import tempfile, pandas as pd
    >>> rows = [{"run": r, "label_name": "wm", "dice": d} for r, d in [("a", 0.8), ("b", 0.7)]]
    >>> fig = plot_dice_by_label(pd.DataFrame(rows), hue="run")
    >>> report = MarkdownReport(tempfile.mkdtemp(), "Demo")
    >>> _ = report.figure(fig, "dice", "Dice per label")
    >>> report.write().name
    'report.md'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from toolkit.orientation import display_slice
from toolkit.visualize import LABEL_RGB, label_sides, save_figure

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike[str]

#: Label colours of overlays (label 1, 2, ...); background is transparent.
#: Label colours of the other views (toolkit.visualize.LABEL_RGB), so a class looks the same.
LABEL_COLOURS = tuple("#{:02x}{:02x}{:02x}".format(*rgb) for rgb in LABEL_RGB)


# --------------------------------------------------------------------------------------------------
# Figures


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_dice_by_label(
    df: pd.DataFrame, *, hue: str = "arm", col: str | None = None, title: str | None = None
) -> Figure:
    """Bars of mean Dice per label (± sd over cases), one colour per ``hue`` value, cases as dots.

    Args:
        df: tidy metrics with columns ``label_name``, ``dice``, ``hue`` (and ``col`` if given).
        hue: column that tells the compared runs apart (e.g. ``arm``).
        col: optional column with one panel per value (e.g. ``dataset``).
        title: figure title.
    """
    import seaborn as sns

    panels = [None] if col is None else list(dict.fromkeys(df[col]))
    fig = _new_figure(4.2 * len(panels) + 0.8, 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    order = list(dict.fromkeys(df["label_name"]))
    hue_order = list(dict.fromkeys(df[hue]))
    for ax, panel in zip(axes, panels, strict=True):
        data = df if panel is None else df[df[col] == panel]
        sns.barplot(
            data=data,
            x="label_name",
            y="dice",
            hue=hue,
            order=order,
            hue_order=hue_order,
            errorbar="sd",
            ax=ax,
            alpha=0.8,
        )
        sns.stripplot(
            data=data,
            x="label_name",
            y="dice",
            hue=hue,
            order=order,
            hue_order=hue_order,
            dodge=True,
            ax=ax,
            palette="dark:black",
            size=3,
            legend=False,
        )
        ax.set_ylim(0, 1)
        ax.set_xlabel("")
        ax.set_ylabel("Dice")
        if panel is not None:
            ax.set_title(str(panel))
        if ax is not axes[-1] and ax.get_legend() is not None:
            ax.get_legend().remove()
    if title:
        fig.suptitle(title)
    return fig


def plot_dice_vs_k(table: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Mean foreground Dice against the number of labelled training cases, per arm.

    Each dot is one run (k, arm, seed) averaged over test cases and labels; the line is the mean
    over runs and the band its standard deviation.

    Args:
        table: tidy label-efficiency table with columns ``k``, ``arm``, ``seed``, ``dice``.
        title: figure title.
    """
    import seaborn as sns

    runs = table.groupby(["k", "arm", "seed"], as_index=False)["dice"].mean()
    fig = _new_figure(5.0, 3.6)
    ax = fig.subplots()
    sns.lineplot(data=runs, x="k", y="dice", hue="arm", errorbar="sd", marker="o", ax=ax)
    sns.scatterplot(data=runs, x="k", y="dice", hue="arm", ax=ax, legend=False, alpha=0.5, s=20)
    ks = sorted(runs["k"].unique())
    if len(ks) > 1 and ks[0] > 0 and ks[-1] / ks[0] >= 8:
        ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled training cases (k)")
    ax.set_ylabel("mean Dice (test)")
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    return fig


def _label_cmap(num_labels: int) -> ListedColormap:
    colours = [LABEL_COLOURS[i % len(LABEL_COLOURS)] for i in range(num_labels)]
    return ListedColormap(colours)


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    # The toolkit's one orientation rule: radiological, superior / anterior up.
    return display_slice(vol, axis, index)


def plot_segmentation_overlay(
    image: np.ndarray,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    label_names: Mapping[int, str] | None = None,
    axis: int = 2,
    title: str | None = None,
) -> Figure:
    """Image, reference and predicted label maps on one slice, overlays side by side.

    Args:
        image: (D, H, W) intensities (canonical RAS orientation reads best).
        reference: (D, H, W) integer label map.
        predictions: name -> (D, H, W) integer label map, e.g. ``{"pretrained": ..., ...}``.
        label_names: value -> name for the legend.
        axis: axis the slice cuts (2 = axial in RAS).
        title: figure title.

    The slice goes through the centre of mass of the reference foreground.
    """
    from matplotlib.patches import Patch

    fg = np.argwhere(reference > 0)
    index = int(fg[:, axis].mean()) if len(fg) else reference.shape[axis] // 2
    values = sorted(int(v) for v in np.unique(reference) if v > 0)
    for pred in predictions.values():
        values = sorted(set(values) | {int(v) for v in np.unique(pred) if v > 0})
    top = max(values) if values else 1
    cmap = _label_cmap(top)
    panels = [("reference", reference), *predictions.items()]
    fig = _new_figure(2.6 * (len(panels) + 1), 3.0)
    axes = fig.subplots(1, len(panels) + 1)
    img = _slice(image, axis, index)
    lo, hi = np.percentile(img, [1, 99.5]) if img.size else (0.0, 1.0)
    axes[0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
    axes[0].set_title("image")
    for ax, (name, lab) in zip(axes[1:], panels, strict=True):
        sl = _slice(lab, axis, index).astype(float)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        ax.imshow(
            np.ma.masked_where(sl == 0, sl),
            cmap=cmap,
            vmin=0.5,
            vmax=top + 0.5,
            alpha=0.5,
            interpolation="nearest",
        )
        ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    label_sides(axes[0], axis)
    if values:
        names = label_names or {}
        handles = [Patch(color=cmap(v - 1), label=names.get(v, str(v)), alpha=0.6) for v in values]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------------------------------
# Markdown


class MarkdownReport:
    """A Markdown document with figures saved beside it (``figures/<name>.png``).

    Args:
        out_dir: report folder (created).
        title: first heading.
    """

    def __init__(self, out_dir: PathLike, title: str) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.blocks: list[str] = [f"# {title}"]

    def heading(self, text: str, level: int = 2) -> None:
        """Add a heading (level 2 = section)."""
        self.blocks.append(f"{'#' * level} {text}")

    def text(self, text: str) -> None:
        """Add a paragraph (Markdown allowed)."""
        self.blocks.append(text.strip())

    def bullets(self, items: Sequence[str]) -> None:
        """Add a bullet list."""
        self.blocks.append("\n".join(f"- {item}" for item in items))

    def table(self, df: pd.DataFrame | str, float_format: str = "{:.3f}") -> None:
        """Add a table: a DataFrame (formatted as a pipe table) or ready Markdown."""
        if isinstance(df, str):
            self.blocks.append(df)
            return
        self.blocks.append(dataframe_to_markdown(df, float_format=float_format))

    def figure(self, fig: Figure, name: str, caption: str) -> Path:
        """Save ``fig`` as ``figures/<name>.png``, add it with a caption; return the PNG path."""
        path = save_figure(fig, self.out_dir / "figures" / f"{name}.png")
        self.blocks.append(f"![{caption}](figures/{name}.png)\n\n*{caption}*")
        return path

    def image(self, path: PathLike, caption: str) -> None:
        """Link an existing PNG (copied into ``figures/`` if it lies outside the report folder)."""
        src = Path(path)
        dst = self.out_dir / "figures" / src.name
        if src.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            tmp.write_bytes(src.read_bytes())
            tmp.replace(dst)
        self.blocks.append(f"![{caption}](figures/{dst.name})\n\n*{caption}*")

    def write(self, name: str = "report.md") -> Path:
        """Write the document atomically and return its path."""
        path = self.out_dir / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n\n".join(self.blocks) + "\n")
        tmp.replace(path)
        return path


def dataframe_to_markdown(df: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A pipe table of ``df`` (no index); floats via ``float_format``, NaN as ``n/a``."""

    def cell(v: Any) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if np.isnan(v) else float_format.format(v)
        return str(v)

    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


__all__ = [
    "MarkdownReport",
    "dataframe_to_markdown",
    "plot_dice_by_label",
    "plot_dice_vs_k",
    "plot_segmentation_overlay",
]
