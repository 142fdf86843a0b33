"""The one prediction path: original geometry, ensembles, the same bytes from every front end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from toolkit.config import load_config
from toolkit.data.io import Volume, load_volume, save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.errors import DataError
from toolkit.evaluate import evaluate
from toolkit.models import build_segmentation_model
from toolkit.orientation import from_display
from toolkit.predict import check_geometry, load_predictor, save_label_map
from toolkit.predict_batch import predict

LABELS = {0: "background", 1: "a", 2: "b"}
SPACING = (2.0, 2.0, 2.0)


def make_run(
    root: Path,
    name: str = "ft",
    *,
    seed: int = 0,
    labels: dict[int, str] = LABELS,
    spacing: tuple[float, float, float] = SPACING,
    in_channels: int = 1,
) -> Path:
    """A fine-tuning run folder with ``best`` and ``final`` checkpoints of a random tiny network."""
    cfg = load_config(
        "tiny",
        {
            "data.patch_size": [16, 16, 16],
            "data.target_spacing_mm": list(spacing),
            "model.in_channels": in_channels,
            "runtime.device": "cpu",
        },
    )
    torch.manual_seed(seed)
    net = build_segmentation_model(cfg, len(labels))
    run = root / "runs" / name
    state: dict[str, Any] = {
        "config": cfg.to_dict(),
        "model": net.state_dict(),
        "plan": {"target_spacing_mm": list(spacing), "image_order": 1},
        "task_state": {"num_classes": len(labels), "labels": dict(labels)},
    }
    save_checkpoint(run / "checkpoints" / "best.pt", state)
    torch.manual_seed(seed + 100)
    other = build_segmentation_model(cfg, len(labels))
    save_checkpoint(run / "checkpoints" / "final.pt", {**state, "model": other.state_dict()})
    return run


def oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel axes permuted and flipped relative to RAS, rotated 20 degrees about z."""
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    perm = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = rot @ perm @ np.diag(spacing)
    affine[:3, 3] = (12.0, -30.0, 7.5)
    return affine


def phantom(shape: tuple[int, int, int] = (20, 24, 12), seed: int = 0) -> np.ndarray:
    """A textured ellipsoid (non-zero inside only), different per seed."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    noise = np.random.default_rng(seed).normal(size=shape)
    return np.where(r < 0.85, 2.0 + grid[0] + 0.3 * noise, 0.0).astype(np.float32)


def write_scan(path: Path, affine: np.ndarray, seed: int = 0, shape: Any = (20, 24, 12)) -> Path:
    return save_volume(phantom(shape, seed), affine, path)


def test_prediction_lands_on_the_original_grid_oblique_and_las(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    las = np.diag([-1.5, 1.0, 1.25, 1.0])
    las[:3, 3] = (40.0, -20.0, 3.0)
    scans = tmp_path / "scans"
    oblique = write_scan(scans / "oblique.nii.gz", oblique_affine((1.2, 0.9, 2.0)))
    las_path = write_scan(scans / "las.nii.gz", las, seed=1, shape=(22, 18, 14))
    assert nib.aff2axcodes(las) == ("L", "A", "S")

    report = predict([run], scans, tmp_path / "out", progress=False, workers=0)
    assert sorted(report.predicted) == ["las", "oblique"] and not report.failed
    for src in (oblique, las_path):
        original = nib.load(src)
        written = nib.load(tmp_path / "out" / src.name)
        assert written.shape == original.shape
        np.testing.assert_array_equal(written.affine, original.affine)
        np.testing.assert_array_equal(written.header.get_sform(), original.header.get_sform())
        np.testing.assert_array_equal(written.header.get_qform(), original.header.get_qform())
        assert written.get_data_dtype() == np.uint8
        assert written.header.get_xyzt_units() == original.header.get_xyzt_units()


def test_label_map_inverts_the_preprocessed_prediction_voxel_for_voxel(tmp_path: Path) -> None:
    """Preprocessing at the file's own spacing is a pure reorientation: inversion must undo it."""
    spacing = (1.2, 0.9, 2.0)
    affine = oblique_affine(spacing)
    ornt = nib.orientations.io_orientation(affine)
    canonical = tuple(spacing[int(ax)] for ax in np.argsort(ornt[:, 0]))
    run = make_run(tmp_path, spacing=canonical)  # type: ignore[arg-type]
    scan = write_scan(tmp_path / "scan.nii.gz", affine)
    predictor = load_predictor([run])
    image, props = predictor.preprocess([scan])
    cache_labels, _ = predictor.segment(image)
    result = predictor.invert(cache_labels, None, props)
    # Crop box of the non-zero region, in original voxel order.
    expected = np.zeros(props["canonical_shape"], np.uint8)
    expected[tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])] = cache_labels
    expected = nib.orientations.apply_orientation(
        expected, nib.orientations.ornt_transform(np.array([[0, 1], [1, 1], [2, 1]]), ornt)
    )
    np.testing.assert_array_equal(result.labels, expected)


def test_ensemble_averages_the_runs_probabilities(tmp_path: Path) -> None:
    runs = [make_run(tmp_path, f"ft{i}", seed=i) for i in range(2)]
    scan = write_scan(tmp_path / "scan.nii.gz", np.diag([1.5, 1.5, 1.5, 1.0]))
    singles = [load_predictor([r]) for r in runs]
    both = load_predictor(runs)
    image, _ = both.preprocess([scan])
    mean = (singles[0].probabilities(image) + singles[1].probabilities(image)) / 2
    torch.testing.assert_close(both.probabilities(image), mean)
    assert not torch.allclose(singles[0].probabilities(image), singles[1].probabilities(image))


def test_ensemble_of_different_classes_or_plans_is_refused(tmp_path: Path) -> None:
    base = make_run(tmp_path, "base")
    other_labels = make_run(tmp_path, "labels", labels={0: "background", 1: "a", 2: "c"})
    other_plan = make_run(tmp_path, "plan", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="labels .*must share classes and plan"):
        load_predictor([base, other_labels])
    with pytest.raises(DataError, match="preprocessing .*must share classes and plan"):
        load_predictor([base, other_plan])


@pytest.mark.parametrize(
    ("affine", "message"),
    [
        (np.diag([0.0001, 1.0, 1.0, 1.0]), "voxel spacing"),
        (np.diag([200.0, 1.0, 1.0, 1.0]), "voxel spacing"),
        (np.diag([40.0, 40.0, 40.0, 1.0]), "field of view"),
        (np.full((4, 4), np.nan), "not finite or singular"),
    ],
)
def test_absurd_headers_are_rejected(affine: np.ndarray, message: str) -> None:
    vol = Volume(np.ones((100, 100, 100), np.float32), affine, Path("bad.nii.gz"))
    with pytest.raises(DataError, match=f"bad.nii.gz: .*{message}"):
        check_geometry(vol, (1.0, 1.0, 1.0))


def test_evaluate_predict_and_the_plugin_write_the_same_prediction(tmp_path: Path) -> None:
    """Same run, case and options -> byte-identical files / arrays from every front end."""
    from widgets.inference import load_segmenter, segment
    from widgets.plugin import segmentation_job

    run = make_run(tmp_path)
    data = tmp_path / "data"
    # RAS-diagonal, so the plugin's layer (canonical voxel order) is the file's array.
    affine = np.diag([1.5, 1.25, 1.0, 1.0])
    scan = write_scan(data / "c0.nii.gz", affine)
    label = (phantom() > 2.0).astype(np.uint8)
    save_volume(label, affine, data / "c0_seg.nii.gz")
    manifest = Manifest(
        name="toy",
        root=data,
        root_spec=".",
        channels=("image",),
        labels=LABELS,
        cases=(
            Case(
                case_id="c0",
                subject="s0",
                images={"image": Path("c0.nii.gz")},
                label=Path("c0_seg.nii.gz"),
            ),
        ),
    )
    manifest_path = save_manifest(manifest, data / "toy.yaml")

    predict([run], scan, tmp_path / "out", progress=False)
    predicted = (tmp_path / "out" / "c0.nii.gz").read_bytes()
    evaluate(run, manifest_path, out_dir=tmp_path / "eval", progress=False)
    assert (tmp_path / "eval" / "predictions" / "c0.nii.gz").read_bytes() == predicted

    from_file = load_volume(tmp_path / "out" / "c0.nii.gz", dtype=np.uint8).array
    layers, _ = segmentation_job(run / "checkpoints" / "best.pt", str(scan))
    # napari layers hold the display array (toolkit.orientation); back to the file's RAS order.
    plugin_labels = from_display(layers[-1][0])
    assert plugin_labels.dtype == np.uint8
    np.testing.assert_array_equal(plugin_labels, from_file)
    notebook_labels = segment(load_segmenter(run), phantom(), (1.5, 1.25, 1.0))
    np.testing.assert_array_equal(notebook_labels, from_file)
    assert len(np.unique(from_file)) > 1  # a constant map would make the comparison trivial

    # A different option gives a different file: the comparison above can fail.
    predict([run], scan, tmp_path / "tta", progress=False, mirror_tta=True, checkpoint="final")
    assert (tmp_path / "tta" / "c0.nii.gz").read_bytes() != predicted


def test_save_label_map_is_atomic_and_copies_the_header(tmp_path: Path) -> None:
    affine = oblique_affine((1.0, 1.0, 1.0))
    ref = write_scan(tmp_path / "ref.nii.gz", affine)
    labels = np.ones((20, 24, 12), np.uint8)
    out = save_label_map(labels, affine, tmp_path / "out" / "x.nii.gz", reference=ref)
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.nii.gz"]
    np.testing.assert_array_equal(nib.load(out).affine, nib.load(ref).affine)
    with pytest.raises(DataError, match="header affine changed"):
        save_label_map(labels, np.eye(4), tmp_path / "y.nii.gz", reference=ref)
