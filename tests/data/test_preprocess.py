"""Preprocessing: invertibility, orientation, normalisation, resumable manifest runs, CLI."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from toolkit.cli import app, main
from toolkit.data.cache import open_cache
from toolkit.data.io import Volume, save_volume
from toolkit.data.preprocess import (
    DONE_FILE,
    PLAN_FILE,
    Plan,
    invert_to_original,
    preprocess_case,
    preprocess_manifest,
    write_prediction_nifti,
)
from toolkit.errors import DataError


def _rotation_z(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _affine(spacing: tuple[float, float, float], kind: str) -> np.ndarray:
    """RAS diagonal, LPS (x and y flipped), or oblique (20 deg) with permuted, flipped axes."""
    a = np.eye(4)
    if kind == "ras":
        a[:3, :3] = np.diag(spacing)
    elif kind == "lps":
        a[:3, :3] = np.diag([-spacing[0], -spacing[1], spacing[2]])
    elif kind == "oblique":
        permute_flip = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
        a[:3, :3] = _rotation_z(20.0) @ permute_flip @ np.diag(spacing)
    else:
        raise ValueError(kind)
    a[:3, 3] = (-7.0, 11.0, 3.5)
    return a


def _box_case(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Positive image in an off-centre box (zero elsewhere) and a random 0..3 label inside it."""
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    box = tuple(slice(2, n - 1) for n in shape)
    inner = image[box].shape
    image[box] = rng.uniform(10.0, 100.0, inner).astype(np.float32)
    label[box] = rng.integers(0, 4, inner, dtype=np.uint8)
    return image, label


def _ellipsoids(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nested ellipsoids: labels 1 (outer shell), 2 (core), image brighter inside."""
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r_outer = sum((g / (0.42 * n)) ** 2 for g, n in zip(grid, shape, strict=True))
    r_inner = sum((g / (0.22 * n)) ** 2 for g, n in zip(grid, shape, strict=True))
    label = np.where(r_inner < 1, 2, np.where(r_outer < 1, 1, 0)).astype(np.uint8)
    image = np.where(label > 0, 20.0 + 10.0 * label + grid[0] * 0.1, 0.0).astype(np.float32)
    return image, label


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# --------------------------------------------------------------------------------------------------
# preprocess_case / invert_to_original


@pytest.mark.parametrize("kind", ["ras", "lps", "oblique"])
def test_label_round_trip_is_exact_with_integer_upsampling(kind: str) -> None:
    spacing = (1.0, 1.5, 3.0)
    image, label = _box_case((12, 10, 8))
    affine = _affine(spacing, kind)
    cached_image, cached_label, props = preprocess_case(
        [Volume(image, affine)], Volume(label.astype(np.float32), affine), (0.5, 0.5, 0.5)
    )
    assert cached_label is not None
    # zoom factors 2, 3, 6 along the (canonical) axes, on the cropped box
    cropped = np.array(props["shape_after_crop"])
    assert sorted((np.array(props["resampled_shape"]) / cropped).tolist()) == [2.0, 3.0, 6.0]
    assert cached_image.shape == (1, *props["resampled_shape"])
    assert cached_label.shape == tuple(props["resampled_shape"])
    restored, restored_affine = invert_to_original(cached_label, props)
    np.testing.assert_array_equal(restored, label)
    np.testing.assert_allclose(restored_affine, affine)
    json.dumps(props)  # JSON-serialisable


def test_float_round_trip_without_resampling_restores_normalised_image() -> None:
    image, label = _box_case((11, 9, 7), seed=3)
    affine = _affine((1.0, 1.5, 3.0), "oblique")
    canonical = nib.as_closest_canonical(nib.Nifti1Image(image, affine))
    spacing = tuple(float(z) for z in canonical.header.get_zooms()[:3])
    assert spacing != (1.0, 1.5, 3.0)  # the oblique affine permutes the axes
    cached, _, props = preprocess_case([Volume(image, affine)], None, spacing)
    assert props["resampled_shape"] == props["shape_after_crop"]
    restored, _ = invert_to_original(cached, props, is_label=False)
    region = image != 0
    mean, std = image[region].mean(dtype=np.float64), image[region].std(dtype=np.float64)
    expected = np.where(region, (image - mean) / std, 0.0)
    np.testing.assert_allclose(restored[0], expected, atol=1e-5)


def test_down_up_sampling_keeps_labels() -> None:
    image, label = _ellipsoids((48, 44, 40))
    affine = _affine((1.0, 1.0, 1.0), "lps")
    _, cached_label, props = preprocess_case(
        [Volume(image, affine)], Volume(label.astype(np.float32), affine), (1.3, 1.3, 1.3)
    )
    assert cached_label is not None
    assert np.prod(props["resampled_shape"]) < 0.5 * np.prod(props["shape_after_crop"])
    restored, _ = invert_to_original(cached_label, props)
    assert restored.shape == label.shape
    for value in (1, 2):
        assert _dice(restored == value, label == value) > 0.95


def test_lps_and_ras_storage_of_one_scan_give_the_same_cache() -> None:
    image, label = _ellipsoids((20, 18, 16))
    ras = _affine((1.0, 1.2, 2.0), "ras")
    # the same physical scan stored with x and y reversed (LPS voxel order)
    lps = ras.copy()
    lps[:3, 0] *= -1
    lps[:3, 1] *= -1
    lps[:3, 3] = ras[:3, 3] + ras[:3, 0] * 19 + ras[:3, 1] * 17
    flip = (slice(None, None, -1), slice(None, None, -1), slice(None))
    for target in ((1.0, 1.2, 2.0), (0.8, 0.8, 0.8)):
        a = preprocess_case([Volume(image, ras)], Volume(label.astype(np.float32), ras), target)
        b = preprocess_case(
            [Volume(image[flip], lps)], Volume(label[flip].astype(np.float32), lps), target
        )
        np.testing.assert_allclose(a[0], b[0], atol=1e-5)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[2]["cache_affine"], b[2]["cache_affine"], atol=1e-9)
        assert a[2]["orientation"] != b[2]["orientation"]


def test_zscore_uses_the_region_and_zeroes_the_outside() -> None:
    rng = np.random.default_rng(1)
    image = np.zeros((16, 16, 16), np.float32)
    image[3:13, 4:12, 2:14] = rng.normal(300.0, 40.0, (10, 8, 12))
    image[7, 7, 7] = 0.0  # a hole inside the region still counts as region
    second = np.where(image != 0, image * 0.5 + 7.0, 0.0).astype(np.float32)
    cached, label, props = preprocess_case(
        [Volume(image, np.eye(4)), Volume(second, np.eye(4))], None, (1.0, 1.0, 1.0)
    )
    assert label is None and props["label_values"] is None
    assert props["crop_bbox"] == [[3, 13], [4, 12], [2, 14]]
    assert cached.shape == (2, 10, 8, 12)
    region_values = image[3:13, 4:12, 2:14]
    for c, raw in enumerate((region_values, region_values * 0.5 + 7.0 * (region_values != 0))):
        stats = props["intensity"][c]
        assert stats["mean"] == pytest.approx(raw.mean(dtype=np.float64), rel=1e-6)
        assert stats["std"] == pytest.approx(raw.std(dtype=np.float64), rel=1e-6)
        assert stats["percentile_99_5"] == pytest.approx(np.percentile(raw, 99.5), rel=1e-6)
        assert stats["num_voxels"] == raw.size
        assert cached[c].mean() == pytest.approx(0.0, abs=1e-5)
        assert cached[c].std() == pytest.approx(1.0, abs=1e-5)


def test_outside_of_region_is_zero_after_resampling() -> None:
    image, _ = _ellipsoids((30, 30, 30))
    region = Volume((image != 0).astype(np.float32), np.eye(4))  # nearest-resampled like the mask
    cached, inside, props = preprocess_case([Volume(image, np.eye(4))], region, (0.7, 1.3, 1.0))
    assert inside is not None and cached.shape[1:] == inside.shape
    assert np.all(cached[0][inside == 0] == 0)
    assert np.abs(cached[0][inside == 1]).min() > 0
    assert props["resampled_spacing_mm"] == pytest.approx([0.7, 1.3, 1.0], rel=0.05)


def test_write_prediction_nifti_lands_on_the_original_grid(tmp_path: Path) -> None:
    image, label = _box_case((12, 10, 8), seed=5)
    affine = _affine((1.0, 1.5, 3.0), "oblique")
    _, cached_label, props = preprocess_case(
        [Volume(image, affine)], Volume(label.astype(np.float32), affine), (0.5, 0.5, 0.5)
    )
    assert cached_label is not None
    path = write_prediction_nifti(cached_label, props, tmp_path / "pred.nii.gz")
    img = nib.load(str(path))
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), label)
    probs = np.stack([(cached_label == v).astype(np.float32) for v in range(4)])
    path = write_prediction_nifti(probs, props, tmp_path / "probs.nii.gz", is_label=False)
    data = np.asarray(nib.load(str(path)).dataobj)
    assert data.shape == (*label.shape, 4)
    np.testing.assert_array_equal(data.argmax(-1), label)


def test_bad_inputs_raise_data_errors_naming_the_file(tmp_path: Path) -> None:
    image, label = _box_case((10, 10, 10))
    img_path = save_volume(image, np.eye(4), tmp_path / "img.nii.gz")
    bad_shape = save_volume(label[:9], np.eye(4), tmp_path / "seg_shape.nii.gz")
    with pytest.raises(DataError, match="seg_shape.nii.gz: shape"):
        preprocess_case([img_path], bad_shape, (1, 1, 1))
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    bad_affine = save_volume(image, shifted, tmp_path / "t2.nii.gz")
    with pytest.raises(DataError, match="t2.nii.gz: affine differs"):
        preprocess_case([img_path, bad_affine], None, (1, 1, 1))
    fractional = save_volume(label + 0.5, np.eye(4), tmp_path / "seg_float.nii.gz")
    with pytest.raises(DataError, match="seg_float.nii.gz: label map has non-integer"):
        preprocess_case([img_path], fractional, (1, 1, 1))
    with_nan = image.copy()
    with_nan[5, 5, 5] = np.nan
    nan_path = save_volume(with_nan, np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match="nan.nii.gz: image contains NaN"):
        preprocess_case([nan_path], None, (1, 1, 1))
    zero_path = save_volume(np.zeros((6, 6, 6), np.float32), np.eye(4), tmp_path / "zero.nii")
    with pytest.raises(DataError, match="zero.nii: image is zero everywhere"):
        preprocess_case([zero_path], None, (1, 1, 1))
    with pytest.raises(DataError, match="missing.nii.gz: file not found"):
        preprocess_case([tmp_path / "missing.nii.gz"], None, (1, 1, 1))
    with pytest.raises(DataError, match="target_spacing_mm"):
        preprocess_case([img_path], None, (1, 0, 1))


# --------------------------------------------------------------------------------------------------
# preprocess_manifest


def _write_dataset(
    root: Path, num_cases: int = 3, shape: tuple[int, int, int] = (14, 12, 10)
) -> Path:
    """Write ``num_cases`` labelled cases and a manifest (absolute root); return the manifest."""
    cases: list[dict[str, Any]] = []
    for i in range(num_cases):
        image, label = _box_case(shape, seed=i)
        affine = _affine((1.0, 1.0, 1.5), "lps" if i % 2 else "ras")
        save_volume(image, affine, root / f"img{i}.nii.gz")
        save_volume(label, affine, root / f"seg{i}.nii.gz", dtype=np.uint8)
        cases.append(
            {
                "id": f"case-{i}",
                "subject": f"sub-{i // 2}",
                "images": {"T1": f"img{i}.nii.gz"},
                "label": f"seg{i}.nii.gz",
                "split": "test" if i == num_cases - 1 else "train",
            }
        )
    data = {
        "name": "toy",
        "root": str(root),
        "channels": ["T1"],
        "labels": {0: "background", 1: "a", 2: "b", 3: "c"},
        "cases": cases,
    }
    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _mtimes(case_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in case_dir.iterdir()}


def test_manifest_run_writes_plan_and_resumes(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src")
    out = tmp_path / "cache"
    plan = preprocess_manifest(
        manifest, out, target_spacing_mm=(1.0, 1.0, 1.0), workers=1, progress=False
    )
    assert plan.last_run["processed"] == 3 and plan.last_run["reused"] == 0
    saved = json.loads((out / PLAN_FILE).read_text())
    assert saved["dataset"] == "toy" and saved["channels"] == ["T1"]
    assert saved["labels"] == {"0": "background", "1": "a", "2": "b", "3": "c"}
    assert saved["target_spacing_mm"] == [1.0, 1.0, 1.0]
    assert saved["manifest"] == str(manifest.resolve())
    assert [c["id"] for c in saved["cases"]] == ["case-0", "case-1", "case-2"]
    assert saved["cases"][2]["split"] == "test" and saved["cases"][1]["subject"] == "sub-0"
    fp = saved["fingerprint"]
    assert fp["spacing_mm"]["case-1"] == pytest.approx([1.0, 1.0, 1.5])
    assert fp["median_shape"] == [14, 12, 10]
    assert 10.0 < fp["intensity"]["T1"]["mean"] < 100.0
    assert saved["toolkit_version"]
    assert Plan.from_dict(saved) == plan

    dirs = {cid: out / "cases" / cid for cid in plan.case_ids}
    before = {cid: _mtimes(d) for cid, d in dirs.items()}
    again = preprocess_manifest(
        manifest, out, target_spacing_mm=(1.0, 1.0, 1.0), workers=1, progress=False
    )
    assert again.last_run["processed"] == 0 and again.last_run["reused"] == 3
    assert {cid: _mtimes(d) for cid, d in dirs.items()} == before

    # a killed run: case-0 lost its marker, case-1 has a corrupt one, a temp folder is left over
    (dirs["case-0"] / DONE_FILE).unlink()
    (dirs["case-1"] / DONE_FILE).write_text("{not json")
    stale = out / "cases" / ".tmp-case-2-deadbeef"
    stale.mkdir()
    (stale / DONE_FILE).write_text("{}")
    with pytest.raises(DataError, match="case-0"):
        open_cache(out)
    (out / PLAN_FILE).unlink()  # as a run killed before writing its plan leaves it
    with pytest.raises(DataError, match="did not finish"):
        open_cache(out)

    third = preprocess_manifest(
        manifest, out, target_spacing_mm=(1.0, 1.0, 1.0), workers=1, progress=False
    )
    assert (third.last_run["processed"], third.last_run["reused"]) == (2, 1)
    assert not stale.exists()
    assert _mtimes(dirs["case-2"]) == before["case-2"]
    assert len(open_cache(out)) == 3

    # a truncated array with an intact marker is detected at read time
    image_file = dirs["case-2"] / "image.npy"
    image_file.write_bytes(image_file.read_bytes()[:-8])
    with pytest.raises(DataError, match="case-2 is incomplete or corrupt"):
        open_cache(out).read_patch("case-2", (0, 0, 0), (2, 2, 2))

    # new settings redo every case
    coarse = preprocess_manifest(
        manifest, out, target_spacing_mm=(2.0, 2.0, 2.0), workers=1, progress=False
    )
    assert coarse.last_run["processed"] == 3
    cache = open_cache(out)
    cropped = cache.properties("case-0")["shape_after_crop"]  # (1, 1, 1.5) mm -> 2 mm
    expected = tuple(round(n * s / 2.0) for n, s in zip(cropped, (1.0, 1.0, 1.5), strict=True))
    assert cache.shape("case-0") == expected and cache.plan["target_spacing_mm"] == [2.0] * 3


def test_bad_case_is_reported_and_the_others_are_kept(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=3)
    (tmp_path / "src" / "img1.nii.gz").unlink()
    (tmp_path / "src" / "seg2.nii.gz").write_bytes(b"not a nifti file at all")
    out = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        preprocess_manifest(manifest, out, workers=2, progress=False)  # through the process pool
    message = str(err.value)
    assert "2 of 3 cases failed" in message
    assert "case case-1:" in message and "img1.nii.gz: file not found" in message
    assert "case case-2:" in message and "seg2.nii.gz: not a readable NIfTI" in message
    assert "Traceback" not in message
    assert (out / "cases" / "case-0" / DONE_FILE).is_file()
    assert not (out / "cases" / "case-1").exists() and not (out / "cases" / "case-2").exists()
    assert not list((out / "cases").glob(".tmp-*"))
    assert not (out / PLAN_FILE).exists()

    image, label = _box_case((14, 12, 10), seed=1)
    save_volume(image, _affine((1.0, 1.0, 1.5), "lps"), tmp_path / "src" / "img1.nii.gz")
    save_volume(label, _affine((1.0, 1.0, 1.5), "lps"), tmp_path / "src" / "seg2.nii.gz")
    with pytest.raises(DataError, match="case case-2: .*seg2.nii.gz: affine differs"):
        preprocess_manifest(manifest, out, workers=1, progress=False)


def test_label_values_outside_the_manifest_are_rejected(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=1)
    image, label = _box_case((14, 12, 10))
    label[5, 5, 5] = 9
    save_volume(label, _affine((1.0, 1.0, 1.5), "ras"), tmp_path / "src" / "seg0.nii.gz")
    with pytest.raises(DataError, match=r"seg0.nii.gz: label values \[9\] are not in"):
        preprocess_manifest(manifest, tmp_path / "cache", workers=1, progress=False)


# --------------------------------------------------------------------------------------------------
# CLI


def test_cli_preprocess_prints_a_summary(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=2)
    out = tmp_path / "cache"
    args = [
        "preprocess",
        str(manifest),
        "--out",
        str(out),
        "--spacing",
        "2",
        "--workers",
        "1",
        "--config",
        "tiny",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "toy: 2 cases" in result.output and "cases/s" in result.output
    assert open_cache(out).plan["target_spacing_mm"] == [2.0, 2.0, 2.0]


def test_cli_preprocess_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=1)
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", str(manifest), "--out", str(tmp_path / "c"), "--spacing", "1,0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("error: --spacing")
    os.remove(tmp_path / "src" / "img0.nii.gz")
    with pytest.raises(SystemExit):
        main(["preprocess", str(manifest), "--out", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert err.startswith("error: toy: 1 of 1 cases failed") and "img0.nii.gz" in err


def test_brain_extraction_crops_to_the_brain_records_the_step_and_inverts(
    tmp_path: Path,
) -> None:
    from toolkit.data.manifest import Case, Manifest
    from toolkit.data.preprocess import ensure_cache
    from toolkit.data.synthetic import synthesize_subject
    from toolkit.errors import ConfigError

    s = synthesize_subject(3, spacing_mm=3.0, fine_mm=3.0, head=True, contrast="T1")
    image, label = Volume(s.image, s.affine), Volume(s.label.astype(np.float32), s.affine)
    _, whole, props_none = preprocess_case([image], label, s.spacing_mm, 3)
    cached, lab, props = preprocess_case([image], label, s.spacing_mm, 3, "otsu")
    assert props["brain_extraction"] == "otsu" and props_none["brain_extraction"] == "none"
    assert lab is not None and whole is not None and lab.size < 0.6 * whole.size  # brain's box
    assert props["intensity"][0]["num_voxels"] <= props["brain_mask_voxels"]
    # Labels are only cropped: the round trip restores them inside the crop, 0 outside.
    inside = np.zeros(s.label.shape, bool)
    inside[tuple(slice(lo, hi) for lo, hi in props["crop_bbox"])] = True
    restored, _ = invert_to_original(lab, props)
    assert np.array_equal(restored, np.where(inside, s.label, 0))
    everywhere, _ = invert_to_original(np.ones_like(lab), props)
    assert not everywhere[~inside].any()  # predictions outside the brain are background
    assert cached.shape[1:] == lab.shape

    save_volume(s.image, s.affine, tmp_path / "head.nii.gz")
    save_volume(s.label, s.affine, tmp_path / "seg.nii.gz", dtype=np.uint8)
    m = Manifest(
        name="heads",
        root=tmp_path,
        channels=("T1",),
        labels={0: "background", 1: "csf", 2: "gm", 3: "wm"},
        cases=(Case("h", "h", images={"T1": Path("head.nii.gz")}, label=Path("seg.nii.gz")),),
    )
    out = tmp_path / "cache"
    ensure_cache(m, out, target_spacing_mm=s.spacing_mm, image_order=3, brain_extraction="otsu")
    plan = Plan.from_dict(json.loads((out / PLAN_FILE).read_text()))
    assert plan.brain_extraction == "otsu"
    assert open_cache(out).properties("h")["crop_bbox"] == props["crop_bbox"]
    ensure_cache(m, out, target_spacing_mm=s.spacing_mm, image_order=3)  # another step: redone
    assert json.loads((out / PLAN_FILE).read_text())["brain_extraction"] == "none"
    with pytest.raises(ConfigError, match="brain_extraction: must be one of none, otsu"):
        preprocess_manifest(m, out, brain_extraction="bet", progress=False)
