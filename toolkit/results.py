"""One tidy table of sweep results, and the paper's ways of comparing configurations.

The table (``SWEEP_DIR/results.csv``, see :func:`collect_results`) has one row per fine-tuning
run x evaluated case x label. Its columns:

=================================  =============================================================
``sweep``, ``run``                 sweep name, run folder
``arm``                            ``pretrained`` or ``scratch``
``config``                         the compared configuration, e.g. ``mask.ratio=0.6``
``dataset``, ``seed``              downstream set, fine-tuning seed
``pretrain_run``                   pretraining run the weights come from (empty for scratch)
``<section>.<field>``              every swept config field (only these names contain a dot);
                                   empty where it does not apply (e.g. ``mask.*`` of scratch runs)
``case``, ``subject``              evaluated case
``label``, ``label_name``          structure (background excluded)
``dice``, ``hd95_mm``              metrics (HD95 empty where undefined, see ``toolkit.evaluate``)
``ref_volume_ml``, ``pred_volume_ml``
``num_params``                     weights of the fine-tuned network
``train_time_s``                   wall time of the fine-tuning call
``pretrain_time_s``                wall time of the pretraining call (empty for scratch)
=================================  =============================================================

Comparisons average in a fixed order, so every configuration gets the same weight per dataset:
cases and labels are averaged per run (one score per config x dataset x seed), seeds per
config x dataset. Ranks are taken per dataset (1 = best, ties get the average of the ranks they
span, as ``scipy.stats.rankdata`` does) and averaged over datasets: the paper's *mean rank*.

Example:
    >>> import pandas as pd
    >>> t = pd.DataFrame({"config": ["a", "b", "c"] * 2, "dataset": ["x"] * 3 + ["y"] * 3,
    ...                   "dice": [0.8, 0.8, 0.7, 0.6, 0.9, 0.5]})
    >>> r = mean_rank(t)  # on x, a and b tie for ranks 1 and 2: both get 1.5
    >>> list(zip(r["config"], r["mean_rank"]))
    [('b', 1.25), ('a', 1.75), ('c', 3.0)]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ConfigError, DataError
from toolkit.sweep.layout import (
    EVAL_DIR,
    EVAL_METRICS,
    RESULTS_FILE,
    format_value,
    read_done,
    read_plan,
)

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike[str]

#: Columns that identify a run (before the swept fields).
RUN_COLUMNS = ("sweep", "run", "arm", "config", "dataset", "seed", "pretrain_run")
#: Columns per evaluated case x label (from :func:`toolkit.evaluate.evaluate`).
CASE_COLUMNS = ("case", "subject", "label", "label_name")
METRIC_COLUMNS = ("dice", "hd95_mm", "ref_volume_ml", "pred_volume_ml")
RUN_FIGURES = ("num_params", "train_time_s", "pretrain_time_s")
#: Scores equal to this many decimals tie when ranking.
RANK_DECIMALS = 10
#: Whether a larger value is better, for metrics that can be ranked.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "hd95_mm": False,
    "num_params": False,
    "train_time_s": False,
    "pretrain_time_s": False,
}


# --------------------------------------------------------------------------------------------------
# Building the table from a sweep folder


def _cell(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return format_value(value)
    return value


def results_columns(fields: Sequence[str]) -> list[str]:
    """Column order of the results table for the given swept fields."""
    return [*RUN_COLUMNS, *fields, *CASE_COLUMNS, *METRIC_COLUMNS, *RUN_FIGURES]


def collect_results(sweep_dir: PathLike) -> pd.DataFrame:
    """Gather the finished fine-tuning runs of a sweep (finished or not) into one tidy table.

    Only runs with ``done.json`` and ``evaluation/metrics.csv`` contribute, so a sweep that is
    still running or partly failed gives the rows it has.

    Args:
        sweep_dir: the folder :func:`toolkit.sweep.run_sweep` writes.

    Returns:
        One row per run x case x label (columns in the module docstring).

    Raises:
        DataError: no ``plan.json`` or an unreadable metrics file.
    """
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    plan = read_plan(sweep_dir)
    fields = list(plan.get("axes", {}))
    columns = results_columns(fields)
    done: dict[str, dict[str, Any]] = {}
    for run in plan["runs"]:
        info = read_done(sweep_dir / run["name"])
        if info is not None:
            done[run["name"]] = info
    frames = []
    for run in plan["runs"]:
        if run["kind"] != "finetune" or run["name"] not in done:
            continue
        path = sweep_dir / run["name"] / EVAL_DIR / EVAL_METRICS
        try:
            metrics = pd.read_csv(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable metrics table ({exc})") from None
        missing = [c for c in (*CASE_COLUMNS, "dice", "hd95_mm") if c not in metrics.columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        info = done[run["name"]]
        pt = done.get(run["pretrain_run"] or "", {})
        values = run.get("values", {})
        frame = metrics.reindex(columns=[*CASE_COLUMNS, *METRIC_COLUMNS]).copy()
        constants: dict[str, Any] = {
            "sweep": plan.get("sweep", sweep_dir.name),
            "run": run["name"],
            "arm": run["arm"],
            "config": run["config"],
            "dataset": run["dataset"],
            "seed": run["seed"],
            "pretrain_run": run["pretrain_run"],
            "num_params": info.get("num_params", math.nan),
            "train_time_s": info.get("train_time_s", math.nan),
            "pretrain_time_s": pt.get("train_time_s", math.nan),
        }
        for name in fields:
            constants[name] = _cell(values.get(name))
        for key, value in constants.items():
            frame[key] = value
        frames.append(frame[columns])
    if not frames:
        return pd.DataFrame(columns=columns)
    # Numbers with gaps (a scratch run has no mask.ratio) become floats with NaN, as after a CSV
    # round trip, so a table collected here and one read from results.csv compare equal.
    return pd.concat(frames, ignore_index=True).infer_objects()


def write_results(sweep_dir: PathLike) -> Path:
    """Collect the results of a sweep and write ``SWEEP_DIR/results.csv`` (atomically)."""
    sweep_dir = Path(sweep_dir)
    table = collect_results(sweep_dir)
    path = sweep_dir / RESULTS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def load_results(source: PathLike) -> pd.DataFrame:
    """A results table from a CSV file or, fresh from its run folders, from a sweep folder.

    Raises:
        DataError: the file is missing or not a results table.
    """
    import pandas as pd

    path = Path(source)
    if path.is_dir():
        return collect_results(path)
    if not path.is_file():
        raise DataError(f"{path}: no such results table or sweep folder")
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable results table ({exc})") from None
    missing = [c for c in ("config", "dataset", "dice") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not a results table (missing {', '.join(missing)})")
    return table


def swept_fields(table: pd.DataFrame) -> list[str]:
    """The swept config fields of a results table (the dotted column names), in table order."""
    return [c for c in table.columns if "." in str(c)]


# --------------------------------------------------------------------------------------------------
# Analysis


def _by(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def _direction(metric: str, higher_is_better: bool | None) -> bool:
    if higher_is_better is not None:
        return higher_is_better
    if metric not in HIGHER_IS_BETTER:
        raise ConfigError(
            f"{metric}: unknown direction; pass higher_is_better (known: "
            f"{', '.join(HIGHER_IS_BETTER)})"
        )
    return HIGHER_IS_BETTER[metric]


def _require(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(
            f"results table: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(map(str, table.columns))})"
        )


def run_scores(
    table: pd.DataFrame, metric: str = "dice", by: str | Sequence[str] = "config"
) -> pd.DataFrame:
    """One score per configuration x dataset x seed: the mean over cases and labels.

    Args:
        table: a results table (any granularity with the ``by`` columns, ``dataset`` and
            ``metric``; ``seed`` optional).
        metric: the column to average (NaN, e.g. undefined HD95, is skipped).
        by: the column(s) naming a configuration.

    Returns:
        Columns ``[*by, "dataset", "seed", metric]`` (``seed`` 0 if the table has none).
    """
    keys = _by(by)
    _require(table, [*keys, "dataset", metric])
    t = table if "seed" in table.columns else table.assign(seed=0)
    group = list(dict.fromkeys([*keys, "dataset", "seed"]))  # "seed" may itself be a key
    out = t.groupby(group, dropna=False, sort=True)[metric].mean()
    return out.reset_index()


def dataset_scores(
    table: pd.DataFrame, metric: str = "dice", by: str | Sequence[str] = "config"
) -> pd.DataFrame:
    """Mean (and spread over seeds) of each configuration on each dataset.

    Returns:
        Columns ``[*by, "dataset", metric, "std", "n_seeds"]``; ``std`` is the sample standard
        deviation of the per-seed scores (NaN with one seed).
    """
    keys = _by(by)
    scores = run_scores(table, metric, keys)
    grouped = scores.groupby([*keys, "dataset"], dropna=False, sort=True)[metric]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": metric, "count": "n_seeds"})


def dataset_ranks(
    table: pd.DataFrame,
    metric: str = "dice",
    by: str | Sequence[str] = "config",
    *,
    higher_is_better: bool | None = None,
) -> pd.DataFrame:
    """Rank the configurations on each dataset by their mean score (1 = best, ties averaged).

    Args:
        table: a results table.
        metric: the score; its direction comes from :data:`HIGHER_IS_BETTER` unless given.
        by: the column(s) naming a configuration.
        higher_is_better: override the direction.

    Returns:
        :func:`dataset_scores` with a ``rank`` column (scores equal to :data:`RANK_DECIMALS`
        decimals tie).
    """
    higher = _direction(metric, higher_is_better)
    scores = dataset_scores(table, metric, by)
    # Means of equal values can differ in the last bits depending on the order of summation;
    # rounding keeps true ties tied. A configuration without a score (NaN) is not ranked.
    rounded = scores[metric].round(RANK_DECIMALS)
    scores["rank"] = rounded.groupby(scores["dataset"], sort=False).rank(
        method="average", ascending=not higher
    )
    return scores


def mean_rank(
    table: pd.DataFrame,
    metric: str = "dice",
    by: str | Sequence[str] = "config",
    *,
    higher_is_better: bool | None = None,
) -> pd.DataFrame:
    """The paper's mean rank: per-dataset ranks averaged over datasets, best first.

    With a partly finished sweep a configuration is ranked only on the datasets it has results
    for; ``n_datasets`` says on how many.

    Returns:
        Columns ``[*by, "mean_rank", "n_datasets", metric]`` (``metric``: the mean over datasets
        of the per-dataset means), sorted by mean rank, then by the configuration.
    """
    keys = _by(by)
    ranks = dataset_ranks(table, metric, keys, higher_is_better=higher_is_better)
    grouped = ranks.groupby(keys, dropna=False, sort=True)
    out = grouped.agg(
        mean_rank=("rank", "mean"), n_datasets=("rank", "count"), **{metric: (metric, "mean")}
    ).reset_index()
    return out.sort_values(["mean_rank", *keys], kind="stable").reset_index(drop=True)


def mean_by_config(
    table: pd.DataFrame, metric: str = "dice", by: str | Sequence[str] = "config"
) -> pd.DataFrame:
    """Mean score of each configuration over datasets, with its spread over seeds.

    Each seed's score is the mean over datasets of that seed's runs; ``std`` is their sample
    standard deviation over seeds.

    Returns:
        Columns ``[*by, metric, "std", "n_datasets", "n_seeds"]``, best first.
    """
    keys = _by(by)
    scores = run_scores(table, metric, keys)
    seed_keys = list(dict.fromkeys([*keys, "seed"]))
    per_seed = scores.groupby(seed_keys, dropna=False, sort=True)[metric].mean()
    spread = per_seed.groupby(level=list(range(len(keys))), dropna=False).agg(["std", "count"])
    per_dataset = dataset_scores(table, metric, keys)
    mean = per_dataset.groupby(keys, dropna=False, sort=True).agg(
        **{metric: (metric, "mean"), "n_datasets": (metric, "count")}
    )
    out = mean.join(spread.rename(columns={"count": "n_seeds"})).reset_index()
    out = out[[*keys, metric, "std", "n_datasets", "n_seeds"]]
    higher = HIGHER_IS_BETTER.get(metric, True)
    return out.sort_values(metric, ascending=not higher, kind="stable").reset_index(drop=True)


def _baseline_mask(scores: pd.DataFrame, keys: list[str], baseline: Any) -> pd.Series:
    if isinstance(baseline, Mapping):
        _require(scores, list(baseline))
        mask = None
        for col, value in baseline.items():
            hit = scores[col] == value
            mask = hit if mask is None else mask & hit
        assert mask is not None
        return mask
    if len(keys) != 1:
        raise ConfigError(
            f"baseline: with several configuration columns ({', '.join(keys)}) give a mapping "
            "column -> value"
        )
    return scores[keys[0]] == baseline


def difference_to_baseline(
    table: pd.DataFrame,
    baseline: str | Mapping[str, Any] = "scratch",
    metric: str = "dice",
    by: str | Sequence[str] = "config",
    *,
    match: Sequence[str] = (),
) -> pd.DataFrame:
    """Difference of each configuration to a baseline, paired by dataset and seed.

    For every configuration, dataset and seed: ``score - baseline score`` on the same dataset
    with the same seed; then mean and sample standard deviation over seeds. The rows with
    ``dataset == "all"`` average the differences over datasets first (per seed), so their ``std``
    is the spread over seeds of the mean difference.

    Args:
        table: a results table.
        baseline: the value of the (single) ``by`` column that is the baseline, e.g. ``scratch``,
            or a mapping column -> value selecting it.
        metric: the score.
        by: the column(s) naming a configuration.
        match: further columns on which a configuration is paired with its baseline (e.g.
            ``["finetune.schedule"]`` when each schedule has its own scratch run).

    Returns:
        Columns ``[*by, "dataset", "diff", "std", "n_seeds"]`` for every non-baseline
        configuration; datasets in table order, then ``all``.

    Raises:
        ConfigError: no baseline rows, or several baseline configurations for one pairing.
    """
    import pandas as pd

    keys = _by(by)
    selectors = list(baseline) if isinstance(baseline, Mapping) else []
    extra = [c for c in dict.fromkeys([*match, *selectors]) if c not in keys]
    scores = run_scores(table, metric, [*keys, *extra])
    is_base = _baseline_mask(scores, keys, baseline)
    if not is_base.any():
        raise ConfigError(f"baseline {baseline!r}: no such configuration in the results")
    pair = ["dataset", "seed", *match]
    base = scores[is_base]
    if base.duplicated(pair).any():
        raise ConfigError(
            f"baseline {baseline!r}: several baseline configurations per dataset and seed; "
            "pair them with match=[...]"
        )
    base = base[[*pair, metric]].rename(columns={metric: "_base"})
    paired = scores[~is_base].merge(base, on=pair, how="inner")
    paired["diff"] = paired[metric] - paired["_base"]
    per_dataset = (
        paired.groupby([*keys, "dataset"], dropna=False, sort=False)["diff"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    per_seed = paired.groupby([*keys, "seed"], dropna=False, sort=False)["diff"].mean()
    overall = (
        per_seed.groupby(level=list(range(len(keys))), dropna=False, sort=False)
        .agg(["mean", "std", "count"])
        .reset_index()
        .assign(dataset="all")
    )
    out = pd.concat([per_dataset, overall], ignore_index=True)
    out = out.rename(columns={"mean": "diff", "count": "n_seeds"})
    return out[[*keys, "dataset", "diff", "std", "n_seeds"]]


def summary_table(
    table: pd.DataFrame,
    metric: str = "dice",
    by: str | Sequence[str] = "config",
    *,
    baseline: str | Mapping[str, Any] | None = None,
    match: Sequence[str] = (),
    higher_is_better: bool | None = None,
) -> pd.DataFrame:
    """The paper-style table: a row per configuration, a column per dataset, mean and mean rank.

    Args:
        table: a results table.
        metric: the score.
        by: the column(s) naming a configuration.
        baseline: add the difference to this configuration (see :func:`difference_to_baseline`).
        match: columns pairing a configuration with its baseline.
        higher_is_better: override the metric's direction.

    Returns:
        Columns ``[*by, <dataset>..., "mean", "mean_rank", "n_datasets"]`` and, with a baseline,
        ``"diff"`` / ``"diff_std"`` (over seeds) to it; sorted by mean rank.
    """
    keys = _by(by)
    ranks = mean_rank(table, metric, keys, higher_is_better=higher_is_better)
    scores = dataset_scores(table, metric, keys)
    wide = scores.pivot_table(index=keys, columns="dataset", values=metric, dropna=False)
    wide.columns = [str(c) for c in wide.columns]
    out = ranks.rename(columns={metric: "mean"}).merge(
        wide.reset_index(), on=keys, how="left", sort=False
    )
    datasets = list(wide.columns)
    out = out[[*keys, *datasets, "mean", "mean_rank", "n_datasets"]]
    if baseline is not None:
        diff = difference_to_baseline(table, baseline, metric, keys, match=match)
        diff = diff[diff["dataset"] == "all"].drop(columns=["dataset", "n_seeds"])
        out = out.merge(diff.rename(columns={"std": "diff_std"}), on=keys, how="left", sort=False)
    return out


__all__ = [
    "CASE_COLUMNS",
    "HIGHER_IS_BETTER",
    "METRIC_COLUMNS",
    "RANK_DECIMALS",
    "RUN_COLUMNS",
    "RUN_FIGURES",
    "collect_results",
    "dataset_ranks",
    "dataset_scores",
    "difference_to_baseline",
    "load_results",
    "mean_by_config",
    "mean_rank",
    "results_columns",
    "run_scores",
    "summary_table",
    "swept_fields",
    "write_results",
]
