"""Reading run folders: snapshots of pretraining runs, evaluated cases of fine-tuning runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.widgets.conftest import SPACING, block_mask, phantom
from toolkit.errors import DataError
from widgets.runs import error_labels, list_snapshots, load_segmentation, load_snapshot, run_kind


def test_run_kind(pretrain_run: Path, finetune_run: tuple[Path, Path], tmp_path: Path) -> None:
    assert run_kind(pretrain_run) == "pretrain"
    assert run_kind(finetune_run[0]) == "finetune"
    (pretrain_run / "run.json").unlink()
    assert run_kind(pretrain_run) == "pretrain"  # from the snapshots folder
    with pytest.raises(DataError, match="not a run folder"):
        run_kind(tmp_path)


def test_latest_snapshot_by_default(pretrain_run: Path) -> None:
    assert [s for s, _ in list_snapshots(pretrain_run)] == [10, 20]
    snap = load_snapshot(pretrain_run)
    assert snap.step == 20
    assert np.allclose(snap.input, phantom()) and np.array_equal(snap.mask, block_mask())
    assert snap.spacing_mm == pytest.approx(SPACING)
    assert np.allclose(snap.error, 0.1 * (1 - block_mask()), atol=1e-6)
    assert load_snapshot(pretrain_run, step=10).step == 10
    with pytest.raises(DataError, match="no snapshot at step 15; steps: 10, 20"):
        load_snapshot(pretrain_run, step=15)


def test_incomplete_snapshots_are_ignored(pretrain_run: Path, tmp_path: Path) -> None:
    (pretrain_run / "snapshots" / "step_0000020" / "error.nii.gz").unlink()
    assert load_snapshot(pretrain_run).step == 10
    empty = tmp_path / "empty"
    (empty / "snapshots").mkdir(parents=True)
    with pytest.raises(DataError, match="no reconstruction snapshots yet"):
        load_snapshot(empty)


def test_segmentation_case_from_the_runs_manifest(finetune_run: tuple[Path, Path]) -> None:
    run, manifest = finetune_run
    seg = load_segmentation(run)
    assert seg.case == "c0"
    assert seg.label_names[3] == "wm"
    assert seg.image.shape == seg.reference.shape == seg.prediction.shape
    assert (error_labels(seg.reference, seg.prediction) > 0).any()
    assert load_segmentation(run, manifest, case="c1").case == "c1"
    with pytest.raises(DataError, match="no prediction for case 'c9'; cases: c0, c1"):
        load_segmentation(run, case="c9")


def test_segmentation_needs_an_evaluation(finetune_run: tuple[Path, Path]) -> None:
    run, manifest = finetune_run
    other = manifest.with_name("other.yaml")
    other.write_text(manifest.read_text().replace("name: toy", "name: other"))
    with pytest.raises(DataError, match="no predictions for dataset 'other' \\(evaluated: toy\\)"):
        load_segmentation(run, other)


def test_error_labels_by_hand() -> None:
    ref = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 3, 0, 1, 1, 2])
    assert error_labels(ref, pred).tolist() == [0, 1, 2, 0, 3, 0]
    with pytest.raises(ValueError, match="differ in shape"):
        error_labels(ref, pred[:3])
