"""Importers (nnU-Net, nnssl, folder) on tiny generated trees; the `manifest import` commands."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.data.conftest import write_nifti
from toolkit.cli import main
from toolkit.data.importers import (
    ImportProblemsError,
    import_folder,
    import_nnssl,
    import_nnunet,
    rebase_root,
    scan_nnssl,
    scan_nnunet,
)
from toolkit.data.manifest import load_manifest
from toolkit.data.validate import check_manifests
from toolkit.errors import ManifestError

SHAPE = (8, 8, 8)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    lab[3:5, 3:5, 3:5] = 2
    return lab


def make_nnunet(root: Path, *, train: int = 3, test: int = 2, **spec_updates: object) -> Path:
    """A 2-channel nnU-Net v2 raw folder: imagesTr/labelsTr and unlabelled imagesTs."""
    ds = root / "Dataset042_Tiny"
    spec: dict[str, object] = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "edema": 1, "core": 2},
        "numTraining": train,
        "file_ending": ".nii.gz",
    }
    for key, value in spec_updates.items():
        if value is None:  # None removes a key
            del spec[key]
        else:
            spec[key] = value
    ds.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps(spec))
    for i in range(train):
        for ch in range(2):
            write_nifti(ds / "imagesTr" / f"tiny_{i:03d}_{ch:04d}.nii.gz", _image(i * 2 + ch))
        write_nifti(ds / "labelsTr" / f"tiny_{i:03d}.nii.gz", _label())
    for i in range(test):
        for ch in range(2):
            write_nifti(ds / "imagesTs" / f"tinyts_{i:03d}_{ch:04d}.nii.gz", _image(100 + i))
    return ds


def make_nnssl(root: Path, image_root: str) -> Path:
    """pretrain_data.json of one collection: 2 datasets, 3 subjects, 4 sessions, 5 images."""
    layout = {
        "ds001": {
            "sub-01": {"ses-1": ["T1w", "T2w"], "ses-2": ["T1w"]},
            "sub-02": {"ses-1": ["T1w"]},
        },
        "ds002": {"sub-01": {"ses-DEFAULT": ["FLAIR"]}},
    }
    datasets: dict[str, object] = {}
    for ds, subjects in layout.items():
        subs: dict[str, object] = {}
        for sub, sessions in subjects.items():
            sess: dict[str, object] = {}
            for ses, mods in sessions.items():
                images = []
                for mod in mods:
                    name = f"{sub}_{ses}_{mod}.nii.gz"
                    rel = f"{ds}/{sub}/{ses}/anat/{name}"
                    write_nifti(root / "raw" / rel, _image(len(images)))
                    images.append(
                        {
                            "name": name,
                            "image_path": f"{image_root}/{rel}",
                            "modality": mod,
                            "image_info": {"manufacturer": "Siemens"},
                            "associated_masks": {"anonymization_mask": None, "anatomy_mask": None},
                        }
                    )
                sess[ses] = {"session_id": ses, "session_info": None, "images": images}
            subs[sub] = {"subject_id": sub, "subject_info": {"age": 30}, "sessions": sess}
        datasets[ds] = {"dataset_index": ds, "name": None, "dataset_info": {}, "subjects": subs}
    path = root / "Dataset900_Tiny" / "pretrain_data.json"
    path.parent.mkdir(parents=True)
    path.write_text(
        json.dumps(
            {"collection_index": 900, "collection_name": "Dataset900_Tiny", "datasets": datasets}
        )
    )
    return path


# -------------------------------------------------------------------------------------------------
# nnU-Net


def test_import_nnunet(tmp_path: Path) -> None:
    ds = make_nnunet(tmp_path, description="two tiny channels")
    m = import_nnunet(ds)
    assert m.name == "Dataset042_Tiny" and m.root == ds.resolve()
    assert m.channels == ("T1", "FLAIR")
    assert m.labels == {0: "background", 1: "edema", 2: "core"}
    assert m.extra == {"description": "two tiny channels"}
    assert [c.case_id for c in m.cases] == [
        "tiny_000", "tiny_001", "tiny_002", "tinyts_000", "tinyts_001",
    ]  # fmt: skip
    assert [c.split for c in m.cases] == ["train"] * 3 + ["test"] * 2
    first, last = m.cases[0], m.cases[-1]
    assert first.images == {
        "T1": Path("imagesTr/tiny_000_0000.nii.gz"),
        "FLAIR": Path("imagesTr/tiny_000_0001.nii.gz"),
    }
    assert first.label == Path("labelsTr/tiny_000.nii.gz") and last.label is None
    assert check_manifests(m, progress=False) == []


def test_import_nnunet_v1_spec_and_missing_label_is_a_problem(tmp_path: Path) -> None:
    ds = make_nnunet(
        tmp_path,
        test=0,
        channel_names=None,
        file_ending=None,  # v1 had no file_ending: .nii.gz
        modality={"0": "T1", "1": "FLAIR"},
        labels={"0": "background", "1": "edema", "2": "core"},
    )
    (ds / "labelsTr" / "tiny_001.nii.gz").unlink()
    with pytest.raises(ImportProblemsError, match="tiny_001.nii.gz: image without label") as exc:
        import_nnunet(ds)
    assert exc.value.report.problem_cases == ("tiny_001",)
    m = import_nnunet(ds, keep_going=True)
    assert m.channels == ("T1", "FLAIR") and m.labels == {0: "background", 1: "edema", 2: "core"}
    assert m.case_ids == ["tiny_000", "tiny_002"]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda ds: (ds / "dataset.json").unlink(), "dataset.json not found"),
        (lambda ds: (ds / "dataset.json").write_text("{"), "not valid JSON"),
        (
            lambda ds: (ds / "imagesTr" / "tiny_002_0001.nii.gz").unlink(),
            "missing channel 1 (FLAIR) of case tiny_002",
        ),
        (
            lambda ds: write_nifti(ds / "imagesTr" / "odd.nii.gz", _image(0)),
            "odd.nii.gz: no channel suffix: expected CASE_XXXX.nii.gz",
        ),
        (
            lambda ds: write_nifti(ds / "imagesTr" / "tiny_000_0002.nii.gz", _image(0)),
            "channel index 0002, but dataset.json lists 2 channel(s)",
        ),
        (
            lambda ds: _edit_spec(ds, labels={"background": 0, "whole": [1, 2]}),
            "labels.whole: a region ([1, 2]); region-based labels are not supported",
        ),
        (lambda ds: _edit_spec(ds, file_ending=".mha"), "file_ending '.mha' is not NIfTI"),
        (lambda ds: _edit_spec(ds, labels={"tumour": 1}), "labels must include background = 0"),
    ],
)
def test_import_nnunet_errors_name_the_problem(tmp_path: Path, change, fragment: str) -> None:  # type: ignore[no-untyped-def]
    ds = make_nnunet(tmp_path)
    change(ds)
    with pytest.raises(ManifestError, match=re.escape(fragment)):
        import_nnunet(ds)
    (error,) = scan_nnunet(ds).errors  # exactly one line for the one defect
    assert fragment in str(error)


def _edit_spec(ds: Path, **updates: object) -> None:
    spec = json.loads((ds / "dataset.json").read_text())
    spec.update(updates)
    (ds / "dataset.json").write_text(json.dumps(spec))


def test_import_nnunet_explicit_dataset_listing(tmp_path: Path) -> None:
    ds = make_nnunet(tmp_path, test=0)
    listing = {
        "a": {
            "images": [
                "./imagesTr/tiny_000_0000.nii.gz",
                str(ds / "imagesTr/tiny_000_0001.nii.gz"),
            ],
            "label": "labelsTr/tiny_000.nii.gz",
        }
    }
    _edit_spec(ds, dataset=listing, numTraining=1)
    (case,) = import_nnunet(ds).cases
    assert case.case_id == "a" and case.split == "train"
    assert case.images == {
        "T1": Path("imagesTr/tiny_000_0000.nii.gz"),
        "FLAIR": Path("imagesTr/tiny_000_0001.nii.gz"),
    }


# -------------------------------------------------------------------------------------------------
# nnssl


def test_import_nnssl_with_env_var_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnssl_raw", str(tmp_path / "raw"))
    json_path = make_nnssl(tmp_path, "$nnssl_raw")
    m = import_nnssl(json_path)
    assert m.name == "Dataset900_Tiny" and not m.is_labelled
    assert m.root_spec == "${nnssl_raw}" and m.root == tmp_path / "raw"
    assert m.channels == ("image",)  # modalities are mixed in one channel
    assert len(m.cases) == 5
    assert {c.subject for c in m.cases} == {"ds001__sub-01", "ds001__sub-02", "ds002__sub-01"}
    case = m.case("ds001__sub-01__ses-1__sub-01_ses-1_T2w")
    assert case.session == "ses-1"
    assert case.images["image"] == Path("ds001/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz")
    assert check_manifests(m, progress=False) == []

    # Written to a file, the root stays the variable, so the manifest moves with $nnssl_raw.
    out = tmp_path / "manifests" / "pre.yaml"
    assert main_ok(["manifest", "import", "nnssl", str(json_path), "-o", str(out)])
    assert yaml.safe_load(out.read_text())["root"] == "${nnssl_raw}"
    assert load_manifest(out).root == tmp_path / "raw"


def test_import_nnssl_absolute_paths_and_unset_var(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Absolute paths outside the JSON's folder (the root when no $VAR is used) need the flag.
    json_path = make_nnssl(tmp_path, str(tmp_path / "raw"))
    report = scan_nnssl(json_path)
    assert report.manifest is None and len(report.errors) == 5
    assert all("leads outside the dataset root" in str(p) for p in report.errors)
    m = import_nnssl(json_path, allow_outside_root=True)
    assert m.root == tmp_path / "raw" and m.root_spec == str(tmp_path / "raw")
    assert check_manifests(m, progress=False) == []

    monkeypatch.delenv("NNSSL_TEST_UNSET", raising=False)
    other = tmp_path / "other"
    other.mkdir()
    path = make_nnssl(other, "$NNSSL_TEST_UNSET")
    with pytest.raises(ManifestError, match=r"use \$NNSSL_TEST_UNSET, which is not set"):
        import_nnssl(path)


def test_import_nnssl_bad_structure_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "pretrain_data.json"
    path.write_text(
        json.dumps({"collection_name": "x", "datasets": {"d": {"subjects": {"s": {}}}}})
    )
    with pytest.raises(ManifestError, match=r"datasets\.d\.subjects\.s: missing key 'sessions'"):
        import_nnssl(path)
    assert [str(p) for p in scan_nnssl(path).problems] == [
        f"{path}: datasets.d.subjects.s: missing key 'sessions'"
    ]


# -------------------------------------------------------------------------------------------------
# folder


def test_import_folder_bids_and_plain_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_nifti(data / "sub-01" / "ses-a" / "anat" / "sub-01_ses-a_T1w.nii.gz", _image(0))
    write_nifti(data / "sub-01" / "ses-b" / "anat" / "sub-01_ses-b_T1w.nii.gz", _image(1))
    write_nifti(data / "extra" / "scan7.nii", _image(2))
    (data / "extra" / "notes.txt").write_text("not an image")
    with pytest.raises(ManifestError, match=r"notes\.txt: unknown extension"):
        import_folder(str(data / "**" / "*"), name="mixed")  # named, not silently left out
    m = import_folder(str(data / "**" / "*"), name="mixed", keep_going=True)
    assert m.root == data and m.channels == ("image",) and m.labels is None
    by_id = {c.case_id: c for c in m.cases}
    assert set(by_id) == {"sub-01_ses-a_T1w", "sub-01_ses-b_T1w", "scan7"}
    assert by_id["sub-01_ses-b_T1w"].subject == "sub-01"
    assert by_id["sub-01_ses-b_T1w"].session == "ses-b"
    assert by_id["scan7"].subject == "scan7" and by_id["scan7"].images["image"] == Path(
        "extra/scan7.nii"
    )
    assert check_manifests(m, progress=False) == []


def test_import_folder_disambiguates_equal_names(tmp_path: Path) -> None:
    write_nifti(tmp_path / "s1" / "t1.nii.gz", _image(0))
    write_nifti(tmp_path / "s2" / "t1.nii.gz", _image(1))
    m = import_folder(str(tmp_path / "*" / "t1.nii.gz"), name="x")
    assert [c.case_id for c in m.cases] == ["s1_t1", "s2_t1"]
    with pytest.raises(ManifestError, match="matches no .nii/.nii.gz file"):
        import_folder(str(tmp_path / "*.nrrd"), name="x")


def test_rebase_root(tmp_path: Path) -> None:
    write_nifti(tmp_path / "data" / "a.nii.gz", _image(0))
    m = import_folder(str(tmp_path / "data" / "*.nii.gz"), name="x")
    assert rebase_root(m, tmp_path / "manifests" / "x.yaml").root_spec == "../data"
    assert rebase_root(m, tmp_path / "data" / "x.yaml").root_spec == "."
    far = rebase_root(m, "/proc/x.yaml")  # shares only "/" with the data: stays absolute
    assert far.root_spec == str(tmp_path / "data")


# -------------------------------------------------------------------------------------------------
# CLI


def main_ok(argv: list[str]) -> bool:
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code in (0, None)
    return True


def test_cli_import_writes_relative_root_and_checks_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = make_nnunet(tmp_path)
    out = tmp_path / "manifests" / "tiny.yaml"
    assert main_ok(["manifest", "import", "nnunet", str(ds), "--out", str(out)])
    assert yaml.safe_load(out.read_text())["root"] == "../Dataset042_Tiny"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "import", "nnunet", str(ds), "--out", str(out)])
    assert exc.value.code == 2
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert main_ok(["manifest", "import", "nnunet", str(ds), "--out", str(out), "--force"])

    capsys.readouterr()
    assert main_ok(["manifest", "check", str(out)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["1 manifest, 5 cases, 0 problems (5 subjects, 1 labelled set)"]


def test_cli_import_prints_yaml_with_absolute_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_nifti(tmp_path / "a" / "sub-01_T1w.nii.gz", _image(0))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main_ok(["manifest", "import", "folder", "a/*.nii.gz", "--name", "ixi"])
    finally:
        os.chdir(cwd)
    data = yaml.safe_load(capsys.readouterr().out)
    assert data["name"] == "ixi" and data["root"] == str((tmp_path / "a").resolve())
    assert data["cases"] == [
        {"id": "sub-01_T1w", "subject": "sub-01", "images": {"image": "sub-01_T1w.nii.gz"}}
    ]
