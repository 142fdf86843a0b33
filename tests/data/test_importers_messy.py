"""A messy nnU-Net raw folder with every layout defect at once: all named in one pass.

:func:`make_messy_nnunet` builds the folder (tiny NIfTIs); it is public so end-to-end tests can
import the same folder (``from tests.data.test_importers_messy import make_messy_nnunet``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.data.conftest import write_nifti
from toolkit.cli import main
from toolkit.data.importers import ImportProblemsError, ImportReport, import_nnunet, scan_nnunet
from toolkit.data.manifest import load_manifest

SHAPE = (4, 4, 4)


@dataclass(frozen=True)
class MessyNnunet:
    """A messy nnU-Net raw folder and what an importer must say about it.

    Attributes:
        path: the dataset folder (holds dataset.json).
        good_cases: the case ids that are fine (imported with ``--keep-going``).
        problem_cases: the case ids (or stray file stems) with a problem.
        defects: defect name -> (path the line names, relative to ``path``; message fragment).
            Every problem line matches exactly one entry, and every entry one line.
        warnings: the same for the warning lines.
    """

    path: Path
    good_cases: tuple[str, ...]
    problem_cases: tuple[str, ...]
    defects: dict[str, tuple[str, str]]
    warnings: dict[str, tuple[str, str]]


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[1:3, 1:3, 1:3] = 1
    lab[2, 2, 2] = 3
    return lab


def make_messy_nnunet(root: Path) -> MessyNnunet:
    """Write ``root/Dataset077_Messy``: 2 channels (T1, FLAIR), 5 fine cases, 8 problem cases.

    Fine: ``good_000..002`` (imagesTr + labelsTr), ``ts_000`` and ``ts_001`` (imagesTs; ts_001
    has no label in labelsTs, a warning). Problems: a file without channel suffix, a channel index
    the dataset does not have, a missing channel, an unknown extension, a ``.nii`` file in a
    ``.nii.gz`` dataset, a label without image, an image without label, a directory where a file
    belongs; dataset.json: ``numTraining`` 5 for 8 training cases found, labels 0, 1, 3 (not
    consecutive). A hidden ``.DS_Store`` is a warning.
    """
    ds = root / "Dataset077_Messy"
    ds.mkdir(parents=True)
    spec = {
        "channel_names": {"0": "T1", "1": "FLAIR"},
        "labels": {"background": 0, "lesion": 1, "core": 3},
        "numTraining": 5,
        "file_ending": ".nii.gz",
    }
    (ds / "dataset.json").write_text(json.dumps(spec))
    tr, lt, ts, lts = ds / "imagesTr", ds / "labelsTr", ds / "imagesTs", ds / "labelsTs"
    seed = iter(range(1000))

    def case(folder: Path, case_id: str, channels: tuple[int, ...] = (0, 1)) -> None:
        for ch in channels:
            write_nifti(folder / f"{case_id}_{ch:04d}.nii.gz", _image(next(seed)))

    def label(folder: Path, case_id: str) -> None:
        write_nifti(folder / f"{case_id}.nii.gz", _label())

    for i in range(3):
        case(tr, f"good_{i:03d}")
        label(lt, f"good_{i:03d}")
    case(ts, "ts_000")
    label(lts, "ts_000")
    case(ts, "ts_001")

    write_nifti(tr / "nosuffix.nii.gz", _image(next(seed)))
    label(lt, "nosuffix")
    case(tr, "badchan", (0, 1, 2))
    label(lt, "badchan")
    case(tr, "missch", (0,))
    label(lt, "missch")
    (tr / "readme.txt").write_text("notes the data provider left behind")
    case(tr, "wrongend", (0,))
    write_nifti(tr / "wrongend_0001.nii", _image(next(seed)))
    label(lt, "wrongend")
    label(lt, "orphan")
    case(tr, "nolabel")
    (tr / "dircase_0000.nii.gz").mkdir()
    case(tr, "dircase", (1,))
    label(lt, "dircase")
    (tr / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    defects = {
        "no channel suffix": ("imagesTr/nosuffix.nii.gz", "no channel suffix"),
        "unexpected channel index": (
            "imagesTr/badchan_0002.nii.gz",
            "channel index 0002, but dataset.json lists 2 channel(s)",
        ),
        "missing channel": ("imagesTr/missch_0001.nii.gz", "missing channel 1 (FLAIR) of case"),
        "unknown extension": ("imagesTr/readme.txt", "unknown extension"),
        "wrong NIfTI ending": (
            "imagesTr/wrongend_0001.nii",
            "ending '.nii', but dataset.json says file_ending '.nii.gz'",
        ),
        "wrong NIfTI ending -> its channel is missing": (
            "imagesTr/wrongend_0001.nii.gz",
            "missing channel 1 (FLAIR) of case wrongend",
        ),
        "label without image": ("labelsTr/orphan.nii.gz", "label without image"),
        "image without label": ("labelsTr/nolabel.nii.gz", "image without label"),
        "directory where a file belongs": (
            "imagesTr/dircase_0000.nii.gz",
            "a directory where a .nii.gz file belongs",
        ),
        "directory -> its channel is missing": (
            "imagesTr/dircase_0000.nii.gz",
            "missing channel 0 (T1) of case dircase",
        ),
        "numTraining mismatch": ("dataset.json", "numTraining is 5, but 8 training cases"),
        "labels not consecutive": ("dataset.json", "label values [0, 1, 3] are not consecutive"),
    }
    warnings = {
        "hidden file": ("imagesTr/.DS_Store", "hidden file, ignored"),
        "test case without label": ("labelsTs/ts_001.nii.gz", "no label for test case ts_001"),
    }
    return MessyNnunet(
        path=ds,
        good_cases=("good_000", "good_001", "good_002", "ts_000", "ts_001"),
        problem_cases=(
            "nosuffix",
            "badchan",
            "missch",
            "readme",
            "wrongend",
            "orphan",
            "nolabel",
            "dircase",
        ),  # fmt: skip
        defects=defects,
        warnings=warnings,
    )


def assert_lines_match(lines: list[str], expected: dict[str, tuple[str, str]], root: Path) -> None:
    """Each expected (path, fragment) matches exactly one line, and each line one expectation."""
    unmatched = list(lines)
    for name, (rel, fragment) in expected.items():
        prefix = f"{(root / rel).resolve()}: " if rel else ""
        hits = [line for line in lines if line.startswith(prefix) and fragment in line]
        assert len(hits) == 1, f"{name}: {len(hits)} lines match {prefix}...{fragment}: {lines}"
        unmatched.remove(hits[0])
    assert unmatched == [], f"lines nobody expected: {unmatched}"


def run_cli(argv: list[str]) -> int:
    """Exit code of ``mae3d ARGV``."""
    try:
        main(argv)
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    return 0


def _assert_report(report: ImportReport, messy: MessyNnunet) -> None:
    assert_lines_match([str(p) for p in report.errors], messy.defects, messy.path)
    warnings = [str(p).removeprefix("warning: ") for p in report.warnings]
    assert_lines_match(warnings, messy.warnings, messy.path)
    assert sorted(report.problem_cases) == sorted(messy.problem_cases)
    assert report.manifest is not None
    assert report.manifest.case_ids == list(messy.good_cases)


def test_messy_nnunet_every_defect_named_in_one_pass(tmp_path: Path) -> None:
    messy = make_messy_nnunet(tmp_path)
    _assert_report(scan_nnunet(messy.path), messy)
    with pytest.raises(ImportProblemsError) as exc:
        import_nnunet(messy.path)  # the strict form raises with the same report
    _assert_report(exc.value.report, messy)
    assert str(exc.value).count("\n") == len(exc.value.report.problems)  # summary + one per line
    m = import_nnunet(messy.path, keep_going=True)
    assert m.case_ids == list(messy.good_cases) and m.labels == {
        0: "background",
        1: "lesion",
        3: "core",
    }
    assert m.case("ts_001").label is None and m.case("ts_000").split == "test"


def test_cli_messy_nnunet_lists_all_writes_nothing_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy = make_messy_nnunet(tmp_path)
    out = tmp_path / "manifests" / "messy.yaml"
    assert run_cli(["manifest", "import", "nnunet", str(messy.path), "--out", str(out)]) == 1
    assert not out.exists() and not out.parent.exists()
    captured = capsys.readouterr()
    assert captured.out == ""
    *lines, summary = captured.err.splitlines()
    errors = [line for line in lines if not line.startswith("warning: ")]
    assert_lines_match(errors, messy.defects, messy.path)
    assert len(lines) - len(errors) == len(messy.warnings)
    assert summary == (
        f"{messy.path}: imported 0 cases, skipped 5 fine cases, 8 problem cases "
        f"({len(messy.defects)} problems, {len(messy.warnings)} warnings); nothing written: "
        f"fix the problems, or pass --keep-going to write the fine cases only"
    )


def test_cli_messy_nnunet_keep_going_writes_the_fine_cases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    messy = make_messy_nnunet(tmp_path)
    out = tmp_path / "manifests" / "messy.yaml"
    argv = ["manifest", "import", "nnunet", str(messy.path), "--out", str(out), "--keep-going"]
    assert run_cli(argv) == 0
    *lines, summary = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if not line.startswith("warning: ")]
    assert_lines_match(errors, messy.defects, messy.path)  # still listed
    assert summary.startswith(
        f"{messy.path}: imported 5 cases, skipped 0 fine cases, 8 problem cases "
        f"({len(messy.defects)} problems, {len(messy.warnings)} warnings); wrote {out}; "
        f"--keep-going: the problem cases are left out"
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["messy.yaml"]  # no temp file left
    m = load_manifest(out)
    assert m.case_ids == list(messy.good_cases) and m.root.resolve() == messy.path.resolve()
