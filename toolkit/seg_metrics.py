"""Segmentation metrics of one case: Dice, HD95 and volumes per label, computed cheaply.

HD95 is MONAI's (``monai.metrics.compute_hausdorff_distance``: edges by binary erosion after a
crop to the union's bounding box with a one-voxel margin, Euclidean distances in mm from every
edge voxel of one map to the nearest edge voxel of the other, the percentile of each direction,
the larger of the two) with the same numbers, made cheaper where MONAI is slow on a 1 mm brain:

* every label is cropped once to the bounding box of prediction ∪ reference (plus MONAI's
  margin) before anything else, so no full-grid float copies are made;
* the nearest-edge distances come from a KD-tree over the edge voxels (MONAI's way) when the
  edges are few, and from one exact Euclidean distance transform of the box when they are many —
  the noisy prediction of an untrained network has a million edge voxels, where the KD-tree took
  3.6 s and the transform of the 4 M-voxel box 1.7 s (both directions, one thread);
* Dice is ``2 |P ∩ R| / (|P| + |R|)`` from voxel counts (what ``monai.metrics.compute_dice``
  computes, through a one-hot float copy of the grid that cost 0.5 s per label).

Tests check the values against MONAI's full-grid functions on a few cases.

Empty structures are handled explicitly, because MONAI returns NaN for them:

=====================  ======  ==========  ==========================================
reference / predicted  Dice    HD95        why
=====================  ======  ==========  ==========================================
both empty             1.0     0.0         the prediction is exactly right
one of the two empty   0.0     NaN         no surface to measure a distance to
=====================  ======  ==========  ==========================================

Example:
    >>> import numpy as np
    >>> ref = np.zeros((8, 8, 8), np.uint8); ref[2:6, 2:6, 2:6] = 1
    >>> rows = case_metrics(ref, ref, {1: "a"}, (1.0, 1.0, 1.0))
    >>> rows[0]["dice"], rows[0]["hd95_mm"]
    (1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolkit.errors import DataError

__all__ = ["case_metrics", "dice", "hausdorff_distance", "surface_distances"]

#: Above this many edge voxels per box voxel the distance transform beats the KD-tree (measured:
#: KD-tree ~3.6 µs per edge voxel, transform ~0.4 µs per box voxel for both directions).
_TRANSFORM_ABOVE = 1 / 8


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two (D, H, W) boolean masks; 1.0 when both are empty.

    Example:
        >>> a = np.zeros(10, bool); a[:4] = True
        >>> dice(a, np.roll(a, 1))
        0.75
    """
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _union_box(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box with a one-voxel zero margin (MONAI's
    ``get_mask_edges(crop=True)``: the margin is padded where the box meets the grid's edge)."""
    union = pred | ref
    box = []
    for axis in range(union.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(union.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    crop = tuple(box)
    pad = [(1, 1)] * union.ndim
    return np.pad(pred[crop], pad), np.pad(ref[crop], pad)


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each edge voxel of ``pred`` to the nearest of ``ref``, and back.

    Args:
        pred: (D, H, W) boolean mask, not empty.
        ref: (D, H, W) boolean mask, not empty.
        spacing_mm: (3,) voxel edge lengths along (D, H, W).

    Returns:
        ``(pred -> ref, ref -> pred)``, 1-D float32 arrays (one value per edge voxel).
    """
    from monai.metrics.utils import get_mask_edges
    from scipy import ndimage
    from scipy.spatial import KDTree

    p, r = _union_box(pred.astype(bool), ref.astype(bool))
    edges_p, edges_r = (np.asarray(e, bool) for e in get_mask_edges(p, r, crop=False))
    spacing = np.asarray([float(s) for s in spacing_mm], np.float64)
    if edges_p.sum() + edges_r.sum() > _TRANSFORM_ABOVE * edges_p.size:
        to_r = ndimage.distance_transform_edt(~edges_r, sampling=spacing)[edges_p]
        to_p = ndimage.distance_transform_edt(~edges_p, sampling=spacing)[edges_r]
    else:
        points_p = np.argwhere(edges_p) * spacing
        points_r = np.argwhere(edges_r) * spacing
        to_r = KDTree(points_r, leafsize=32).query(points_p, k=1)[0]
        to_p = KDTree(points_p, leafsize=32).query(points_r, k=1)[0]
    return to_r.astype(np.float32), to_p.astype(np.float32)


def hausdorff_distance(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    percentile: float | None = 95.0,
) -> float:
    """Symmetric (percentile) Hausdorff distance in mm, as ``compute_hausdorff_distance``.

    Args:
        pred: (D, H, W) boolean mask.
        ref: (D, H, W) boolean mask of the same shape.
        spacing_mm: (3,) voxel edge lengths along (D, H, W).
        percentile: percentile of each direction's distances (None or 0: the maximum).

    Returns:
        The larger of the two directions' percentiles; NaN when exactly one mask is empty,
        0.0 when both are.

    Example:
        >>> a = np.zeros((20, 20, 20), bool); a[5:10, 5:10, 5:10] = True
        >>> hausdorff_distance(np.roll(a, 2, axis=0), a, (1.5, 1.0, 1.0))
        3.0
    """
    import torch

    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    if n_pred == 0 and n_ref == 0:
        return 0.0
    if n_pred == 0 or n_ref == 0:
        return float("nan")
    worst = 0.0
    for d in surface_distances(pred, ref, spacing_mm):
        values = torch.from_numpy(d)
        # torch.quantile as MONAI's _compute_percentile_hausdorff_distance, for equal numbers.
        q = values.max() if not percentile else torch.quantile(values, percentile / 100)
        worst = max(worst, float(q))
    return worst


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
            d, hd = 1.0, 0.0
        elif n_pred == 0 or n_ref == 0:
            d, hd = 0.0, float("nan")
        else:
            d = dice(p, r)
            hd = hausdorff_distance(p, r, spacing, hd_percentile)
        rows.append(
            {
                "label": value,
                "label_name": str(labels[value]),
                "dice": d,
                "hd95_mm": hd,
                "ref_volume_ml": n_ref * voxel_ml,
                "pred_volume_ml": n_pred * voxel_ml,
                "ref_empty": n_ref == 0,
                "pred_empty": n_pred == 0,
            }
        )
    return rows
