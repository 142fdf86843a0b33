"""check_manifests: every problem comes from a real bad file and all are reported in one pass."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.data.conftest import write_nifti
from toolkit.data.manifest import load_manifest
from toolkit.data.validate import Problem, check_manifests, describe_manifests

SHAPE = (8, 8, 8)
LABELS = {0: "background", 1: "csf", 2: "gm"}


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    lab[5:7, 5:7, 5:7] = 2
    return lab


def _write_raw_affine(path: Path, column: float) -> Path:
    """A .nii.gz whose second voxel axis has spacing ``column`` (0 or NaN) in pixdim and sform.

    nibabel repairs a zero pixdim when it writes, so the bytes are assembled by hand.
    """
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(SHAPE)
    hdr.set_data_dtype(np.float32)
    hdr["pixdim"][1:4] = [1.0, column, 1.0]
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, column, 0, 0], [0, 0, 1, 0]
    hdr["vox_offset"] = 352
    data = _image().tobytes(order="F")
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + data))
    return path


def _truncate(path: Path) -> Path:
    """Cut a valid .nii.gz in the middle of its gzip stream (header intact, data short)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(EOFError):  # the file really is truncated, not just odd
        gzip.decompress(path.read_bytes())
    return path


class Dataset:
    """Writes files under ``root`` and collects the cases of one labelled manifest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.good = write_nifti(root / "good.nii.gz", _image())
        self.good_label = write_nifti(root / "good_seg.nii.gz", _label())
        self.cases: list[dict[str, Any]] = []

    def file(self, name: str, array: np.ndarray, **kw: Any) -> str:
        write_nifti(self.root / name, array, **kw)
        return name

    def add(
        self,
        cid: str,
        t1: str = "good.nii.gz",
        t2: str | None = None,
        label: str | None = "good_seg.nii.gz",
        split: str = "train",
        subject: str | None = None,
    ) -> None:
        case: dict[str, Any] = {"id": cid, "subject": subject or cid}
        case["images"] = {"T1": t1, "T2": t2 or t1}
        if label is not None:
            case["label"] = label
        case["split"] = split
        self.cases.append(case)

    def manifest(self, name: str = "ft", **fields: Any) -> Path:
        data = {"name": name, "root": ".", "channels": ["T1", "T2"], "labels": LABELS}
        data.update(fields)
        data["cases"] = self.cases
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path


def pretrain_manifest(root: Path, subjects: list[str], name: str = "pre") -> Path:
    write_nifti(root / "pre.nii.gz", _image(1))
    cases = [{"id": f"{s}_a", "subject": s, "images": "pre.nii.gz"} for s in subjects]
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "channels": ["T1"], "cases": cases}))
    return path


# Each entry sets up one bad case (id = key) and names the problems it must produce:
# (file name or None, message fragment).
Setup = Callable[[Dataset], None]
BAD: dict[str, tuple[Setup, list[tuple[str | None, str]]]] = {
    "missing": (
        lambda d: d.add("missing", t1="nope.nii.gz", split="test", label=None),
        [("nope.nii.gz", "file not found")],
    ),
    "truncated": (
        lambda d: (
            _truncate(write_nifti(d.root / "trunc.nii.gz", _image())),
            d.add("truncated", t1="trunc.nii.gz", split="test", label=None),
        ),
        [("trunc.nii.gz", "truncated or corrupt voxel data (EOFError: ")],
    ),
    "garbage": (
        lambda d: (
            (d.root / "junk.nii.gz").write_bytes(b"not a nifti file at all" * 20),
            d.add("garbage", t1="junk.nii.gz", split="test", label=None),
        ),
        [("junk.nii.gz", "not a readable NIfTI file")],
    ),
    "four_d": (
        lambda d: d.add(
            "four_d", t1=d.file("4d.nii.gz", np.zeros((*SHAPE, 2))), split="test", label=None
        ),
        [("4d.nii.gz", "expected a 3D volume, got shape (8, 8, 8, 2)")],
    ),
    "nonfinite": (
        lambda d: d.add(
            "nonfinite",
            t1=d.file("nan.nii.gz", np.where(_image() > 1.5, np.nan, _image()).astype("f4")),
            t2=d.file("inf.nii.gz", np.full(SHAPE, np.inf, dtype=np.float32)),
            split="test",
            label=None,
        ),
        [
            ("nan.nii.gz", f"contains {int((_image() > 1.5).sum())} NaN voxel(s)"),
            ("inf.nii.gz", f"contains {np.prod(SHAPE)} Inf voxel(s)"),
        ],
    ),
    "zero_spacing": (
        lambda d: (
            _write_raw_affine(d.root / "zero.nii.gz", 0.0),
            d.add("zero_spacing", t1="zero.nii.gz", split="test", label=None),
        ),
        [
            ("zero.nii.gz", "voxel spacing (1, 0, 1) mm from the header pixdim is not positive"),
            ("zero.nii.gz", "voxel spacing (1, 0, 1) mm from the affine is not positive"),
        ],
    ),
    "nan_spacing": (
        lambda d: (
            _write_raw_affine(d.root / "nanspacing.nii.gz", np.nan),
            d.add("nan_spacing", t1="nanspacing.nii.gz", split="test", label=None),
        ),
        [
            ("nanspacing.nii.gz", "(1, nan, 1) mm from the header pixdim is not positive"),
            ("nanspacing.nii.gz", "(1, nan, 1) mm from the affine is not positive"),
        ],
    ),
    "channel_shape": (
        lambda d: d.add(
            "channel_shape",
            t2=d.file("t2_big.nii.gz", np.random.default_rng(3).normal(size=(8, 8, 9))),
        ),
        [
            (
                "t2_big.nii.gz",
                "channel T2 is on a different grid than channel T1: shape (8, 8, 9) vs (8, 8, 8)",
            )
        ],
    ),
    "channel_affine": (
        lambda d: d.add(
            "channel_affine",
            t2=d.file("t2_shift.nii.gz", _image(), affine=np.diag([1, 1, 1.5, 1.0])),
        ),
        [("t2_shift.nii.gz", "channel T2 is on a different grid than channel T1: affines differ")],
    ),
    "label_shape": (
        lambda d: d.add("label_shape", label=d.file("seg_big.nii.gz", np.ones((9, 8, 8), "u1"))),
        [("seg_big.nii.gz", "label grid differs from the image grid (T1): shape (9, 8, 8)")],
    ),
    "label_affine": (
        lambda d: d.add(
            "label_affine",
            label=d.file("seg_shift.nii.gz", _label(), spacing=(1.0, 1.1, 1.0)),
        ),
        [("seg_shift.nii.gz", "label grid differs from the image grid (T1): affines differ")],
    ),
    "label_values": (
        lambda d: d.add(
            "label_values", label=d.file("seg5.nii.gz", np.where(_label() == 2, 5, _label()))
        ),
        [("seg5.nii.gz", "label value(s) [5] not in the declared labels [0, 1, 2]")],
    ),
    "label_fraction": (
        lambda d: d.add(
            "label_fraction",
            label=d.file("segf.nii.gz", np.where(_label() == 2, 0.5, _label()).astype("f4")),
        ),
        [("segf.nii.gz", "1 non-integer label value(s), e.g. (0.5)")],
    ),
    "label_empty": (
        lambda d: d.add("label_empty", label=d.file("seg0.nii.gz", np.zeros(SHAPE, "u1"))),
        [("seg0.nii.gz", "label map is empty (only background)")],
    ),
    "unlabelled_train": (
        lambda d: d.add("unlabelled_train", label=None, split="train"),
        [(None, "no label file, but only test cases may be unlabelled (split: train)")],
    ),
    "duplicate": (
        lambda d: (d.add("duplicate"), d.add("duplicate", subject="duplicate")),
        [(None, "case id appears 2 times")],
    ),
}


def _find(problems: list[Problem], case: str, file: str | None, fragment: str) -> list[Problem]:
    return [
        p
        for p in problems
        if p.case == case
        and (file is None and p.file is None or file is not None and str(p.file).endswith(file))
        and fragment in p.message
    ]


def test_clean_manifests_have_no_problems(tmp_path: Path) -> None:
    d = Dataset(tmp_path)
    # Trailing singleton axes and a label affine within tolerance are fine.
    d.add("a", t2=d.file("t2_4d1.nii.gz", _image(2)[..., None]))
    d.add("b", label=d.file("seg_eps.nii.gz", _label(), spacing=(1.0, 1.0 + 1e-6, 1.0)))
    d.add("c", split="test", label=None)
    ft = d.manifest()
    pre = pretrain_manifest(tmp_path, ["p1", "p2", "a"])  # "a" is train-only: no leakage
    assert check_manifests([ft, pre], progress=False) == []
    summary = describe_manifests([load_manifest(ft), load_manifest(pre)])
    assert summary == "2 manifests, 6 cases, 0 problems (5 subjects, 1 labelled set)"


@pytest.mark.parametrize("kind", sorted(BAD))
def test_each_bad_file_is_reported(tmp_path: Path, kind: str) -> None:
    d = Dataset(tmp_path)
    d.add("ok")
    setup, expected = BAD[kind]
    setup(d)
    problems = check_manifests(d.manifest(), progress=False)
    for file, fragment in expected:
        assert len(_find(problems, kind, file, fragment)) == 1, (file, fragment, problems)
    assert len(problems) == len(expected), problems
    assert all(str(p).startswith(f"ft: case {kind}: ") for p in problems)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    d = Dataset(tmp_path)
    for setup, _ in BAD.values():
        setup(d)
    # Subject leakage inside one manifest (train and test) and into pretraining.
    d.add("split_a", subject="twice", split="train")
    d.add("split_b", subject="twice", split="test")
    d.add("pre_leak", subject="shared", split="test")
    ft = d.manifest()
    pre = pretrain_manifest(tmp_path, ["shared", "other"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nbogus: 1\ncases: [{id: a, images: a.nii.gz}]\n")

    problems = check_manifests([ft, pre, broken], progress=False, num_workers=2)

    expected = [(kind, f, m) for kind, (_, items) in BAD.items() for f, m in items]
    for kind, file, fragment in expected:
        assert _find(problems, kind, file, fragment), (kind, file, fragment)
    leak_in = [p for p in problems if "subject twice is in more than one split" in p.message]
    assert len(leak_in) == 1 and "test: split_b; train: split_a" in leak_in[0].message
    leak_out = _find(problems, "pre_leak", None, "also in pretraining manifest pre (leakage)")
    assert len(leak_out) == 1
    schema = [p for p in problems if p.manifest.endswith("broken.yaml")]
    assert len(schema) == 1 and schema[0].message == "unknown top-level field(s) bogus"
    assert len(problems) == len(expected) + 3


def test_pretrain_keyword_declares_labelled_sets_as_pretraining(tmp_path: Path) -> None:
    d = Dataset(tmp_path / "ft")
    d.add("t", split="test", subject="s1")
    ft = d.manifest()
    other = Dataset(tmp_path / "other")
    other.add("x", subject="s1")
    labelled_pre = other.manifest(name="other")
    assert check_manifests([ft, labelled_pre], progress=False) == []
    problems = check_manifests([ft], pretrain=[labelled_pre], progress=False)
    assert [str(p) for p in problems] == [
        "ft: case t: test subject s1 is also in pretraining manifest other (leakage)"
    ]


def test_label_file_in_unlabelled_manifest(tmp_path: Path) -> None:
    write_nifti(tmp_path / "img.nii.gz", _image())
    write_nifti(tmp_path / "seg.nii.gz", _label())
    case = {"id": "a", "images": "img.nii.gz", "label": "seg.nii.gz"}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "cases": [case]}))
    (problem,) = check_manifests(path, progress=False)
    assert problem.message == "has a label file, but the manifest declares no labels"
    assert problem.file is not None and problem.file.endswith("seg.nii.gz")


def test_missing_root_is_one_problem(tmp_path: Path) -> None:
    cases = [{"id": f"c{i}", "images": f"c{i}.nii.gz"} for i in range(5)]
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "root": "no_such_dir", "cases": cases}))
    (problem,) = check_manifests([path], progress=False)
    assert str(problem).startswith("m: data root ") and "is not a folder" in problem.message


def test_problem_line_format() -> None:
    assert str(Problem("m", "c1", "a.nii.gz", "bad")) == "m: case c1: file a.nii.gz: bad"
    assert str(Problem("m", None, None, "bad")) == "m: bad"


def test_shared_files_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import toolkit.data.validate as validate

    d = Dataset(tmp_path)
    for i in range(4):
        d.add(f"c{i}")  # every case uses good.nii.gz for both channels and good_seg.nii.gz
    calls: list[Path] = []
    real = validate._inspect_file

    def counting(path: Path, is_label: bool, **kw: Any) -> Any:
        calls.append(path)
        return real(path, is_label, **kw)

    monkeypatch.setattr(validate, "_inspect_file", counting)
    assert check_manifests(d.manifest(), progress=False) == []
    assert sorted(p.name for p in calls) == ["good.nii.gz", "good_seg.nii.gz"]


# -------------------------------------------------------------------------------------------------
# `mae3d manifest check`


def _run(argv: list[str]) -> int:
    from toolkit.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_check_clean_prints_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Dataset(tmp_path)
    d.add("a")
    d.add("b", split="test", subject="s-b")
    ft = d.manifest()
    pre = pretrain_manifest(tmp_path, ["p1", "p2"])
    assert _run(["manifest", "check", str(ft), str(pre), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["2 manifests, 4 cases, 0 problems (4 subjects, 1 labelled set)"]


def test_cli_check_prints_every_problem_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # files below the working directory are shown relative to it
    d = Dataset(tmp_path)
    d.add("a", label=d.file("seg0.nii.gz", np.zeros(SHAPE, "u1")))
    d.add("b", t1="nope.nii.gz", split="test", label=None, subject="p1")
    ft = d.manifest()
    pre = pretrain_manifest(tmp_path, ["p1"])
    assert _run(["manifest", "check", str(ft), str(pre), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "ft: case a: file seg0.nii.gz: label map is empty (only background)",
        "ft: case b: file nope.nii.gz: file not found",
        "warning: ft: declared class(es) 1 (csf), 2 (gm) occur in none of the 1 readable label "
        "map(s)",
        "ft: case b: test subject p1 is also in pretraining manifest pre (leakage)",
    ]
    assert "3 problem(s) and 1 warning(s) found" in captured.err


def test_cli_check_reports_schema_errors_as_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    assert _run(["manifest", "check", str(missing)]) == 1
    assert capsys.readouterr().out.strip().endswith("missing.yaml: manifest file not found")
