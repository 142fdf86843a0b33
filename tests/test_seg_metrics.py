"""Dice and HD95 on the labels' bounding box give MONAI's full-grid numbers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

import toolkit.seg_metrics as sm


def _monai_hd(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], pct: float | None) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(
            compute_hausdorff_distance(
                torch.from_numpy(p)[None, None],
                torch.from_numpy(r)[None, None],
                include_background=True,
                percentile=pct,
                spacing=list(spacing),
            )[0, 0]
        )


def _cases() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float]]]:
    rng = np.random.default_rng(0)
    shape = (40, 44, 36)
    grid = np.indices(shape).astype(np.float32)
    r = np.sqrt(((grid - np.array(shape)[:, None, None, None] / 2) ** 2).sum(0))
    ball = r < 12
    shifted = np.roll(ball, (3, -2, 1), axis=(0, 1, 2))
    # An untrained network's output: speckle inside and outside the structure (many edges).
    speckle = (rng.random(shape) < 0.3) | (ball & (rng.random(shape) < 0.6))
    # Structures touching the grid's edge (the crop's margin is padded there).
    edge_ref = np.zeros(shape, bool)
    edge_ref[:10, :, 30:] = True
    edge_pred = np.zeros(shape, bool)
    edge_pred[:8, 5:, 28:] = True
    small = np.zeros(shape, bool)
    small[20:23, 20:22, 5:6] = True
    return [
        ("shifted ball", shifted, ball, (1.0, 1.0, 1.0)),
        ("speckle", speckle, ball, (1.2, 0.9, 2.0)),
        ("grid edge", edge_pred, edge_ref, (1.0, 1.5, 0.7)),
        ("far apart", small, ball, (1.0, 1.0, 1.0)),
    ]


@pytest.mark.parametrize("path", ["kd_tree", "transform", "chosen"])
def test_cropped_hd_equals_monai_on_the_full_grid(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path != "chosen":
        monkeypatch.setattr(sm, "_TRANSFORM_ABOVE", 0.0 if path == "transform" else np.inf)
    for name, pred, ref, spacing in _cases():
        for pct in (95.0, None):
            ours = sm.hausdorff_distance(pred, ref, spacing, pct)
            assert ours == pytest.approx(_monai_hd(pred, ref, spacing, pct), rel=1e-6), name
        # the directed distances are the same numbers either way (not just their percentile)
        kd = sm.surface_distances(pred, ref, spacing)
        assert all(d.dtype == np.float32 and d.min() >= 0 for d in kd)


def test_both_distance_paths_agree_voxel_by_voxel(monkeypatch: pytest.MonkeyPatch) -> None:
    _, pred, ref, spacing = _cases()[1]
    monkeypatch.setattr(sm, "_TRANSFORM_ABOVE", 0.0)
    by_transform = sm.surface_distances(pred, ref, spacing)
    monkeypatch.setattr(sm, "_TRANSFORM_ABOVE", np.inf)
    by_tree = sm.surface_distances(pred, ref, spacing)
    for a, b in zip(by_transform, by_tree, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_dice_from_counts_equals_monai() -> None:
    for name, pred, ref, _ in _cases():
        expected = float(
            compute_dice(
                torch.from_numpy(pred)[None, None],
                torch.from_numpy(ref)[None, None],
                include_background=True,
            )[0, 0]
        )
        assert sm.dice(pred, ref) == pytest.approx(expected, rel=1e-6), name


def test_empty_structures() -> None:
    empty = np.zeros((6, 6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4, 2:4] = True
    assert sm.hausdorff_distance(empty, empty, (1, 1, 1)) == 0.0
    assert np.isnan(sm.hausdorff_distance(full, empty, (1, 1, 1)))
    assert sm.dice(empty, empty) == 1.0 and sm.dice(full, empty) == 0.0
