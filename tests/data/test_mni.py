"""MNI152 case: the label rule on hand-made probability maps and on the files nilearn ships."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.data import mni
from toolkit.data.io import load_volume
from toolkit.data.manifest import load_manifest
from toolkit.data.mni import (
    brain_mask_from_t1,
    labels_from_probabilities,
    load_mni152_case,
    mni152_paths,
)
from toolkit.errors import DataError


def test_rule_picks_the_most_probable_tissue_with_ties_to_the_deeper_one() -> None:
    # Columns: csf, gm, wm, tie gm/wm, tie csf/gm (exact in binary), both low, outside the mask.
    p_gm = np.array([0.1, 0.7, 0.2, 0.4, 0.375, 0.15, 0.9])
    p_wm = np.array([0.1, 0.2, 0.7, 0.4, 0.25, 0.15, 0.0])
    mask = np.array([True, True, True, True, True, True, False])
    assert labels_from_probabilities(p_gm, p_wm, mask).tolist() == [1, 2, 3, 3, 2, 1, 0]


def test_rule_on_smooth_synthetic_maps_gives_nested_tissues() -> None:
    # Concentric shells: WM core, GM ribbon, CSF rim, with smooth probability transitions.
    grid = np.indices((41, 41, 41)).astype(float) - 20
    r = np.sqrt((grid**2).sum(axis=0))
    p_wm = 1 / (1 + np.exp(r - 10))
    p_brain = 1 / (1 + np.exp(r - 15))
    p_gm = p_brain - p_wm
    label = labels_from_probabilities(p_gm, p_wm, r < 18)
    assert label.dtype == np.uint8
    assert np.all(label[r < 9] == 3) and np.all(label[(r > 11) & (r < 14)] == 2)
    assert np.all(label[(r > 16) & (r < 18)] == 1) and np.all(label[r >= 18] == 0)


def test_rule_rejects_maps_of_different_shapes() -> None:
    with pytest.raises(DataError, match="shape"):
        labels_from_probabilities(
            np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), np.ones((2, 2, 2), bool)
        )


def test_brain_mask_thresholds_and_fills_holes() -> None:
    t1 = np.zeros((9, 9, 9))
    t1[2:7, 2:7, 2:7] = 100.0
    t1[4, 4, 4] = 5.0  # a dark interior voxel, like a ventricle, stays in the mask
    t1[0, 0, 0] = 10.0  # below 0.2 x max outside the brain
    mask = brain_mask_from_t1(t1)
    assert mask.sum() == 125 and mask[4, 4, 4] and not mask[0, 0, 0]
    with pytest.raises(DataError, match="all zero"):
        brain_mask_from_t1(np.zeros((3, 3, 3)))


def test_missing_nilearn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real(name, *a)
    )
    with pytest.raises(DataError, match="nilearn is not installed"):
        mni152_paths()


def test_real_template_gives_plausible_labels_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the MNI152 case must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    before = {m for m in sys.modules if m.startswith("nilearn")}
    image, label, affine = load_mni152_case()
    assert {m for m in sys.modules if m.startswith("nilearn")} == before  # nilearn not imported
    assert image.shape == label.shape == (197, 233, 189)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert np.allclose(np.abs(np.diag(affine))[:3], 1.0)
    counts = np.bincount(label.ravel(), minlength=4)
    assert counts.size == 4 and np.all(counts > 0)
    # 1 mm voxels: volumes in mL. An adult brain holds roughly 500-900 mL each of GM and WM;
    # the smooth average template inflates GM, so the bounds are loose.
    assert 50 < counts[1] / 1000 < 400 and 600 < counts[2] / 1000 < 1400
    assert 400 < counts[3] / 1000 < 900
    mean = [float(image[label == k].mean()) for k in range(4)]
    assert mean[3] > mean[2] > mean[1] > mean[0]  # T1 contrast


def test_cli_writes_the_case_and_its_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "synth",
        "--out",
        str(tmp_path),
        "--subjects",
        "1",
        "--labelled",
        "0",
        "--spacing",
        "5",
        "--workers",
        "1",
        "--no-progress",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)  # --with-mni is the default
    assert exc.value.code == 0
    assert "MNI152" in capsys.readouterr().out
    assert load_manifest(tmp_path / "pretrain.yaml").case_ids == ["sub-001"]
    manifest = load_manifest(tmp_path / "mni152.yaml")
    assert manifest.labels == mni.MNI152_LABELS and manifest.case_ids == ["mni152"]
    case = manifest.cases[0]
    assert case.split == "test" and case.subject == "mni152"
    label_path = manifest.label_path(case)
    assert label_path is not None
    label = load_volume(label_path, dtype=np.uint8)
    image = load_volume(manifest.image_paths(case)[0])
    assert label.shape == image.shape == (197, 233, 189)
    assert np.array_equal(label.affine, image.affine)
    assert set(np.unique(label.array).tolist()) == {0, 1, 2, 3}
    assert float(image.array.max()) == pytest.approx(1.0)
