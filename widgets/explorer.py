"""The ablation explorer: plots and tables over a sweep's results, live from a few dropdowns.

Controls choose the x axis (any swept field, or ``config``, ``arm``, ``dataset``, ``seed``,
``label_name``), the hue and the facet (one panel per value), the metric, the aggregation, and a
filter per field. Every change redraws:

* **mean** — one point per run (its mean over cases and labels) enters a seaborn point plot: the
  mean over the runs at each x / hue, with their standard deviation as error bars; the table lists
  mean, std and the number of runs and datasets.
* **mean rank** — the paper's ranking (:func:`toolkit.results.mean_rank`): within each panel, the
  x / hue combinations are ranked on every dataset (1 = best, ties averaged) and the ranks
  averaged over datasets; with ``dataset`` on the x axis or as hue, the per-dataset ranks are shown.

The table below the plot is what the plot shows; *export* writes both (PNG and CSV). A results
table from a sweep folder can be re-read with *reload* while the sweep is still running: runs that
have not finished are simply absent (the table says how many runs and datasets each point has).

Example (in a notebook)::

    from widgets.explorer import AblationExplorer
    explorer = AblationExplorer("sweeps/mask_ratio")     # a sweep folder or a results.csv
    explorer                                             # displays
    explorer.x.value = "mask.ratio"; explorer.hue.value = "mask.variant"
    explorer.export("figures")                           # (PNG path, CSV path)
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "AGGREGATIONS",
    "MISSING",
    "NONE",
    "SCRATCH",
    "AblationExplorer",
    "factor_columns",
    "metric_columns",
]

PathLike = str | os.PathLike[str]

#: The "no hue / no facet" choice.
NONE = "(none)"
#: Aggregations offered.
AGGREGATIONS = ("mean", "mean rank")
#: Shown for a field that does not apply to a row.
MISSING = "n/a"
#: Shown for a pretraining field of a from-scratch run (e.g. its ``mask.ratio``).
SCRATCH = "scratch"
#: Non-swept columns that can be on an axis, in this order after the swept fields.
_EXTRA_FACTORS = ("config", "arm", "dataset", "seed", "label_name")
_METRICS = ("dice", "hd95_mm", "ref_volume_ml", "pred_volume_ml", "train_time_s",
            "pretrain_time_s", "num_params")  # fmt: skip
_MAX_PANELS = 12


def factor_columns(table: pd.DataFrame) -> list[str]:
    """Columns that can be an axis, a hue, a facet or a filter: swept fields first."""
    from toolkit.results import swept_fields

    return [*swept_fields(table), *(c for c in _EXTRA_FACTORS if c in table.columns)]


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Numeric result columns with at least one value."""
    import pandas as pd

    out = []
    for col in _METRICS:
        if col in table.columns:
            values = pd.to_numeric(table[col], errors="coerce")
            if values.notna().any():
                out.append(col)
    return out


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        # Seeds and integer fields read back from CSV as floats when a column has gaps.
        return str(int(value))
    return str(value)


def _levels(values: Sequence[str]) -> list[str]:
    """Distinct values, numbers in numeric order first, then text, then ``n/a``."""

    def key(v: str) -> tuple[int, float, str]:
        if v == MISSING:
            return (2, 0.0, v)
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return sorted(set(values), key=key)


def _sorted(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Rows in the order of :func:`_levels` of each column (numbers numerically, n/a last)."""
    cols = [c for c in columns if c in table.columns]
    if table.empty or not cols:
        return table
    ranks = {c: {v: i for i, v in enumerate(_levels(table[c].tolist()))} for c in cols}
    keys = table[cols].apply(lambda col: col.map(ranks[col.name]))
    order = keys.sort_values(cols, kind="stable").index
    return table.loc[order].reset_index(drop=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text).strip("-") or "plot"


class AblationExplorer(W.VBox):
    """Interactive plots of a sweep's results (see the module docstring).

    Args:
        results: a results table (:mod:`toolkit.results`), a sweep folder or a results CSV.
        metric: initial metric.
        x: initial x axis (default: the first swept field, else ``config``).
        hue: initial hue (default: the second swept field, else ``arm``).
        facet: initial facet (default: none).
        aggregation: ``mean`` or ``mean rank``.
        export_dir: initial folder of *export* (default: ``<sweep folder>/explorer`` or
            ``./explorer``).

    Attributes:
        x, hue, facet, metric, aggregation: the controls (``Dropdown`` / ``ToggleButtons``).
        filters: field -> ``SelectMultiple`` of its values (all selected at first).
        image: the plot as a PNG ``Image``; table_view: ``HTML`` of the table.
        figure: the matplotlib Figure last drawn; summary: the DataFrame shown (and exported);
            selection: the filtered rows.
        status: ``HTML`` line with counts and messages.
    """

    def __init__(
        self,
        results: pd.DataFrame | PathLike,
        *,
        metric: str = "dice",
        x: str | None = None,
        hue: str | None = None,
        facet: str | None = None,
        aggregation: str = "mean",
        export_dir: PathLike | None = None,
    ) -> None:
        import pandas as pd

        self.source: Path | None = None if isinstance(results, pd.DataFrame) else Path(results)
        self._quiet = True
        self.table = self._load(results)
        self.figure: Figure | None = None
        self.summary = pd.DataFrame()
        self.selection = pd.DataFrame()
        self._points = pd.DataFrame()  # one score per run and group: what the point plot draws

        factors = factor_columns(self.table)
        swept = [f for f in factors if "." in f]
        x = x or (swept[0] if swept else "config")
        hue = hue or (swept[1] if len(swept) > 1 else ("arm" if "arm" in factors else None))
        self.x = W.Dropdown(options=factors, value=x, description="x axis")
        self.hue = W.Dropdown(options=[NONE, *factors], value=hue or NONE, description="hue")
        self.facet = W.Dropdown(options=[NONE, *factors], value=facet or NONE, description="facet")
        metrics = metric_columns(self.table) or ["dice"]
        self.metric = W.Dropdown(
            options=metrics, value=metric if metric in metrics else metrics[0], description="metric"
        )
        self.aggregation = W.ToggleButtons(
            options=list(AGGREGATIONS), value=aggregation, description="aggregate"
        )
        self.filters: dict[str, W.SelectMultiple] = {}
        self.filter_box = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self.image = W.Image(format="png")
        self.table_view = W.HTML()
        self.status = W.HTML()
        default_dir = (
            (self.source if self.source.is_dir() else self.source.parent) / "explorer"
            if self.source is not None
            else Path("explorer")
        )
        self.export_dir = W.Text(value=str(export_dir or default_dir), description="export to")
        self.export_button = W.Button(description="export PNG + CSV", icon="download")
        self.reload_button = W.Button(
            description="reload", icon="refresh", disabled=self.source is None
        )
        self._build_filters()

        for control in (self.x, self.hue, self.facet, self.metric, self.aggregation):
            control.observe(self._on_change, names="value")
        self.export_button.on_click(lambda _: self._export_clicked())
        self.reload_button.on_click(lambda _: self.reload())
        super().__init__(
            [
                W.HBox([self.x, self.hue, self.facet]),
                W.HBox([self.metric, self.aggregation]),
                W.HTML("<b>filters</b> (ctrl/shift-click to choose several)"),
                self.filter_box,
                self.image,
                self.table_view,
                W.HBox([self.export_dir, self.export_button, self.reload_button]),
                self.status,
            ]
        )
        self._quiet = False
        self.refresh()

    # ---------------------------------------------------------------------------------------------
    # Data

    def _load(self, results: pd.DataFrame | PathLike) -> pd.DataFrame:
        import pandas as pd

        from toolkit.results import load_results

        table = results.copy() if isinstance(results, pd.DataFrame) else load_results(results)
        # Factor columns hold display strings, so that gaps and numbers share one axis. A swept
        # field is empty where it does not apply: for scratch runs that reads "scratch".
        scratch = table["arm"].eq("scratch") if "arm" in table.columns else None
        for col in factor_columns(table):
            table[col] = [_text(v) for v in table[col]]
            if scratch is not None and "." in col:
                table.loc[scratch & table[col].eq(MISSING), col] = SCRATCH
        return table

    def _build_filters(self) -> None:
        old = {name: set(w.value) for name, w in self.filters.items()}
        old_options = {name: set(w.options) for name, w in self.filters.items()}
        self.filters = {}
        for col in factor_columns(self.table):
            levels = _levels(self.table[col].tolist())
            if col in old:
                # Keep the user's choice; values that appeared since the last load are selected.
                keep = [v for v in levels if v in old[col] or v not in old_options[col]]
            else:
                keep = levels
            widget = W.SelectMultiple(
                options=levels,
                value=keep,
                description=col,
                rows=min(5, max(2, len(levels))),
                style={"description_width": "initial"},
            )
            widget.observe(self._on_change, names="value")
            self.filters[col] = widget
        self.filter_box.children = tuple(self.filters.values())

    def reload(self) -> None:
        """Re-read the sweep folder or CSV (e.g. while the sweep runs) and redraw."""
        if self.source is None:
            return
        self._quiet = True
        try:
            self.table = self._load(self.source)
            metrics = metric_columns(self.table) or ["dice"]
            if list(self.metric.options) != metrics:
                current = self.metric.value
                self.metric.options = metrics
                self.metric.value = current if current in metrics else metrics[0]
            factors = factor_columns(self.table)
            for dropdown, extra in ((self.x, []), (self.hue, [NONE]), (self.facet, [NONE])):
                if list(dropdown.options) != [*extra, *factors]:
                    current = dropdown.value
                    dropdown.options = [*extra, *factors]
                    fallback = extra[0] if extra else factors[0]
                    dropdown.value = current if current in dropdown.options else fallback
            self._build_filters()
        finally:
            self._quiet = False
        self.refresh()

    # ---------------------------------------------------------------------------------------------
    # Drawing

    def _on_change(self, _: Any) -> None:
        if not self._quiet:
            self.refresh()

    @property
    def hue_column(self) -> str | None:
        """The hue column, or None."""
        return None if self.hue.value == NONE else str(self.hue.value)

    @property
    def facet_column(self) -> str | None:
        """The facet column, or None."""
        return None if self.facet.value == NONE else str(self.facet.value)

    def _filtered(self) -> pd.DataFrame:
        mask = None
        for col, widget in self.filters.items():
            hit = self.table[col].isin(list(widget.value))
            mask = hit if mask is None else mask & hit
        return self.table if mask is None else self.table[mask]

    def _group_columns(self) -> list[str]:
        cols = [str(self.x.value), self.hue_column, self.facet_column]
        return list(dict.fromkeys(c for c in cols if c is not None))

    def _mean_table(self, rows: pd.DataFrame) -> pd.DataFrame:
        """One score per run (and per group value), then mean / std / counts per group."""
        metric = str(self.metric.value)
        cols = self._group_columns()
        unit = ["run"] if "run" in rows.columns else ["dataset", "seed"]
        keys = list(dict.fromkeys([*unit, *cols]))
        per_run = rows.groupby(keys, sort=False)[metric].mean().reset_index()
        extra = [c for c in ("dataset",) if c in rows.columns and c not in keys]
        if extra:
            first = rows.groupby(unit, sort=False)[extra].first().reset_index()
            per_run = per_run.merge(first, on=unit, how="left")
        self._points = per_run
        agg: dict[str, Any] = {
            metric: (metric, "mean"),
            "std": (metric, "std"),
            "n_runs": (metric, "count"),
        }
        if "dataset" in per_run.columns:
            agg["n_datasets"] = ("dataset", "nunique")
        return _sorted(per_run.groupby(cols, sort=False).agg(**agg).reset_index(), cols)

    def _rank_table(self, rows: pd.DataFrame) -> pd.DataFrame:
        import pandas as pd

        from toolkit.results import dataset_ranks, mean_rank

        metric = str(self.metric.value)
        by = [c for c in dict.fromkeys([str(self.x.value), self.hue_column]) if c]
        per_dataset = "dataset" in by
        by = [c for c in by if c != "dataset"]
        work = rows.assign(_all="all") if not by else rows
        keys = by or ["_all"]
        facet = self.facet_column
        parts = []
        groups = (
            [(None, work)] if facet is None or facet in keys else work.groupby(facet, sort=False)
        )
        for value, sub in groups:
            if per_dataset:
                part = dataset_ranks(sub, metric, keys).drop(columns=["std", "n_seeds"])
            else:
                part = mean_rank(sub, metric, keys)
            if facet is not None and facet not in keys and facet != "dataset":
                part[facet] = value
            elif facet == "dataset" and not per_dataset:
                part["dataset"] = value
            parts.append(part)
        out = pd.concat(parts, ignore_index=True)
        return out.drop(columns=["_all"]) if "_all" in out.columns else out

    def refresh(self) -> None:
        """Recompute the table and redraw the plot from the current controls."""
        from toolkit.errors import ConfigError
        from toolkit.results import HIGHER_IS_BETTER

        rows = self._filtered()
        self.selection = rows
        metric = str(self.metric.value)
        rank = self.aggregation.value == "mean rank"
        message = ""
        if rows.empty or metric not in rows.columns or rows[metric].notna().sum() == 0:
            message = "no rows match the filters" if not self.table.empty else "no results yet"
            self.summary = rows.iloc[0:0]
        elif rank and metric not in HIGHER_IS_BETTER:
            message = f"{metric} cannot be ranked (no better direction); choose another metric"
            self.summary = rows.iloc[0:0]
        else:
            try:
                self.summary = self._rank_table(rows) if rank else self._mean_table(rows)
            except ConfigError as exc:
                message = str(exc)
                self.summary = rows.iloc[0:0]
        self.figure = self._draw(message)
        self.image.value = self._png(self.figure)
        self.table_view.value = self._html(self.summary)
        runs = rows["run"].nunique() if "run" in rows.columns else len(rows)
        datasets = rows["dataset"].nunique() if "dataset" in rows.columns else 0
        counts = f"{runs} run(s), {datasets} dataset(s) selected of {len(self.table)} rows"
        self.status.value = f"{counts}. {message}" if message else counts

    def _draw(self, message: str) -> Figure:
        import seaborn as sns
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        metric = str(self.metric.value)
        rank = self.aggregation.value == "mean rank"
        facet = self.facet_column
        panels: list[Any] = [None]
        if not message and facet is not None and facet in self.summary.columns:
            present = set(self.summary[facet])
            panels = list(_levels(list(present)))[:_MAX_PANELS]
        width = min(4.5 * len(panels), 18.0)
        fig = Figure(figsize=(max(width, 5.0), 3.8), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        if message:
            axes[0].text(0.5, 0.5, message, ha="center", va="center", transform=axes[0].transAxes)
            axes[0].set_axis_off()
            return fig
        x, hue = str(self.x.value), self.hue_column
        if rank:
            data = self.summary
            y = "rank" if "rank" in data.columns else "mean_rank"
        else:
            data, y = self._points, metric
        x_order = _levels(data[x].tolist())
        hue_order = _levels(data[hue].tolist()) if hue else None
        for ax, value in zip(axes, panels, strict=True):
            sub = data if value is None else data[data[facet] == value]
            sns.pointplot(
                data=sub,
                x=x,
                y=y,
                hue=hue,
                order=x_order,
                hue_order=hue_order,
                errorbar=None if rank else "sd",
                # seaborn divides by (hue levels - 1) when dodging
                dodge=0.25 if hue_order and len(hue_order) > 1 else False,
                markersize=5,
                linewidth=1.2,
                ax=ax,
            )
            if value is not None:
                ax.set_title(f"{facet} = {value}")
            ax.set_xlabel(x)
            ax.grid(axis="y", alpha=0.3)
            if ax is not axes[-1] and ax.get_legend() is not None:
                ax.get_legend().remove()
        if rank:
            axes[0].set_ylabel("rank on the dataset" if y == "rank" else "mean rank (1 = best)")
            if not axes[0].yaxis_inverted():
                axes[0].invert_yaxis()  # the best configuration on top
        else:
            from toolkit.results import HIGHER_IS_BETTER

            direction = HIGHER_IS_BETTER.get(metric)
            hint = "" if direction is None else ("higher" if direction else "lower")
            axes[0].set_ylabel(f"{metric} ({hint} is better)" if hint else metric)
        legend = axes[-1].get_legend()
        if legend is not None:
            legend.set_title(hue)
        return fig

    @staticmethod
    def _png(fig: Figure) -> bytes:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    @staticmethod
    def _html(table: pd.DataFrame) -> str:
        if table.empty:
            return "<i>nothing selected</i>"
        return table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")

    # ---------------------------------------------------------------------------------------------
    # Export

    def export(self, directory: PathLike | None = None) -> tuple[Path, Path]:
        """Write the current plot (PNG) and table (CSV); returns their paths.

        Args:
            directory: target folder (default: the *export to* box).
        """
        from toolkit.visualize import save_figure

        if self.figure is None:
            self.refresh()
        assert self.figure is not None
        folder = Path(directory if directory is not None else self.export_dir.value)
        parts = [
            str(self.metric.value),
            self.aggregation.value.replace(" ", "_"),
            str(self.x.value),
        ]
        if self.hue_column:
            parts.append(f"by_{self.hue_column}")
        if self.facet_column:
            parts.append(f"per_{self.facet_column}")
        stem = _slug("_".join(parts))
        png = save_figure(self.figure, folder / f"{stem}.png")
        csv = folder / f"{stem}.csv"
        tmp = csv.with_name(f".{csv.name}.tmp")
        self.summary.to_csv(tmp, index=False)
        tmp.replace(csv)
        return png, csv

    def _export_clicked(self) -> None:
        try:
            png, csv = self.export()
        except OSError as exc:
            self.status.value = f"export failed: {exc}"
            return
        self.status.value = f"written: {png} and {csv}"
