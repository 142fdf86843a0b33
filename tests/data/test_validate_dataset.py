"""Dataset-level checks, warnings and the per-file guard of `mae3d manifest check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.data.corpus import image, label, raw_nifti, save
from toolkit.data import dataset_checks
from toolkit.data.manifest import Case, Manifest
from toolkit.data.validate import Problem, check_manifests

LABELS = {0: "background", 1: "csf", 2: "gm"}


def _manifest(ids: list[str], images: list[str] | None = None) -> Manifest:
    files = images or [f"{i}.nii.gz" for i in ids]
    cases = tuple(
        Case(case_id=i, subject=i, images={"T1": Path(f)}) for i, f in zip(ids, files, strict=True)
    )
    return Manifest(name="m", root=Path("/data"), channels=("T1",), cases=cases)


def _write(root: Path, cases: list[dict[str, Any]], labels: Any = LABELS) -> Path:
    data: dict[str, Any] = {"name": "m", "root": ".", "channels": ["T1"]}
    if labels is not None:
        data["labels"] = labels
    data["cases"] = cases
    path = root / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _good(root: Path, name: str = "a", seed: int = 0) -> dict[str, Any]:
    save(root / f"{name}.nii.gz", image(seed))
    save(root / f"{name}_seg.nii.gz", label())
    return {"id": name, "images": f"{name}.nii.gz", "label": f"{name}_seg.nii.gz", "split": "train"}


def test_ids_equal_up_to_letter_case_and_unusable_ids() -> None:
    found = dataset_checks.check_ids(_manifest(["Sub_1", "sub_1", "x", "x", "a/b", "..", " c"]))
    messages = [(case, message) for case, _, message, _ in found]
    assert (
        None,
        "case ids Sub_1, sub_1 differ only in letter case (they collide on "
        "case-insensitive file systems)",
    ) in messages
    assert ("x", "case id appears 2 times") in messages
    unusable = sorted(case for case, m in messages if case and "cannot be a file name" in m)
    assert unusable == [" c", "..", "a/b"]
    assert len(found) == 5
    assert dataset_checks.check_ids(_manifest(["a", "b", "Käse-ü"])) == []


def test_file_paths_equal_up_to_letter_case() -> None:
    m = _manifest(["a", "b", "c"], ["x/T1.nii.gz", "x/t1.nii.gz", "y/t1.nii.gz"])
    ((case, path, message, severity),) = dataset_checks.check_file_names(m)
    assert case is None and path == Path("/data/x/t1.nii.gz") and severity == "error"
    assert message.startswith("file name differs from T1.nii.gz only in letter case")


@pytest.mark.parametrize(
    ("labels", "detail"),
    [
        ({0: "bg", 1: "a", 2: "b"}, None),
        (
            {0: "bg", 1: "a", 3: "b"},
            "declared label values [0, 1, 3] are not consecutive from 0 "
            "(nnU-Net needs 0..N): missing 2",
        ),
        ({0: "bg", 4: "a"}, "missing 1, 2, 3"),
        (
            {-1: "x", 0: "bg", 1: "a"},
            "[-1, 0, 1] are not consecutive from 0 (nnU-Net needs 0..N): negative values",
        ),
        (None, None),
    ],
)
def test_declared_labels_must_be_zero_to_n(labels: dict[int, str] | None, detail: str) -> None:
    found = dataset_checks.check_declared_labels(labels)
    if detail is None:
        assert found == []
    else:
        ((_, _, message, severity),) = found
        assert detail in message and severity == "error"


def test_declared_classes_that_never_occur_are_a_warning() -> None:
    labels = {0: "bg", 1: "csf", 2: "gm", 3: "wm"}
    ((_, _, message, severity),) = dataset_checks.check_unused_labels(labels, [(0, 1), (0, 1, 2)])
    assert message == "declared class(es) 3 (wm) occur in none of the 2 readable label map(s)"
    assert severity == "warning"
    ((_, _, partial, _),) = dataset_checks.check_unused_labels(labels, [(0, 1, 3), None])
    assert partial.endswith("2 (gm) occur in none of the 1 readable label map(s) (1 unreadable)")
    assert dataset_checks.check_unused_labels(labels, [(0, 1, 2, 3)]) == []
    assert dataset_checks.check_unused_labels(labels, [None]) == []  # nothing read, nothing said


def test_constant_images_and_label_equal_to_image(tmp_path: Path) -> None:
    cases = [_good(tmp_path)]
    save(tmp_path / "zero.nii.gz", np.zeros((8, 8, 8), np.float32))
    save(tmp_path / "const.nii.gz", np.full((8, 8, 8), -3.5, np.float32))
    cases.append({"id": "z", "images": "zero.nii.gz", "split": "test"})
    cases.append({"id": "c", "images": "const.nii.gz", "split": "test"})
    cases.append({"id": "same", "images": "a.nii.gz", "label": "a.nii.gz", "split": "train"})
    problems = check_manifests(_write(tmp_path, cases), progress=False)
    lines = [str(p) for p in problems]
    assert (
        "m: case z: file " + str(tmp_path / "zero.nii.gz") + ": image is zero everywhere" in lines
    )
    assert any(
        line.endswith("const.nii.gz: image is constant (every voxel is -3.5)") for line in lines
    )
    same = [p.message for p in problems if p.case == "same"]
    assert "the label file is also an image of this case" in same
    assert "label map is empty (only background)" not in same  # it holds no integer values at all


def test_warnings_only_when_asked_for(tmp_path: Path) -> None:
    thin = np.diag([1.0, 1.0, 8.0, 1.0])
    save(tmp_path / "t.nii.gz", image(1), affine=thin)
    save(tmp_path / "t_seg.nii.gz", label(classes=(1,)), affine=thin)
    case = {"id": "t", "images": "t.nii.gz", "label": "t_seg.nii.gz", "split": "train"}
    path = _write(tmp_path, [case])
    assert check_manifests(path, progress=False) == []
    found = check_manifests(path, progress=False, warnings=True)
    assert [p.severity for p in found] == ["warning", "warning"]
    assert str(found[0]) == (
        f"warning: m: case t: file {tmp_path / 't.nii.gz'}: voxel spacing (1, 1, 8) mm is "
        "anisotropic (8:1, more than 5:1)"
    )
    assert (
        str(found[1])
        == "warning: m: declared class(es) 2 (gm) occur in none of the 1 readable label map(s)"
    )
    assert str(Problem("m", None, None, "x", "warning")) == "warning: m: x"


def test_qform_sform_disagreement_says_which_is_used(tmp_path: Path) -> None:
    cases = [_good(tmp_path)]
    raw_nifti(tmp_path / "q.nii.gz", image(2), fields={"srow_x": [1.0, 0.0, 0.0, -2.0]})
    save(tmp_path / "q_seg.nii.gz", label(), affine=np.array([[1, 0, 0, -2.0], *np.eye(4)[1:]]))
    cases.append({"id": "q", "images": "q.nii.gz", "label": "q_seg.nii.gz", "split": "train"})
    (problem,) = check_manifests(_write(tmp_path, cases), progress=False)
    assert problem.case == "q" and problem.file is not None and problem.file.endswith("q.nii.gz")
    assert problem.message == (
        "qform and sform disagree by up to 2 mm: nibabel and this toolkit use the sform "
        "(sform_code 1); readers that prefer the qform (qform_code 1) see another grid"
    )


def test_an_unexpected_exception_is_one_line_and_the_report_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.data.validate as validate

    cases = [_good(tmp_path, "a", 0), _good(tmp_path, "b", 1)]
    save(tmp_path / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32))
    cases.append({"id": "n", "images": "nan.nii.gz", "split": "test"})
    real = validate.read_voxels

    def flaky(img: Any, path: Path, **kw: Any) -> Any:
        if Path(path).name == "a.nii.gz":
            raise MemoryError("Unable to allocate 8.00 GiB")
        return real(img, path, **kw)

    monkeypatch.setattr(validate, "read_voxels", flaky)
    problems = check_manifests(_write(tmp_path, cases), progress=False, num_workers=2)
    assert [(p.case, p.message) for p in problems] == [
        ("a", "could not be read: MemoryError: Unable to allocate 8.00 GiB"),
        ("n", "contains 512 NaN voxel(s)"),
    ]


def _run(argv: list[str]) -> int:
    from toolkit.cli import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_warnings_alone_exit_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thin = np.diag([0.1, 0.1, 10.0, 1.0])
    save(tmp_path / "t.nii.gz", image(1), affine=thin)
    save(tmp_path / "t_seg.nii.gz", label(), affine=thin)
    case = {"id": "t", "images": "t.nii.gz", "label": "t_seg.nii.gz", "split": "train"}
    assert _run(["manifest", "check", str(_write(tmp_path, [case])), "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("warning: m: case t: file ")
    assert out[0].endswith("anisotropic (100:1, more than 5:1)")
    assert out[1] == "1 manifest, 1 case, 0 problems, 1 warning (1 subject, 1 labelled set)"


def test_cli_max_voxels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, [_good(tmp_path)])
    assert _run(["manifest", "check", str(path), "--max-voxels", "511"]) == 1
    out = capsys.readouterr().out
    assert "header claims 512 voxels (8, 8, 8), more than the voxel budget of 511" in out
    assert _run(["manifest", "check", str(path), "--max-voxels", "512"]) == 0


def test_cli_bad_voxel_budget_in_the_environment_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, [_good(tmp_path), _good(tmp_path, "b", 1)])
    monkeypatch.setenv("MAE3D_MAX_VOXELS", "2**31")
    assert _run(["manifest", "check", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: MAE3D_MAX_VOXELS: expected a positive integer, got '2**31'\n"
