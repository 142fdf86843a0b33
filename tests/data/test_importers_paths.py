"""Paths stay inside their root: ``..`` and absolute escapes refused unless allowed, symlinks
warned; nnssl and folder imports that report every bad entry; dataset.json field problems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.data.conftest import write_nifti
from tests.data.test_importers import make_nnssl, make_nnunet
from tests.data.test_importers_messy import run_cli
from toolkit.data.importers import (
    ImportProblemsError,
    import_nnunet,
    scan_folder,
    scan_nnssl,
    scan_nnunet,
)
from toolkit.data.manifest import load_manifest


def _image() -> np.ndarray:
    return np.zeros((4, 4, 4), dtype=np.float32) + 1


def _edit(path: Path, **updates: object) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    path.write_text(json.dumps(data))


# -------------------------------------------------------------------------------------------------
# nnU-Net: dataset.json listings that leave the folder; symlinks


def _listing_outside(tmp_path: Path, image: str) -> Path:
    ds = make_nnunet(tmp_path, train=1, test=0)
    write_nifti(tmp_path / "elsewhere" / "x_0000.nii.gz", _image())
    listing = {
        "a": {
            "images": ["imagesTr/tiny_000_0000.nii.gz", "imagesTr/tiny_000_0001.nii.gz"],
            "label": "labelsTr/tiny_000.nii.gz",
        },
        "b": {
            "images": [image, "imagesTr/tiny_000_0001.nii.gz"],
            "label": "labelsTr/tiny_000.nii.gz",
        },
    }
    _edit(ds / "dataset.json", dataset=listing, numTraining=2)
    return ds


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_nnunet_listing_outside_root_refused_unless_allowed(tmp_path: Path, how: str) -> None:
    outside = tmp_path / "elsewhere" / "x_0000.nii.gz"
    raw = "../elsewhere/x_0000.nii.gz" if how == "dotdot" else str(outside)
    ds = _listing_outside(tmp_path, raw)
    report = scan_nnunet(ds)
    (error,) = report.errors
    assert str(error) == (
        f"{ds / 'dataset.json'}: dataset.b.images[0]: {raw!r} leads outside the dataset root "
        f"{ds}; pass --allow-outside-root (allow_outside_root=True) if that is on purpose"
    )
    assert report.problem_cases == ("b",) and report.manifest is not None
    assert report.manifest.case_ids == ["a"]  # the file outside was never taken

    m = import_nnunet(ds, allow_outside_root=True)
    assert m.case("b").images["T1"] == outside  # written absolute: it is not under the root
    assert m.case("a").images["T1"] == Path("imagesTr/tiny_000_0000.nii.gz")


def test_cli_nnunet_allow_outside_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _listing_outside(tmp_path, "imagesTr/../../elsewhere/x_0000.nii.gz")
    out = tmp_path / "m.yaml"
    assert run_cli(["manifest", "import", "nnunet", str(ds), "-o", str(out)]) == 1
    assert "leads outside the dataset root" in capsys.readouterr().err and not out.exists()
    assert (
        run_cli(["manifest", "import", "nnunet", str(ds), "-o", str(out), "--allow-outside-root"])
        == 0
    )
    assert "imported 2 cases" in capsys.readouterr().err
    m = load_manifest(out)  # the absolute path loads: someone chose it
    assert m.image_paths(m.case("b"))[0] == tmp_path / "elsewhere" / "x_0000.nii.gz"


def test_nnunet_symlink_out_of_root_is_a_warning(tmp_path: Path) -> None:
    ds = make_nnunet(tmp_path, train=2, test=0)
    target = write_nifti(tmp_path / "store" / "t1.nii.gz", _image())
    link = ds / "imagesTr" / "tiny_001_0000.nii.gz"
    link.unlink()
    link.symlink_to(target)
    inside = ds / "labelsTr" / "tiny_000.nii.gz"  # a link within the root says nothing
    inside.rename(ds / "lab0.nii.gz")
    inside.symlink_to(ds / "lab0.nii.gz")
    report = scan_nnunet(ds)
    assert report.ok and report.manifest is not None
    assert report.manifest.case_ids == ["tiny_000", "tiny_001"]
    assert [str(p) for p in report.problems] == [
        f"warning: {link}: symlink to {target.resolve()}, outside the dataset root {ds} (kept)"
    ]


@pytest.mark.parametrize(
    ("updates", "line"),
    [
        ({"labels": None}, "missing key 'labels'"),
        ({"channel_names": None}, "missing key 'channel_names'"),
        ({"file_ending": None}, "missing key 'file_ending'"),
        ({"numTraining": None}, "missing key 'numTraining' (3 training cases found)"),
        ({"numTraining": 4}, "numTraining is 4, but 3 training cases were found"),
        ({"labels": {"background": 0, "a": 2}}, "label values [0, 2] are not consecutive"),
        ({"labels": {"background": 0, "a": 1, "ab": [1, 2]}}, "labels.ab: a region ([1, 2])"),
        ({"file_ending": ".nrrd"}, "file_ending '.nrrd' is not NIfTI"),
        ({"file_ending": "/../../x.nii.gz"}, "file_ending '/../../x.nii.gz' is not NIfTI"),
    ],
)
def test_nnunet_dataset_json_problems(
    tmp_path: Path, updates: dict[str, object], line: str
) -> None:
    ds = make_nnunet(tmp_path, test=0)
    spec = json.loads((ds / "dataset.json").read_text())
    for key, value in updates.items():
        if value is None:
            del spec[key]
        else:
            spec[key] = value
    (ds / "dataset.json").write_text(json.dumps(spec))
    (error,) = scan_nnunet(ds).errors
    assert str(error).startswith(f"{ds / 'dataset.json'}: {line}")
    with pytest.raises(ImportProblemsError):
        import_nnunet(ds)


def test_nnunet_problems_in_dataset_json_and_files_come_together(tmp_path: Path) -> None:
    ds = make_nnunet(tmp_path, test=0, numTraining=7, labels={"background": 0, "a": 1, "b": 5})
    (ds / "labelsTr" / "tiny_002.nii.gz").unlink()
    lines = [str(p) for p in scan_nnunet(ds).errors]
    assert len(lines) == 3, lines  # labels, numTraining and the missing label, in one pass


# -------------------------------------------------------------------------------------------------
# nnssl


def test_nnssl_bad_and_escaping_entries_all_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("nnssl_raw", str(tmp_path / "raw"))
    json_path = make_nnssl(tmp_path, "$nnssl_raw")
    outside = write_nifti(tmp_path / "secret" / "x.nii.gz", _image())
    data = json.loads(json_path.read_text())
    ses = data["datasets"]["ds002"]["subjects"]["sub-01"]["sessions"]
    ses["ses-DEFAULT"]["images"] += [
        {"name": "esc.nii.gz", "image_path": "$nnssl_raw/../secret/x.nii.gz", "modality": "T1w"},
        {"name": "odd.mha", "image_path": "$nnssl_raw/ds002/odd.mha", "modality": "T1w"},
        {"name": "gone.nii.gz", "image_path": "$nnssl_raw/ds002/gone.nii.gz", "modality": "T1w"},
        {"modality": "T1w"},
    ]
    ses["ses-2"] = {"session_id": "ses-2"}
    json_path.write_text(json.dumps(data))

    report = scan_nnssl(json_path)
    at = f"{json_path}: datasets.ds002.subjects.sub-01.sessions"
    assert [str(p) for p in report.errors] == [
        f"{at}.ses-DEFAULT.images[2]: $nnssl_raw/ds002/odd.mha: unknown extension "
        f"(not .nii.gz or .nii)",
        f"{at}.ses-DEFAULT.images[4]: expected an object with an 'image_path'",
        f"{at}.ses-2.images: missing key 'images'",
        f"{at}.ses-DEFAULT.images[1]: '$nnssl_raw/../secret/x.nii.gz' leads outside the dataset "
        f"root {tmp_path / 'raw'}; pass --allow-outside-root (allow_outside_root=True) if that "
        f"is on purpose",
        f"{tmp_path / 'raw' / 'ds002' / 'gone.nii.gz'}: image not found "
        f"(datasets.ds002.subjects.sub-01.sessions.ses-DEFAULT.images[3])",
    ]
    assert report.manifest is not None and len(report.manifest.cases) == 5
    assert report.manifest.root_spec == "${nnssl_raw}"

    allowed = scan_nnssl(json_path, allow_outside_root=True)
    assert allowed.manifest is not None and len(allowed.manifest.cases) == 6
    assert allowed.manifest.root == tmp_path  # the deepest folder holding every image
    assert allowed.manifest.image_paths(allowed.manifest.cases[-1])[0] == outside


# -------------------------------------------------------------------------------------------------
# folder


def test_folder_lists_what_it_cannot_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_nifti(data / "a.nii.gz", _image())
    write_nifti(data / "sub" / "b.nii", _image())
    (data / "sub" / "notes.json").write_text("{}")
    (data / "dir.nii.gz").mkdir()
    (data / ".hidden.nii.gz").write_bytes(b"")  # glob's rule: * does not match hidden files
    target = write_nifti(tmp_path / "elsewhere" / "c.nii.gz", _image())
    (data / "c.nii.gz").symlink_to(target)
    report = scan_folder(str(data / "**" / "*"), name="x")
    assert [str(p) for p in report.problems] == [
        f"{data / 'dir.nii.gz'}: a directory where a NIfTI file belongs",
        f"{data / 'sub' / 'notes.json'}: unknown extension (not .nii.gz or .nii); narrow the "
        f"pattern to leave it out",
        f"warning: {data / 'c.nii.gz'}: symlink to {target.resolve()}, outside the dataset root "
        f"{data} (kept)",
    ]
    assert report.manifest is not None
    assert sorted(report.manifest.case_ids) == ["a", "b", "c"]
    assert report.manifest.case("c").images["image"] == Path("c.nii.gz")  # the link, not target


def test_cli_folder_keep_going(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(tmp_path / "d" / "a.nii.gz", _image())
    (tmp_path / "d" / "a.json").write_text("{}")
    pattern = str(tmp_path / "d" / "*")
    assert run_cli(["manifest", "import", "folder", pattern, "-n", "x"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "a.json: unknown extension" in captured.err
    assert run_cli(["manifest", "import", "folder", pattern, "-n", "x", "--keep-going"]) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out)["cases"][0]["id"] == "a"
    assert captured.err.splitlines()[-1] == (
        f"{pattern}: imported 1 case, skipped 0 fine cases, 1 problem case (1 problem, "
        f"0 warnings); printed; --keep-going: the problem cases are left out"
    )
    assert os.path.exists(tmp_path / "d" / "a.json")


def test_cli_keep_going_with_nothing_usable_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = make_nnunet(tmp_path, test=0, labels={"background": 0, "whole": [1, 2]})
    out = tmp_path / "m.yaml"
    assert run_cli(["manifest", "import", "nnunet", str(ds), "-o", str(out), "--keep-going"]) == 1
    *lines, summary = capsys.readouterr().err.splitlines()
    assert lines == [f"{ds / 'dataset.json'}: labels.whole: a region ([1, 2]); region-based "
                     "labels are not supported"]  # fmt: skip
    assert summary.endswith("nothing written: the problems above leave no manifest to write")
    assert not out.exists()
