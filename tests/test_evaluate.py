"""Metrics against hand-made volumes, sliding-window prediction, inversion to the original grid."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from toolkit.config import load_config
from toolkit.data.io import load_volume, save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.data.preprocess import invert_to_original, preprocess_case
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.errors import DataError
from toolkit.evaluate import (
    COLUMNS,
    case_metrics,
    evaluate,
    format_summary,
    summarize,
)
from toolkit.models import build_segmentation_model

LABELS = {0: "background", 1: "a", 2: "b"}


def _cube(shape: tuple[int, int, int], lo: int, hi: int, value: int = 1) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[lo:hi, lo:hi, lo:hi] = value
    return out


def test_perfect_prediction() -> None:
    ref = _cube((20, 20, 20), 5, 15)
    rows = case_metrics(ref, ref, {0: "bg", 1: "a"}, (1.0, 2.0, 0.5))
    assert len(rows) == 1
    assert rows[0]["dice"] == 1.0 and rows[0]["hd95_mm"] == 0.0
    assert rows[0]["ref_volume_ml"] == pytest.approx(1000 * 1.0 / 1000)  # 10^3 voxels of 1 mm^3


def test_disjoint_prediction() -> None:
    ref = _cube((30, 30, 30), 2, 8)
    pred = _cube((30, 30, 30), 20, 26)
    (row,) = case_metrics(pred, ref, {1: "a"}, (1.0, 1.0, 1.0))
    assert row["dice"] == 0.0
    assert row["hd95_mm"] > 12  # surfaces at least 12 voxels apart on each axis


def test_known_shift_gives_known_dice_and_hd95() -> None:
    ref = np.zeros((40, 40, 40), np.uint8)
    ref[10:20, 10:20, 10:20] = 1
    pred = np.roll(ref, 2, axis=0)
    (row,) = case_metrics(pred, ref, {1: "a"}, (1.5, 1.0, 1.0))
    assert row["dice"] == pytest.approx(0.8)  # 8 of 10 slices overlap
    assert row["hd95_mm"] == pytest.approx(3.0)  # 2 voxels x 1.5 mm
    assert row["pred_volume_ml"] == pytest.approx(row["ref_volume_ml"]) == pytest.approx(1.5)


def test_empty_structures_follow_the_documented_rule() -> None:
    shape = (12, 12, 12)
    empty = np.zeros(shape, np.uint8)
    full = _cube(shape, 3, 9)
    both = case_metrics(empty, empty, {1: "a"}, (1.0, 1.0, 1.0))[0]
    assert (both["dice"], both["hd95_mm"]) == (1.0, 0.0)
    assert both["ref_empty"] and both["pred_empty"]
    missed = case_metrics(empty, full, {1: "a"}, (1.0, 1.0, 1.0))[0]
    assert missed["dice"] == 0.0 and math.isnan(missed["hd95_mm"])
    assert missed["pred_empty"] and not missed["ref_empty"]
    spurious = case_metrics(full, empty, {1: "a"}, (1.0, 1.0, 1.0))[0]
    assert spurious["dice"] == 0.0 and math.isnan(spurious["hd95_mm"])
    assert spurious["pred_volume_ml"] == pytest.approx(0.216)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(DataError, match="differs from reference shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), {1: "a"}, (1, 1, 1))


def test_summary_counts_undefined_hd95() -> None:
    rows = []
    for case, (dice, hd) in enumerate([(1.0, 0.0), (0.0, float("nan")), (0.5, 4.0)]):
        rows.append(
            {
                "run": "r",
                "case": f"c{case}",
                "label": 1,
                "label_name": "a",
                "dice": dice,
                "hd95_mm": hd,
            }
        )
    summary = summarize(pd.DataFrame(rows))
    (row,) = summary.itertuples(index=False)
    assert row.cases == 3 and row.dice_mean == pytest.approx(0.5)
    assert row.hd95_mean_mm == pytest.approx(2.0) and row.hd95_undefined == 1
    assert "1 undefined" in format_summary(summary)
    assert "| r | a | 3 | 0.500 ± 0.500 | 2.00 (1 undefined) |" in format_summary(summary)
    # One case: the mean alone (no "± 0.000", no "± nan").
    one = format_summary(summarize(pd.DataFrame(rows[2:])))
    assert "| r | a | 1 | 0.500 | 4.00 |" in one and "±" not in one and "nan" not in one


def _oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel axes permuted and flipped relative to RAS, rotated 20 degrees about z, anisotropic."""
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)  # i->y, j->-z, k->-x
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag(spacing)
    affine[:3, 3] = (12.0, -30.0, 7.5)
    return affine


def _phantom(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[r < 0.8] = 1
    label[(r < 0.45) & (grid[0] > 0)] = 2  # asymmetric, so a wrong flip is caught
    image = np.where(label > 0, 1.0 + label + 0.1 * grid[1], 0.0).astype(np.float32)
    return image, label


def test_inversion_is_exact_on_an_oblique_anisotropic_grid(tmp_path: Path) -> None:
    spacing = (1.2, 0.9, 2.0)
    affine = _oblique_affine(spacing)
    image, label = _phantom((30, 36, 16))
    img_path = save_volume(image, affine, tmp_path / "img.nii.gz")
    lab_path = save_volume(label, affine, tmp_path / "lab.nii.gz")
    # The cache grid is the canonical (RAS) reorientation; at its own spacing nothing resamples.
    ornt = nib.orientations.io_orientation(affine)
    canonical_spacing = [spacing[int(ax)] for ax in np.argsort(ornt[:, 0])]
    _, cached_label, props = preprocess_case([img_path], lab_path, canonical_spacing)
    assert cached_label is not None and cached_label.shape != label.shape  # axes were permuted
    back, back_affine = invert_to_original(cached_label, props, is_label=True)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_affine, affine)
    rows = case_metrics(back, label, LABELS, load_volume(lab_path).spacing_mm)
    assert [r["dice"] for r in rows] == [1.0, 1.0]


def test_inversion_after_resampling_lands_on_the_original_grid(tmp_path: Path) -> None:
    spacing = (1.2, 0.9, 2.0)
    affine = _oblique_affine(spacing)
    image, label = _phantom((30, 36, 16))
    img_path = save_volume(image, affine, tmp_path / "img.nii.gz")
    lab_path = save_volume(label, affine, tmp_path / "lab.nii.gz")
    _, cached_label, props = preprocess_case([img_path], lab_path, (1.5, 1.5, 1.5))
    assert cached_label is not None
    back, back_affine = invert_to_original(cached_label, props, is_label=True)
    assert back.shape == label.shape
    np.testing.assert_allclose(back_affine, affine)
    rows = case_metrics(back, label, LABELS, spacing)
    # Partial-volume loss of two nearest-neighbour resamplings; a wrong flip or shift of the
    # asymmetric label 2 would give far less.
    assert all(r["dice"] > 0.8 for r in rows), rows
    assert all(r["hd95_mm"] <= 2.0 for r in rows), rows  # within one original voxel


def _finetuned_run(tmp_path: Path, num_classes: int = 3) -> Path:
    """A run folder with a 'best' fine-tuning checkpoint of an untrained tiny network."""
    cfg = load_config(
        "tiny", {"data.patch_size": [16, 16, 16], "data.target_spacing_mm": [2, 2, 2]}
    )
    torch.manual_seed(0)
    net = build_segmentation_model(cfg, num_classes)
    run = tmp_path / "runs" / "ft"
    save_checkpoint(
        run / "checkpoints" / "best.pt",
        {
            "config": cfg.to_dict(),
            "model": net.state_dict(),
            "plan": {"target_spacing_mm": [2.0, 2.0, 2.0], "image_order": 1},
            "task_state": {"num_classes": num_classes},
        },
    )
    return run


def test_evaluate_writes_tidy_table_and_original_grid_predictions(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = []
    for i, spacing in enumerate([(1.2, 0.9, 2.0), (1.0, 1.0, 1.0)]):
        affine = _oblique_affine(spacing) if i == 0 else np.diag([-1.0, 1.0, 1.0, 1.0])
        image, label = _phantom((20, 24, 12))
        save_volume(image, affine, data / f"img{i}.nii.gz")
        save_volume(label, affine, data / f"lab{i}.nii.gz")
        cases.append(
            Case(
                case_id=f"c{i}",
                subject=f"s{i}",
                images={"image": Path(f"img{i}.nii.gz")},
                label=Path(f"lab{i}.nii.gz"),
                split="test" if i == 0 else "train",
            )
        )
    manifest = Manifest(
        name="toy", root=data, root_spec=".", channels=("image",), labels=LABELS, cases=tuple(cases)
    )
    manifest_path = save_manifest(manifest, data / "toy.yaml")
    run = _finetuned_run(tmp_path)

    df = evaluate(run, manifest_path, split="test", progress=False)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 2 and set(df["case"]) == {"c0"} and set(df["label_name"]) == {"a", "b"}
    assert df["dice"].between(0, 1).all()
    out = run / "evaluation" / "toy"
    assert (out / "metrics.csv").is_file() and (out / "summary.csv").is_file()
    pred = load_volume(out / "predictions" / "c0.nii.gz")
    ref = load_volume(data / "lab0.nii.gz")
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)

    with pytest.raises(DataError, match="no cases with split 'val'"):
        evaluate(run, manifest_path, split="val", progress=False)
