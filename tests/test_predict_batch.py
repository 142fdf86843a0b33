"""``mae3d predict``: input forms, skip-and-continue, outputs, volumes, workers."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from toolkit.cli import main
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.errors import DataError
from toolkit.predict import load_predictor
from toolkit.predict_batch import find_cases, predict

from .test_predict import LABELS, make_run, oblique_affine, phantom, write_scan

AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])


def _outputs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_folder_glob_file_and_manifest_inputs(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    scans = tmp_path / "scans"
    for i in range(2):
        write_scan(scans / f"sub-0{i}_T1w.nii.gz", AFFINE, seed=i)
    (scans / "notes.txt").write_text("not an image")

    assert [c.case_id for c in find_cases(scans, 1)] == ["sub-00_T1w", "sub-01_T1w"]
    assert [c.case_id for c in find_cases(str(scans / "*01*.nii.gz"), 1)] == ["sub-01_T1w"]
    assert [c.case_id for c in find_cases(scans / "sub-00_T1w.nii.gz", 1)] == ["sub-00_T1w"]
    manifest = Manifest(
        name="new",
        root=scans,
        root_spec=str(scans),
        channels=("image",),
        cases=(Case(case_id="x", subject="x", images={"image": Path("sub-01_T1w.nii.gz")}),),
    )
    manifest_path = save_manifest(manifest, tmp_path / "new.yaml")
    (case,) = find_cases(manifest_path, 1)
    assert case.case_id == "x" and case.files == (scans / "sub-01_T1w.nii.gz",)

    predictor = load_predictor([run])
    by_folder = predict([], scans, tmp_path / "a", predictor=predictor, progress=False)
    by_glob = predict([], f"{scans}/*.nii.gz", tmp_path / "b", predictor=predictor, progress=False)
    by_manifest = predict([], manifest_path, tmp_path / "c", predictor=predictor, progress=False)
    assert by_folder.predicted == by_glob.predicted == ["sub-00_T1w", "sub-01_T1w"]
    assert by_manifest.predicted == ["x"]
    assert _outputs(tmp_path / "a") == ["sub-00_T1w.nii.gz", "sub-01_T1w.nii.gz", "volumes.csv"]
    assert (tmp_path / "c" / "x.nii.gz").read_bytes() == (
        tmp_path / "b" / "sub-01_T1w.nii.gz"
    ).read_bytes()

    with pytest.raises(DataError, match="no such folder, file or glob"):
        find_cases(tmp_path / "missing", 1)
    with pytest.raises(DataError, match="no .nii/.nii.gz files"):
        find_cases(str(tmp_path / "*.nothing"), 1)


def test_nnunet_images_ts_groups_channels(tmp_path: Path) -> None:
    run = make_run(tmp_path, in_channels=2)
    images = tmp_path / "Dataset001_X" / "imagesTs"
    for case in ("brain_001", "brain_002"):
        for ch in range(2):
            write_scan(images / f"{case}_{ch:04d}.nii.gz", AFFINE, seed=ch)
    write_scan(images / "brain_003_0000.nii.gz", AFFINE)  # its second channel is missing

    cases = find_cases(images, 2)
    assert [c.case_id for c in cases] == ["brain_001", "brain_002", "brain_003"]
    assert [f.name for f in cases[0].files] == ["brain_001_0000.nii.gz", "brain_001_0001.nii.gz"]
    lines: list[str] = []
    report = predict([run], images, tmp_path / "out", progress=False, log=lines.append)
    assert report.predicted == ["brain_001", "brain_002"]
    assert [cid for cid, _ in report.failed] == ["brain_003"]
    assert lines == [
        "skipped brain_003: 1 channel file(s) (_0000), but the run expects 2 (_0000.._0001)"
    ]
    # A one-channel folder for a two-channel run: every case is refused, none crashes.
    plain = tmp_path / "plain"
    write_scan(plain / "scan.nii.gz", AFFINE)
    report = predict([run], plain, tmp_path / "out2", progress=False, log=lines.append)
    assert report.failed and "the run expects 2" in report.failed[0][1]


def _bad_inputs(folder: Path) -> None:
    write_scan(folder / "good1.nii.gz", AFFINE, seed=1)
    write_scan(folder / "good2.nii.gz", oblique_affine((1.0, 1.2, 1.5)), seed=2)
    (folder / "garbage.nii.gz").write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))
    four_d = np.stack([phantom()] * 3, axis=-1)
    nib.save(nib.Nifti1Image(four_d, AFFINE), str(folder / "fourd.nii.gz"))
    save_volume(phantom(), np.diag([1000.0, 1.5, 1.5, 1.0]), folder / "huge.nii.gz")


def test_bad_inputs_are_skipped_and_counted_in_the_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    scans = tmp_path / "scans"
    _bad_inputs(scans)
    out = tmp_path / "out"
    # A temporary left behind by a killed run is cleaned up.
    out.mkdir()
    (out / ".good1.999.tmp.nii.gz").write_bytes(b"half written")

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(run), "--input", str(scans), "--out", str(out), "--workers", "2"])
    assert exit_info.value.code == 3
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "skipped fourd: " in text and "expected a 3D volume" in text
    assert "skipped garbage: " in text and "not a readable NIfTI" in text
    assert "skipped huge: " in text and "voxel spacing" in text
    assert "predicted 2 case(s)" in text and "3 failed" in text
    assert _outputs(out) == ["good1.nii.gz", "good2.nii.gz", "volumes.csv"]


def test_volumes_probabilities_and_skip_existing(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    scans = tmp_path / "scans"
    write_scan(scans / "a.nii.gz", oblique_affine((1.2, 0.9, 2.0)))
    write_scan(scans / "b.nii.gz", AFFINE, seed=3)
    out = tmp_path / "out"
    report = predict([run], scans, out, progress=False, save_probabilities=True, workers=0)
    assert report.predicted == ["a", "b"]

    volumes = pd.read_csv(out / "volumes.csv")
    assert list(volumes.columns) == ["case", "label", "label_name", "volume_ml"]
    assert len(volumes) == 2 * len(LABELS)
    img = nib.load(out / "a.nii.gz")
    labels = np.asarray(img.dataobj)
    voxel_ml = 1.2 * 0.9 * 2.0 / 1000
    for value in LABELS:
        got = volumes.query(f"case == 'a' and label == {value}")["volume_ml"].item()
        assert got == pytest.approx((labels == value).sum() * voxel_ml)

    with np.load(out / "a.npz") as npz:
        prob = npz["probabilities"]
        np.testing.assert_allclose(npz["affine"], img.affine)
        assert list(npz["labels"]) == sorted(LABELS)
    assert prob.dtype == np.float16 and prob.shape == (len(LABELS), *labels.shape)
    np.testing.assert_allclose(prob.astype(np.float32).sum(0), 1.0, atol=5e-3)
    # Labels are the argmax on the network's grid; linear resampling moves only borders.
    assert (prob.argmax(0) == labels).mean() > 0.9

    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    write_scan(scans / "c.nii.gz", AFFINE, seed=4)
    again = predict([run], scans, out, progress=False, save_probabilities=True, skip_existing=True)
    assert again.existing == ["a", "b"] and again.predicted == ["c"]
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.suffix != ".csv")
    assert set(pd.read_csv(out / "volumes.csv")["case"]) == {"a", "b", "c"}


def test_background_workers_give_the_same_files(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    scans = tmp_path / "scans"
    for i in range(3):
        write_scan(scans / f"s{i}.nii.gz", AFFINE, seed=i)
    predictor = load_predictor([run])
    predict([], scans, tmp_path / "w0", predictor=predictor, progress=False, workers=0)
    predict([], scans, tmp_path / "w2", predictor=predictor, progress=False, workers=2)
    for i in range(3):
        name = f"s{i}.nii.gz"
        assert (tmp_path / "w0" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    args = ["predict", str(run), "--input", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--checkpoint", "latest"], "--checkpoint: expected best or final"),
        (["--overlap", "1.5"], "--overlap: must be in [0, 1)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *extra])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == f"error: {message}" + (
            ", got 'latest'" if "checkpoint" in message else ", got 1.5"
        )
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "nope"), "--input", str(tmp_path), "--out", "o"])
    assert "checkpoint not found" in capsys.readouterr().err
