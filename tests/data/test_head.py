"""Synthetic heads: tissues in the intended contrast order, brain labels only, determinism, FOV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from toolkit.cli import main
from toolkit.data.io import load_volume
from toolkit.data.manifest import load_manifest
from toolkit.data.synthetic import CSF, GM, WM, synthesize_subject
from toolkit.data.synthetic.contrast import (
    BONE,
    FAT,
    MARROW,
    MUSCLE,
    SKIN,
    VITREOUS,
)

# 4 mm rendered without a finer grid and without artefacts: each voxel holds its tissue's mean.
SMALL = {"spacing_mm": 4.0, "fine_mm": 4.0}


def _tissue_means(contrast: str) -> tuple[dict[str, float], object]:
    s = synthesize_subject(3, head=True, contrast=contrast, artefacts=False, **SMALL)
    assert s.head_tissue is not None
    means: dict[str, float] = {}
    for name, code in (
        ("bone", BONE),
        ("marrow", MARROW),
        ("fat", FAT),
        ("skin", SKIN),
        ("muscle", MUSCLE),
        ("vitreous", VITREOUS),
    ):
        voxels = s.image[s.head_tissue == code]
        assert voxels.size > 0, f"{contrast}: no {name} voxels"
        means[name] = float(voxels.mean())
    for name, code in (("csf", CSF), ("gm", GM), ("wm", WM)):
        means[name] = float(s.image[s.label == code].mean())
    return means, s


@pytest.mark.parametrize("contrast", ["T1", "T2", "FLAIR"])
def test_head_tissues_follow_the_contrast(contrast: str) -> None:
    m, _ = _tissue_means(contrast)
    assert m["bone"] < min(v for k, v in m.items() if k != "bone")  # cortical bone: darkest
    assert m["marrow"] > m["bone"]
    if contrast == "T1":
        assert m["fat"] > m["wm"] > m["gm"] > m["csf"]
        assert m["vitreous"] < m["gm"] and m["marrow"] > m["gm"]
    elif contrast == "T2":
        assert m["vitreous"] > m["gm"] > m["wm"]
        assert m["fat"] > m["wm"]
    else:
        assert m["vitreous"] < m["gm"] and m["csf"] < m["wm"]


def test_head_labels_are_the_brain_only() -> None:
    s = synthesize_subject(3, head=True, **SMALL)
    brain = synthesize_subject(3, **SMALL)
    assert s.head_tissue is not None
    assert not np.any(s.head_tissue[s.label > 0])  # no head tissue inside the brain
    assert np.any(s.head_tissue > 0)
    # The same brain as without a head, on a larger grid: compare the labelled voxels' count.
    for value in (CSF, GM, WM):
        assert (
            abs(int((s.label == value).sum()) - int((brain.label == value).sum()))
            <= 0.02 * (brain.label == value).sum()
        )
    assert set(np.unique(s.label).tolist()) <= {0, 1, 2, 3}
    # A raw scan: noise in the air (no exact zeros), and the neck leaves the field of view.
    assert np.mean(s.image == 0) < 0.01
    assert np.any(s.head_tissue[:, :, 0] > 0)
    assert not np.any(s.head_tissue[:, :, -1] > 0)


def test_head_is_deterministic_per_seed() -> None:
    a = synthesize_subject(5, head=True, **SMALL)
    b = synthesize_subject(5, head=True, **SMALL)
    c = synthesize_subject(6, head=True, **SMALL)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.head_tissue is not None and b.head_tissue is not None
    assert np.array_equal(a.head_tissue, b.head_tissue)
    assert a.head is not None and c.head is not None
    assert a.head.marrow_mm != c.head.marrow_mm


def test_cli_synth_heads_writes_raw_heads(tmp_path: Path) -> None:
    argv = ["synth", "--out", str(tmp_path), "--subjects", "1", "--labelled", "0", "--seed", "3"]
    argv += ["--spacing", "4", "--workers", "1", "--no-mni", "--no-progress", "--heads"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    case = load_manifest(tmp_path / "pretrain.yaml").cases[0]
    image = load_volume(tmp_path / case.images["image"]).array
    brain = synthesize_subject(3, spacing_mm=4.0).image  # a brain-only phantom, for contrast
    assert np.mean(image == 0) < 0.01  # noisy air, unlike a brain-only phantom
    assert np.mean(brain == 0) > 0.2
