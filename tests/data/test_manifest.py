"""Manifest schema: YAML round trip, root expansion, and schema errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from toolkit.data.manifest import (
    Case,
    Manifest,
    expand_root,
    load_manifest,
    manifest_from_dict,
    manifest_to_dict,
    save_manifest,
    symlinks_leaving_root,
)
from toolkit.errors import ManifestError


def _doc(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "demo",
        "root": "data",
        "channels": ["T1", "T2"],
        "labels": {0: "background", 1: "lesion"},
        "cases": [
            {
                "id": "sub-01_ses-1",
                "subject": "sub-01",
                "session": "ses-1",
                "images": {"T1": "sub-01/t1.nii.gz", "T2": "sub-01/t2.nii.gz"},
                "label": "sub-01/seg.nii.gz",
                "split": "train",
                "fold": 0,
            },
            {
                "id": "sub-02",
                "images": {"T1": "b1.nii.gz", "T2": "/abs/b2.nii.gz"},
                "split": "test",
            },
        ],
    }
    doc.update(top)
    return doc


def _write(tmp_path: Path, doc: Any, name: str = "m.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_load_resolves_paths_against_the_manifest_folder(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, _doc()))
    assert m.root == tmp_path / "data" and m.path == tmp_path / "m.yaml"
    assert m.channels == ("T1", "T2") and m.is_labelled
    a, b = m.cases
    assert (a.subject, a.session, a.split, a.fold) == ("sub-01", "ses-1", "train", 0)
    assert b.subject == "sub-02"  # defaults to the case id
    assert m.image_paths(a) == [
        tmp_path / "data/sub-01/t1.nii.gz",
        tmp_path / "data/sub-01/t2.nii.gz",
    ]
    assert m.image_paths(b)[1] == Path("/abs/b2.nii.gz")  # absolute paths ignore the root
    assert m.label_path(a) == tmp_path / "data/sub-01/seg.nii.gz" and m.label_path(b) is None
    assert m.split("test").case_ids == ["sub-02"]
    assert m.subset(["sub-01_ses-1"]).case_ids == ["sub-01_ses-1"]


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, _doc(description="a demo")))
    out = save_manifest(m, tmp_path / "out" / "copy.yaml")
    assert yaml.safe_load(out.read_text()) == manifest_to_dict(m)
    again = manifest_from_dict(yaml.safe_load(out.read_text()), tmp_path / "m.yaml")
    assert again == m
    assert not list(out.parent.glob("*.tmp"))  # written via a temp file that is gone


def test_single_channel_images_may_be_a_string(tmp_path: Path) -> None:
    doc = {"name": "pre", "cases": [{"id": "a", "images": "a.nii.gz"}]}
    m = load_manifest(_write(tmp_path, doc))
    assert m.channels == ("image",) and not m.is_labelled
    assert m.cases[0].images == {"image": Path("a.nii.gz")}
    assert m.root == tmp_path


@pytest.mark.parametrize(
    ("spec", "env", "expected"),
    [
        ("${MAE3D_TEST_DATA:-fallback}", {}, "BASE/fallback"),
        ("${MAE3D_TEST_DATA:-fallback}", {"MAE3D_TEST_DATA": "/srv/data"}, "/srv/data"),
        ("$MAE3D_TEST_DATA/sub", {"MAE3D_TEST_DATA": "rel"}, "BASE/rel/sub"),
        ("${MAE3D_TEST_DATA}", {"MAE3D_TEST_DATA": "/x"}, "/x"),
        ("/abs/path", {}, "/abs/path"),
        (".", {}, "BASE"),
    ],
)
def test_root_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, env: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("MAE3D_TEST_DATA", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert expand_root(spec, tmp_path) == Path(expected.replace("BASE", str(tmp_path)))
    m = load_manifest(_write(tmp_path, _doc(root=spec)))
    assert m.root == Path(expected.replace("BASE", str(tmp_path))) and m.root_spec == spec


def test_unset_root_variable_without_default_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAE3D_TEST_DATA", raising=False)
    with pytest.raises(ManifestError, match="environment variable MAE3D_TEST_DATA is not set"):
        load_manifest(_write(tmp_path, _doc(root="${MAE3D_TEST_DATA}")))


def _case_edit(**changes: Any) -> dict[str, Any]:
    doc = _doc()
    doc["cases"][0].update(changes)
    return doc


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (_doc(colour="red"), "unknown top-level field(s) colour"),
        ({k: v for k, v in _doc().items() if k != "name"}, "missing required field 'name'"),
        (_doc(cases=[]), "'cases' must be a non-empty list"),
        (_case_edit(shoe_size=3), "cases[0]: unknown field(s) shoe_size"),
        (_case_edit(id=None), "cases[0]: missing required field 'id'"),
        (_case_edit(images=None), "case sub-01_ses-1: 'images' must map channel names to files"),
        (_case_edit(images={"T1": "a.nii.gz"}), "case sub-01_ses-1: no image for channel(s) T2"),
        (
            _case_edit(images={"T1": "a", "T2": "b", "t3": "c"}),
            "case sub-01_ses-1: image channel(s) t3 not in channels",
        ),
        (_doc(channels=["T1", "T1"]), "channels must be unique"),
        (_case_edit(split="training"), "split must be one of train, val, test, got 'training'"),
        (_case_edit(fold="one"), "fold must be an integer, got 'one'"),
        (_doc(labels={1: "lesion"}), "labels must include 0 (background)"),
        (_doc(labels={"one": "lesion"}), "label values must be integers"),
        (_doc(channels="T1"), "channels must be a list of modality names"),
        (["not", "a", "mapping"], "expected a mapping at top level"),
    ],
)
def test_schema_errors_name_the_file(tmp_path: Path, doc: Any, fragment: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ManifestError) as exc:
        load_manifest(path)
    assert str(exc.value).startswith(f"{path.resolve()}: ")
    assert fragment in str(exc.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ManifestError, match=r"bad.yaml: not valid YAML"):
        load_manifest(bad)


def test_case_lookup() -> None:
    m = Manifest(
        name="x",
        root=Path("."),
        channels=("T1",),
        cases=(Case(case_id="a", subject="s1", images={"T1": Path("a.nii.gz")}),),
    )
    assert m.case("a").subject == "s1"
    with pytest.raises(KeyError, match="no case 'b'"):
        m.case("b")


def test_relative_paths_climbing_out_of_the_root_are_refused(tmp_path: Path) -> None:
    doc = _doc()
    doc["cases"][0]["label"] = "sub-01/../../labels/seg.nii.gz"  # lands in tmp_path/labels
    doc["cases"][1]["images"]["T1"] = "../b1.nii.gz"
    path = _write(tmp_path, doc)
    with pytest.raises(ManifestError) as exc:
        load_manifest(path)
    assert str(exc.value) == (
        f"{path}: case sub-01_ses-1: label sub-01/../../labels/seg.nii.gz leads outside the root "
        f"{tmp_path / 'data'} (and 1 more); add 'allow_outside_root: true' to the manifest if "
        f"that is on purpose"
    )
    # The caller may allow it, or the manifest itself; the field survives a round trip.
    assert load_manifest(path, allow_outside_root=True).allow_outside_root is False
    allowed = load_manifest(_write(tmp_path, {**doc, "allow_outside_root": True}, "a.yaml"))
    assert allowed.allow_outside_root
    assert allowed.label_path(allowed.cases[0]) == tmp_path / "data/sub-01/../../labels/seg.nii.gz"
    again = load_manifest(save_manifest(allowed, tmp_path / "again.yaml"))
    assert again.allow_outside_root and again.cases == allowed.cases
    with pytest.raises(ManifestError, match="allow_outside_root must be true or false"):
        load_manifest(_write(tmp_path, {**doc, "allow_outside_root": "yes"}, "b.yaml"))


def test_absolute_and_inside_paths_load_as_written(tmp_path: Path) -> None:
    doc = _doc()  # sub-02's T2 is /abs/b2.nii.gz: written on purpose, taken as is
    doc["cases"][0]["images"]["T1"] = "sub-01/x/../t1.nii.gz"  # `..` that stays inside is fine
    m = load_manifest(_write(tmp_path, doc))
    assert not m.allow_outside_root
    assert m.image_paths(m.cases[1])[1] == Path("/abs/b2.nii.gz")
    assert "allow_outside_root" not in manifest_to_dict(m)


def test_symlinks_leaving_root_are_listed(tmp_path: Path) -> None:
    target = tmp_path / "store" / "t1.nii.gz"
    target.parent.mkdir()
    target.write_bytes(b"x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.nii.gz").write_bytes(b"x")
    (tmp_path / "data" / "link.nii.gz").symlink_to(target)
    (tmp_path / "data" / "near.nii.gz").symlink_to(tmp_path / "data" / "in.nii.gz")
    cases = tuple(
        Case(case_id=n, subject=n, images={"image": Path(f"{n}.nii.gz")})
        for n in ("in", "link", "near", "missing")
    )
    m = Manifest(name="x", root=tmp_path / "data", channels=("image",), cases=cases)
    assert symlinks_leaving_root(m) == [("link", tmp_path / "data" / "link.nii.gz", target)]
