"""Sliding-window segmentation of whole volumes and metrics on the original image grid.

Prediction: each case's preprocessed volume (from the cache) goes through MONAI's
``sliding_window_inference`` with Gaussian weighting, ``evaluate.overlap`` and optional mirror
test-time augmentation (softmax averaged over the 8 flips of the three axes). The argmax label map
is mapped back to the original voxel grid (:func:`toolkit.data.preprocess.invert_to_original`:
undo resampling, crop and reorientation) and written as NIfTI with the original affine.

Metrics compare that map with the original label file, per case and label (background excluded):

* Dice (``monai.metrics.compute_dice``),
* HD95 in mm (``monai.metrics.compute_hausdorff_distance``, ``evaluate.hd_percentile``, voxel
  spacing from the original affine),
* reference and predicted volume in ml.

Empty structures are handled explicitly, because MONAI returns NaN for them:

=====================  ======  ==========  ==========================================
reference / predicted  Dice    HD95        why
=====================  ======  ==========  ==========================================
both empty             1.0     0.0         the prediction is exactly right
one of the two empty   0.0     NaN         no surface to measure a distance to
=====================  ======  ==========  ==========================================

Summaries average HD95 over the cases where it is defined and report how many were not
(``hd95_undefined``), so a missed structure shows up instead of silently lowering the mean.

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 1
    >>> rows = case_metrics(ref, ref, {1: "a"}, (1.0, 1.0, 1.0))
    >>> rows[0]["dice"], rows[0]["hd95_mm"]
    (1.0, 0.0)
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from toolkit.config import Config
    from toolkit.data.cache import Cache
    from toolkit.data.manifest import Manifest

PathLike = str | os.PathLike[str]

EVAL_DIR = "evaluation"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.csv"
PREDICTIONS_DIR = "predictions"
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
# Metrics on label maps


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Mapping[int, str],
    spacing_mm: Sequence[float],
    *,
    hd_percentile: float = 95.0,
) -> list[dict[str, Any]]:
    """Dice, HD95 and volumes of one case, one dict per label (see the module docstring).

    Args:
        pred: (D, H, W) integer predicted label map.
        ref: (D, H, W) integer reference label map on the same grid.
        labels: label value -> name; value 0 (background) is skipped.
        spacing_mm: (3,) voxel edge lengths in mm along (D, H, W).
        hd_percentile: percentile of the symmetric surface distances (95 = HD95).

    Returns:
        ``[{"label", "label_name", "dice", "hd95_mm", "ref_volume_ml", "pred_volume_ml",
        "ref_empty", "pred_empty"}, ...]`` in label order.

    Raises:
        DataError: the two maps have different shapes.
    """
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = [float(s) for s in spacing_mm]
    voxel_ml = math.prod(spacing) / 1000.0
    rows = []
    for value in sorted(int(v) for v in labels):
        if value == 0:
            continue
        p = pred == value
        r = ref == value
        n_pred, n_ref = int(p.sum()), int(r.sum())
        if n_pred == 0 and n_ref == 0:
            dice, hd = 1.0, 0.0
        elif n_pred == 0 or n_ref == 0:
            dice, hd = 0.0, float("nan")
        else:
            pt = torch.from_numpy(p)[None, None]
            rt = torch.from_numpy(r)[None, None]
            dice = float(compute_dice(pt, rt, include_background=True)[0, 0])
            with warnings.catch_warnings():
                # MONAI 1.5+ warns about an argument its own HD code passes; nothing to act on.
                warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges")
                hd = float(
                    compute_hausdorff_distance(
                        pt, rt, include_background=True, percentile=hd_percentile, spacing=spacing
                    )[0, 0]
                )
        rows.append(
            {
                "label": value,
                "label_name": str(labels[value]),
                "dice": dice,
                "hd95_mm": hd,
                "ref_volume_ml": n_ref * voxel_ml,
                "pred_volume_ml": n_pred * voxel_ml,
                "ref_empty": n_ref == 0,
                "pred_empty": n_pred == 0,
            }
        )
    return rows


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
    """A markdown table of :func:`summarize`'s output (Dice as mean ± std)."""
    header = "| run | label | cases | Dice | HD95 (mm) |\n|---|---|---:|---:|---:|"
    lines = [header]
    for row in summary.itertuples(index=False):
        hd = "n/a" if math.isnan(row.hd95_mean_mm) else f"{row.hd95_mean_mm:.2f}"
        if row.hd95_undefined:
            hd += f" ({row.hd95_undefined} undefined)"
        lines.append(
            f"| {row.run} | {row.label_name} | {row.cases} | "
            f"{row.dice_mean:.3f} ± {row.dice_std:.3f} | {hd} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Prediction


def _first_output(out: Any) -> torch.Tensor:
    # Deep-supervision networks return a list (full resolution first).
    return out[0] if isinstance(out, list | tuple) else out


def predict_probabilities(
    network: nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mirror_tta: bool = False,
    autocast: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Softmax probabilities of a whole volume by Gaussian-weighted sliding windows.

    Args:
        network: segmentation network in eval mode, on the device of ``image``.
        image: (1, C, D, H, W) preprocessed volume; any size (padded internally when smaller than
            ``roi_size``).
        roi_size: (3,) window size in voxels (the training patch size).
        overlap: fraction of overlap between neighbouring windows.
        sw_batch_size: windows per forward pass.
        mirror_tta: average over all 8 combinations of flipping the three spatial axes.
        autocast: context-manager factory for mixed precision (``toolkit.engine.runtime``).

    Returns:
        (1, K, D, H, W) float32 class probabilities.
    """
    import contextlib

    import torch
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return _first_output(network(x)).float()

    flips: list[tuple[int, ...]] = [()]
    if mirror_tta:
        flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
    total: torch.Tensor | None = None
    ctx = autocast if autocast is not None else contextlib.nullcontext
    with torch.inference_mode(), ctx():
        for dims in flips:
            x = torch.flip(image, dims) if dims else image
            logits = sliding_window_inference(
                x,
                roi_size=tuple(int(r) for r in roi_size),
                sw_batch_size=int(sw_batch_size),
                predictor=predictor,
                overlap=float(overlap),
                mode="gaussian",
            )
            assert isinstance(logits, torch.Tensor)
            prob = torch.softmax(logits.float(), dim=1)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
    assert total is not None
    return total / len(flips)


def segment_volume(
    network: nn.Module,
    image: np.ndarray,
    cfg: Config,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Argmax label map of one preprocessed volume.

    Args:
        network: segmentation network in eval mode on ``device``.
        image: (C, D, H, W) float32 volume on the cache grid.
        cfg: config (``data.patch_size`` and the ``evaluate`` section).
        device: where to run.
        autocast: mixed-precision context factory.

    Returns:
        (D, H, W) uint8 label map on the cache grid.
    """
    import torch

    # A copy: cache volumes are read-only memory maps.
    x = torch.tensor(np.asarray(image, dtype=np.float32), device=device)[None]
    prob = predict_probabilities(
        network,
        x,
        roi_size=cfg.data.patch_size,
        overlap=cfg.evaluate.overlap,
        sw_batch_size=cfg.evaluate.sw_batch_size,
        mirror_tta=cfg.evaluate.mirror_tta,
        autocast=autocast,
    )
    return prob[0].argmax(0).to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Evaluating a run


def load_segmentation_checkpoint(
    ckpt: PathLike, *, device: torch.device | str | None = None
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Build the segmentation network stored in a fine-tuning checkpoint.

    Args:
        ckpt: ``RUN_DIR/checkpoints/{best,final,latest}.pt`` of a fine-tuning run.
        device: where the network goes (default: the run's ``runtime.device``, resolved by
            :func:`toolkit.engine.runtime.setup_runtime`).

    Returns:
        ``(network in eval mode, config, checkpoint dict)``.

    Raises:
        DataError: not a fine-tuning checkpoint.
    """
    from toolkit.engine.checkpoint import load_checkpoint
    from toolkit.engine.runtime import setup_runtime

    state = load_checkpoint(ckpt)
    cfg = _checkpoint_config(state, ckpt)
    if device is None:
        device = setup_runtime(cfg.runtime, init_distributed=False).device
    return _build_network(state, cfg, ckpt, device), cfg, state


def _checkpoint_config(state: Mapping[str, Any], ckpt: PathLike) -> Config:
    from toolkit.config import from_dict
    from toolkit.engine.checkpoint import require_keys

    require_keys(state, ("config", "model"), ckpt)
    return from_dict(state["config"], source=str(ckpt))


def _build_network(
    state: Mapping[str, Any], cfg: Config, ckpt: PathLike, device: torch.device | str
) -> nn.Module:
    from toolkit.engine.checkpoint import clean_state_dict
    from toolkit.models import build_segmentation_model

    task_state = state.get("task_state") or {}
    num_classes = task_state.get("num_classes") if isinstance(task_state, Mapping) else None
    if not num_classes:
        raise DataError(f"{ckpt}: not a fine-tuning checkpoint (no task_state.num_classes)")
    # Inference needs only the full-resolution head; its weights are the same either way.
    network = build_segmentation_model(cfg.replace({"model.deep_supervision": False}), num_classes)
    network.load_state_dict(clean_state_dict(state["model"]))
    return network.to(device).eval()


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

    spacing = (plan or {}).get("target_spacing_mm", cfg.data.target_spacing_mm)
    order = int((plan or {}).get("image_order", cfg.data.image_order))
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else None
    if cache_dir is None or (cache_dir / "plan.json").is_file():
        # No cache root configured, or it is a single cache: a sibling folder per manifest.
        root = run_dir.resolve().parent / "cache" / manifest.name
    else:
        root = cache_dir / manifest.name
    root = root if root.is_absolute() else root.resolve()
    ensure_cache(manifest, root, target_spacing_mm=spacing, image_order=order, progress=progress)
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
        out_dir: where predictions and CSVs go (default ``RUN_DIR/evaluation/<manifest name>``).
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
    from toolkit.data.preprocess import invert_to_original, write_prediction_nifti
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
    from toolkit.engine.runtime import autocast as runtime_autocast
    from toolkit.engine.runtime import setup_runtime

    run_dir = Path(run_dir)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    ckpt = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(ckpt)
    cfg = _checkpoint_config(state, ckpt)
    runtime_cfg = cfg.runtime if device is None else cfg.replace({"runtime.device": device}).runtime
    rt = setup_runtime(runtime_cfg, init_distributed=False)
    network = _build_network(state, cfg, ckpt, rt.device)
    labels = dict(m.labels or {})
    if not labels:
        raise DataError(f"{m.path or m.name}: manifest has no labels to evaluate")
    cases = _select_cases(m, split)
    out = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR / m.name
    out.mkdir(parents=True, exist_ok=True)
    # The whole manifest, not the selected split: the cache folder may be the one training reads,
    # and a plan listing only some cases would hide the others from it.
    cache = evaluation_cache(m, cfg, state.get("plan"), run_dir, progress=progress)
    name = run_name or run_dir.name

    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc=f"evaluate {name}", unit="case", disable=not progress):
        image, _ = cache.load_case(case.case_id)
        pred = segment_volume(
            network, np.asarray(image), cfg, device=rt.device, autocast=lambda: runtime_autocast(rt)
        )
        props = cache.properties(case.case_id)
        if write_predictions:
            write_prediction_nifti(pred, props, out / PREDICTIONS_DIR / f"{case.case_id}.nii.gz")
        pred_orig, _ = invert_to_original(pred, props, is_label=True)
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
    return df


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


__all__ = [
    "COLUMNS",
    "case_metrics",
    "evaluate",
    "evaluation_cache",
    "format_summary",
    "load_segmentation_checkpoint",
    "predict_probabilities",
    "segment_volume",
    "summarize",
]
