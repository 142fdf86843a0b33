"""Sliding-window segmentation of whole volumes and metrics on the original image grid.

Prediction is :mod:`toolkit.predict`, the one path every front end uses: each case's preprocessed
volume (from the cache, preprocessed with the run's plan) goes through
:meth:`toolkit.predict.Predictor.segment` (MONAI's Gaussian-weighted ``sliding_window_inference``,
``evaluate.overlap``, optional mirror test-time augmentation), and the argmax label map is mapped
back to the original voxel grid and written with the image's header, byte-identical to what
``mae3d predict`` writes for the same run, case and options.

Metrics compare that map with the original label file, per case and label (background excluded),
with :func:`toolkit.seg_metrics.case_metrics`: Dice, HD95 in mm (``evaluate.hd_percentile``,
voxel spacing from the original affine; MONAI's numbers, computed on the labels' bounding box),
reference and predicted volume in ml. Summaries average HD95 over the cases where it is defined
and report how many were not (``hd95_undefined``), so a missed structure shows up instead of
silently lowering the mean.

Where evaluations are (one rule, whichever command made them): ``evaluate`` writes into
``out_dir`` (default ``RUN_DIR/evaluation/<dataset>``) and records that folder, the checkpoint,
split and whether predictions were written in ``RUN_DIR/evaluations.json``;
:func:`find_predictions` looks there first and then at the default folder (runs evaluated before
the record existed). ``mae3d view RUN`` finds a run's label maps this way, wherever they went.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 1
    >>> rows = case_metrics(ref, ref, {1: "a"}, (1.0, 1.0, 1.0))
    >>> rows[0]["dice"], rows[0]["hd95_mm"]
    (1.0, 0.0)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError
from toolkit.inference import (
    load_segmentation_checkpoint,
    predict_probabilities,
    segment_volume,
)
from toolkit.predict import preprocess_settings
from toolkit.seg_metrics import case_metrics

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.config import Config
    from toolkit.data.cache import Cache
    from toolkit.data.manifest import Manifest

PathLike = str | os.PathLike[str]

EVAL_DIR = "evaluation"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.csv"
PREDICTIONS_DIR = "predictions"
#: ``RUN_DIR/evaluations.json``: where each evaluation of the run went (see the module docstring).
EVALUATIONS_FILE = "evaluations.json"
COLUMNS = (
    "run",
    "checkpoint",
    "dataset",
    "case",
    "subject",
    "label",
    "label_name",
    "dice",
    "hd95_mm",
    "ref_volume_ml",
    "pred_volume_ml",
    "ref_empty",
    "pred_empty",
)


# --------------------------------------------------------------------------------------------------
# Summaries of the metrics table


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per run and label: cases, mean / std Dice, mean HD95 over defined cases, undefined count.

    Args:
        df: the tidy table of :func:`evaluate` (columns of :data:`COLUMNS`).
    """
    import pandas as pd

    if df.empty:
        return pd.DataFrame(
            columns=[
                "run",
                "label",
                "label_name",
                "cases",
                "dice_mean",
                "dice_std",
                "hd95_mean_mm",
                "hd95_undefined",
            ]
        )
    grouped = df.groupby(["run", "label", "label_name"], sort=True)
    out = grouped.agg(
        cases=("case", "nunique"),
        dice_mean=("dice", "mean"),
        dice_std=("dice", "std"),
        hd95_mean_mm=("hd95_mm", "mean"),
        hd95_undefined=("hd95_mm", lambda s: int(s.isna().sum())),
    ).reset_index()
    out["dice_std"] = out["dice_std"].fillna(0.0)
    return out


def format_summary(summary: pd.DataFrame) -> str:
    """A markdown table of :func:`summarize`'s output (Dice as mean ± std over cases; the mean
    alone for one case, which has no spread)."""
    header = "| run | label | cases | Dice | HD95 (mm) |\n|---|---|---:|---:|---:|"
    lines = [header]
    for row in summary.itertuples(index=False):
        hd = "n/a" if math.isnan(row.hd95_mean_mm) else f"{row.hd95_mean_mm:.2f}"
        if row.hd95_undefined:
            hd += f" ({row.hd95_undefined} undefined)"
        dice = f"{row.dice_mean:.3f}" + (f" ± {row.dice_std:.3f}" if row.cases > 1 else "")
        lines.append(f"| {row.run} | {row.label_name} | {row.cases} | {dice} | {hd} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Where a run's evaluations are


def evaluations(run_dir: PathLike) -> list[dict[str, Any]]:
    """The run's recorded evaluations, oldest first (``[]`` without a record).

    Each entry: ``dataset``, ``dir`` (absolute path of the evaluation folder), ``manifest``,
    ``checkpoint``, ``split`` (None = every case), ``predictions`` (label maps written),
    ``cases`` (how many).
    """
    import json

    run = Path(run_dir)
    path = run / EVALUATIONS_FILE
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8")).get("evaluations", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise DataError(f"{path}: not a record of evaluations ({exc})") from None
    # Folders inside the run are stored relative to it, so a moved run folder still finds them.
    return [{**e, "dir": str((run / e["dir"]).resolve())} for e in entries]


def record_evaluation(
    run_dir: PathLike,
    out_dir: PathLike,
    dataset: str,
    *,
    manifest: PathLike | None,
    checkpoint: str,
    split: str | None,
    predictions: bool,
    cases: int,
) -> Path:
    """Add (or replace) the entry for ``out_dir`` in ``RUN_DIR/evaluations.json``.

    Returns:
        The record's path.
    """
    import json

    run = Path(run_dir).resolve()
    folder = Path(out_dir).resolve()
    stored = str(folder.relative_to(run)) if folder.is_relative_to(run) else str(folder)
    entry = {
        "dataset": dataset,
        "dir": stored,
        "manifest": str(Path(manifest).resolve()) if manifest else None,
        "checkpoint": checkpoint,
        "split": split,
        "predictions": predictions,
        "cases": cases,
    }
    path = run / EVALUATIONS_FILE
    kept = []
    if path.is_file():
        try:
            kept = json.loads(path.read_text(encoding="utf-8")).get("evaluations", [])
        except (json.JSONDecodeError, AttributeError):
            kept = []  # unreadable: start a new record rather than fail the evaluation
    kept = [e for e in kept if (run / e.get("dir", "")).resolve() != folder] + [entry]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"evaluations": kept}, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def evaluated_manifest(run_dir: PathLike, manifest: PathLike | None = None) -> Path:
    """The labelled manifest a run's evaluation is about: ``manifest``, or the run's own
    ``data.finetune_manifest`` (what ``mae3d view`` and the notebook viewers open by default).

    Raises:
        DataError: no manifest given and the run folder has no config naming one.
    """
    from toolkit.config import load_config

    if manifest is not None:
        return Path(manifest)
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise DataError(f"{run_dir}: no config.yaml; pass the evaluated manifest (--manifest)")
    name = load_config(cfg_path).data.finetune_manifest
    if not name:
        raise DataError(f"{cfg_path}: data.finetune_manifest is empty; pass the manifest")
    return Path(name)


def find_predictions(run_dir: PathLike, dataset: str) -> Path | None:
    """The folder of the run's label maps for ``dataset`` (the latest evaluation that wrote
    them), or None when no evaluation of that dataset wrote predictions.

    Example:
        >>> find_predictions("runs/ft", "demo_labelled")  # doctest: +SKIP
        PosixPath('runs/ft/evaluation/demo_labelled/predictions')
    """
    run = Path(run_dir)
    recorded = [
        Path(e["dir"]) / PREDICTIONS_DIR
        for e in reversed(evaluations(run))
        if e.get("dataset") == dataset and e.get("predictions")
    ]
    for folder in [*recorded, run / EVAL_DIR / dataset / PREDICTIONS_DIR]:
        if folder.is_dir() and any(folder.glob("*.nii.gz")):
            return folder
    return None


def predicted_datasets(run_dir: PathLike) -> list[str]:
    """Datasets the run has label maps of (recorded or in the default folders), sorted."""
    run = Path(run_dir)
    names = {str(e["dataset"]) for e in evaluations(run) if e.get("predictions")}
    if (run / EVAL_DIR).is_dir():
        names |= {p.name for p in (run / EVAL_DIR).iterdir() if (p / PREDICTIONS_DIR).is_dir()}
    return sorted(n for n in names if find_predictions(run, n) is not None)


# --------------------------------------------------------------------------------------------------
# Evaluating a run


def _select_cases(manifest: Manifest, split: str | None) -> list[Any]:
    cases = [c for c in manifest.cases if split is None or c.split == split]
    if not cases:
        where = f" with split {split!r}" if split else ""
        raise DataError(f"{manifest.path or manifest.name}: no cases{where} to evaluate")
    unlabelled = [c.case_id for c in cases if c.label is None]
    if unlabelled:
        raise DataError(
            f"{manifest.path or manifest.name}: cases without a label cannot be evaluated: "
            + ", ".join(unlabelled[:5])
        )
    return cases


def evaluation_cache(
    manifest: Manifest,
    cfg: Config,
    plan: Mapping[str, Any] | None,
    run_dir: Path,
    *,
    progress: bool = True,
) -> Cache:
    """Preprocess (or reuse) ``manifest`` with the run's spacing and open its cache.

    The cache is ``data.cache_dir/<manifest name>``, or ``RUN_DIR/../cache/<manifest name>`` (the
    layout pretraining and fine-tuning use) when ``data.cache_dir`` is empty or is itself one
    cache; a complete cache of the manifest is reused
    (:func:`toolkit.data.preprocess.ensure_cache`), so evaluating on the fine-tuning manifest's
    test split costs no preprocessing.
    """
    from toolkit.data.cache import open_cache
    from toolkit.data.preprocess import ensure_cache

    settings = preprocess_settings(plan, cfg)
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    if cache_dir is None or (cache_dir / "plan.json").is_file():
        # No cache root configured, or it is a single cache: a sibling folder per manifest.
        root = run_dir.resolve().parent / "cache" / manifest.name
    else:
        root = cache_dir / manifest.name
    root = root if root.is_absolute() else root.resolve()
    ensure_cache(manifest, root, **settings, progress=progress)
    return open_cache(root)


def evaluate(
    run_dir: PathLike,
    manifest: Manifest | PathLike,
    *,
    checkpoint: str = "best",
    split: str | None = None,
    run_name: str | None = None,
    out_dir: PathLike | None = None,
    device: str | None = None,
    write_predictions: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every (split) case of ``manifest`` with a fine-tuned run and score it.

    Args:
        run_dir: fine-tuning run folder.
        manifest: labelled manifest (or its YAML path) of the cases to evaluate.
        checkpoint: ``best``, ``final`` or ``latest``.
        split: only cases of this split (e.g. ``test``); None = every case.
        run_name: value of the ``run`` column (default: the run folder's name).
        out_dir: where predictions and CSVs go (default ``RUN_DIR/evaluation/<manifest name>``);
            recorded in ``RUN_DIR/evaluations.json`` either way (:func:`find_predictions`).
        device: ``cpu``, ``cuda``, ... (default: the run's ``runtime.device``).
        write_predictions: write ``predictions/<case>.nii.gz`` on the original grid.
        progress: tqdm progress bar.

    Returns:
        The tidy table (one row per case x label; columns :data:`COLUMNS`), also written to
        ``out_dir/metrics.csv``; its :func:`summarize` goes to ``out_dir/summary.csv``.

    Raises:
        DataError: missing checkpoint, unlabelled or unreadable cases, or a label file whose grid
            differs from its image.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from toolkit.data.io import load_volume
    from toolkit.data.manifest import Manifest, load_manifest
    from toolkit.predict import load_predictor, save_label_map

    run_dir = Path(run_dir)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    predictor = load_predictor([run_dir], checkpoint=checkpoint, device=device)
    (run,) = predictor.runs
    cfg = run.cfg
    labels = dict(m.labels or {})
    if not labels:
        raise DataError(f"{m.path or m.name}: manifest has no labels to evaluate")
    cases = _select_cases(m, split)
    out = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR / m.name
    out.mkdir(parents=True, exist_ok=True)
    # The whole manifest, not the selected split: the cache folder may be the one training reads,
    # and a plan listing only some cases would hide the others from it.
    cache = evaluation_cache(m, cfg, run.plan, run_dir, progress=progress)
    name = run_name or run_dir.name

    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=f"evaluate {name}", unit="case", disable=not progress):
        image, _ = cache.load_case(case.case_id)
        props = cache.properties(case.case_id)
        seg, _ = predictor.segment(np.asarray(image))
        prediction = predictor.invert(seg, None, props)
        pred_orig = prediction.labels
        if write_predictions:
            save_label_map(
                pred_orig,
                prediction.affine,
                out / PREDICTIONS_DIR / f"{case.case_id}.nii.gz",
                reference=m.image_paths(case)[0],
            )
        label_path = m.label_path(case)
        assert label_path is not None
        ref = load_volume(label_path, dtype=np.float32)
        if ref.shape != pred_orig.shape:
            raise DataError(
                f"{label_path}: label grid {ref.shape} differs from the image grid "
                f"{pred_orig.shape} of case {case.case_id}"
            )
        ref_arr = np.rint(ref.array).astype(np.int64)
        for row in case_metrics(
            pred_orig.astype(np.int64),
            ref_arr,
            labels,
            ref.spacing_mm,
            hd_percentile=cfg.evaluate.hd_percentile,
        ):
            rows.append(
                {
                    "run": name,
                    "checkpoint": checkpoint,
                    "dataset": m.name,
                    "case": case.case_id,
                    "subject": case.subject,
                    **row,
                }
            )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    _write_csv(df, out / METRICS_FILE)
    _write_csv(summarize(df), out / SUMMARY_FILE)
    record_evaluation(
        run_dir,
        out,
        m.name,
        manifest=m.path,
        checkpoint=checkpoint,
        split=split,
        predictions=write_predictions,
        cases=len(cases),
    )
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


__all__ = [
    "COLUMNS",
    "EVALUATIONS_FILE",
    "case_metrics",
    "evaluate",
    "evaluation_cache",
    "evaluations",
    "find_predictions",
    "predicted_datasets",
    "record_evaluation",
    "format_summary",
    "load_segmentation_checkpoint",
    "predict_probabilities",
    "segment_volume",
    "summarize",
]
