"""nnU-Net v2 raw folders (``DatasetXXX_Name``): dataset.json plus imagesTr/labelsTr/imagesTs.

:func:`scan_nnunet` walks the whole folder once and returns an
:class:`~toolkit.data.importers.common.ImportReport`: one problem line per file that does not fit
nnU-Net's layout and per dataset.json field that is wrong, and the manifest of the cases that are
fine. :func:`import_nnunet` is the strict form that returns the manifest or raises.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from toolkit.data.importers.common import (
    NIFTI_ENDINGS,
    OUTSIDE_HINT,
    Collector,
    ImportReport,
    is_within,
    read_json,
    strip_any,
    warn_outside_link,
)
from toolkit.data.manifest import Case, Manifest, PathLike

# nnU-Net names channel files CASE_XXXX<ending>, XXXX = zero-padded channel index.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def scan_nnunet(dataset_dir: PathLike, *, allow_outside_root: bool = False) -> ImportReport:
    """Every problem of an nnU-Net v2 raw folder, and the manifest of its fine cases.

    Reads ``dataset.json`` (``channel_names``, ``labels``, ``numTraining``, ``file_ending``; the
    nnU-Net v1 keys ``modality`` and ``{"0": "background"}``-style labels are accepted too).
    Cases come from ``imagesTr`` (split ``train``, label ``labelsTr/CASE<ending>``, required)
    and, if present, ``imagesTs`` (split ``test``, label from ``labelsTs`` when that folder
    exists). Channel files are named ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... A
    ``dataset`` entry in dataset.json (explicit file lists) replaces the ``imagesTr`` scan.
    Subjects are the case ids (nnU-Net has no subject field).

    Problems (one line each, naming the file or field): missing or bad dataset.json keys,
    ``numTraining`` not matching the training cases found, labels not consecutive from
    background = 0, region labels, files without a channel suffix, a channel index the dataset
    does not have, a missing channel, unknown extensions, a label without image, a training image
    without label, a directory where a file belongs, and listed paths that lead outside the
    folder. Warnings: hidden files (ignored), symlinks pointing outside the folder (kept), test
    images without a label in an existing ``labelsTs``.

    Args:
        dataset_dir: the folder holding ``dataset.json``.
        allow_outside_root: accept listed paths outside the folder (written as absolute paths).

    Returns:
        The report; its manifest (named after the folder, rooted at it) holds the fine cases,
        or is None when dataset.json leaves nothing usable (channels, labels, file ending).

    Example:
        >>> report = scan_nnunet("Dataset004_Hippocampus")  # doctest: +SKIP
        >>> print(*report.problems, sep="\\n"); report.manifest  # doctest: +SKIP
    """
    root = Path(dataset_dir).resolve()
    col = Collector()
    spec_path = root / "dataset.json"
    if not root.is_dir():
        col.error(root, "not a folder (expected an nnU-Net raw dataset folder)")
        return col.report(root, None)
    spec = read_json(spec_path, col, what="nnU-Net dataset.json")
    if spec is None:
        return col.report(root, None)
    if not isinstance(spec, Mapping):
        col.error(spec_path, f"expected a JSON object, got {type(spec).__name__}")
        return col.report(root, None)
    channels = _channels(spec, spec_path, col)
    labels = _labels(spec, spec_path, col)
    ending = _ending(spec, spec_path, col)
    if channels is None or ending is None:
        return col.report(root, None)

    if "dataset" in spec:
        train, num_found = _listed_cases(spec["dataset"], channels, root, spec_path, col,
                                         allow_outside_root=allow_outside_root)  # fmt: skip
    else:
        train, num_found = _folder_cases(root, "imagesTr", "labelsTr", "train", channels, ending,
                                         col, labels_required=True)  # fmt: skip
    _check_num_training(spec, spec_path, num_found, col)
    test: list[Case] = []
    if (root / "imagesTs").exists():
        test, _ = _folder_cases(root, "imagesTs", "labelsTs", "test", channels, ending, col,
                                labels_required=False)  # fmt: skip
    cases = tuple(c for c in [*train, *test] if not col.is_bad(c.case_id))
    if labels is None or not cases:
        return col.report(root, None)
    extra = {"description": str(spec["description"])} if spec.get("description") else {}
    manifest = Manifest(
        name=root.name,
        root=root,
        channels=channels,
        cases=cases,
        labels=labels,
        root_spec=str(root),
        extra=extra,
    )
    return col.report(root, manifest)


def import_nnunet(
    dataset_dir: PathLike, *, allow_outside_root: bool = False, keep_going: bool = False
) -> Manifest:
    """Manifest of an nnU-Net v2 raw folder; see :func:`scan_nnunet` for the rules.

    Args:
        dataset_dir: the folder holding ``dataset.json``.
        allow_outside_root: accept listed paths outside the folder.
        keep_going: return the fine cases even when others have problems.

    Returns:
        A labelled manifest named after the folder, rooted at the folder.

    Raises:
        ImportProblemsError: (a ManifestError) listing every problem; ``.report`` holds them.
    """
    report = scan_nnunet(dataset_dir, allow_outside_root=allow_outside_root)
    return report.manifest_or_raise(keep_going=keep_going)


def group_channel_files(files: list[Path]) -> dict[str, dict[int, Path]] | None:
    """Group nnU-Net channel files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz``, ...) by case.

    The rule of nnU-Net's ``imagesTr`` / ``imagesTs`` folders: every file name, without its
    ``.nii``/``.nii.gz`` ending, ends in ``_XXXX`` (zero-padded channel index).

    Args:
        files: NIfTI files (names only are looked at).

    Returns:
        ``{case id: {channel index: file}}`` in sorted case order, or None when some file does not
        follow the naming rule (then the files are not an nnU-Net image folder).

    Example:
        >>> group_channel_files([Path("a_0001.nii.gz"), Path("a_0000.nii.gz")])
        {'a': {0: PosixPath('a_0000.nii.gz'), 1: PosixPath('a_0001.nii.gz')}}
    """
    by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(files, key=lambda p: p.name):
        match = _NNUNET_CHANNEL.match(strip_any(f.name))
        if match is None:
            return None
        by_case[match["case"]][int(match["channel"])] = f
    return {case: dict(sorted(ch.items())) for case, ch in sorted(by_case.items())}


# --------------------------------------------------------------------------------------------------
# dataset.json


def _channels(spec: Mapping[str, Any], where: Path, col: Collector) -> tuple[str, ...] | None:
    key = "channel_names" if "channel_names" in spec or "modality" not in spec else "modality"
    raw = spec.get(key)
    if raw is None:
        col.error(where, "missing key 'channel_names' (channel index -> name)")
        return None
    if not isinstance(raw, Mapping) or not raw:
        col.error(where, f"'{key}' must map channel indices to names, got {raw!r}")
        return None
    try:
        indexed = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        col.error(where, f"{key} keys must be integers, got {list(raw)}")
        return None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        col.error(where, f"{key} keys must be 0..{len(indexed) - 1}, got {[i for i, _ in indexed]}")
        return None
    names = [n for _, n in indexed]
    # nnU-Net allows repeated names ("MRI", "MRI"); manifest channels must be unique.
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return tuple(names)


def _labels(spec: Mapping[str, Any], where: Path, col: Collector) -> dict[int, str] | None:
    raw = spec.get("labels")
    if raw is None:
        col.error(where, "missing key 'labels' (label name -> integer value)")
        return None
    if not isinstance(raw, Mapping) or not raw:
        col.error(where, f"'labels' must map label names to integer values, got {raw!r}")
        return None
    labels: dict[int, str] = {}
    usable = True
    for k, v in raw.items():
        if isinstance(v, list | tuple):
            col.error(where, f"labels.{k}: a region ({v}); region-based labels are not supported")
            usable = False
        elif isinstance(v, int) and not isinstance(v, bool):  # v2: {"background": 0}
            labels[v] = str(k)
        elif isinstance(k, str) and k.isdigit():  # v1: {"0": "background"}
            labels[int(k)] = str(v)
        else:
            col.error(where, f"labels.{k}: value must be an integer, got {v!r}")
            usable = False
    if 0 not in labels:
        col.error(where, "labels must include background = 0")
        usable = False
    values = sorted(labels)
    if values and values != list(range(len(values))) and 0 in labels:
        col.error(
            where,
            f"label values {values} are not consecutive from background = 0 "
            f"(nnU-Net needs 0..{len(values) - 1})",
        )
    return dict(sorted(labels.items())) if usable else None


def _ending(spec: Mapping[str, Any], where: Path, col: Collector) -> str | None:
    if "file_ending" not in spec:
        if "channel_names" in spec:  # nnU-Net v2 requires it; v1 (modality) was always .nii.gz
            col.error(where, "missing key 'file_ending' (e.g. \".nii.gz\")")
            return None
        return ".nii.gz"
    ending = spec["file_ending"]
    if ending not in NIFTI_ENDINGS:
        col.error(where, f"file_ending {ending!r} is not NIfTI (.nii.gz or .nii)")
        return None
    return str(ending)


def _check_num_training(spec: Mapping[str, Any], where: Path, found: int, col: Collector) -> None:
    if "numTraining" not in spec:
        col.error(where, f"missing key 'numTraining' ({found} training cases found)")
        return
    n = spec["numTraining"]
    if isinstance(n, bool) or not isinstance(n, int):
        col.error(where, f"numTraining must be an integer, got {n!r}")
    elif n != found:
        col.error(where, f"numTraining is {n}, but {found} training cases were found")


# --------------------------------------------------------------------------------------------------
# imagesTr / labelsTr / imagesTs / labelsTs


def _folder_cases(
    root: Path,
    images_dir: str,
    labels_dir: str,
    split: str,
    channels: tuple[str, ...],
    ending: str,
    col: Collector,
    *,
    labels_required: bool,
) -> tuple[list[Case], int]:
    """Cases of one images folder (problem cases included, marked in ``col``), and their count."""
    folder = root / images_dir
    if not folder.is_dir():
        col.error(folder, "not a folder" if folder.exists() else f"no {images_dir} folder")
        return [], 0
    by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    seen: dict[str, None] = {}  # every case id a file name points to, problem or not
    named: dict[str, None] = {}  # case ids of files with a channel suffix
    for f in sorted(folder.iterdir()):
        stem = _layout_file(f, ending, col, channel_suffix=True)
        if stem is None:
            continue
        match = _NNUNET_CHANNEL.match(stem)
        if match is None:
            seen[stem] = None
            col.error(
                f,
                f"no channel suffix: expected CASE_XXXX{ending} (XXXX = channel index "
                f"0000..{len(channels) - 1:04d})",
                stem,
            )
            continue
        case_id, index = match["case"], int(match["channel"])
        seen[case_id] = named[case_id] = None
        if index >= len(channels):
            col.error(
                f,
                f"channel index {index:04d}, but dataset.json lists {len(channels)} channel(s) "
                f"(0000..{len(channels) - 1:04d})",
                case_id,
            )
            continue
        warn_outside_link(col, f, root, case_id)
        by_case[case_id][index] = Path(images_dir) / f.name

    label_files = _label_files(root, labels_dir, ending, seen, col, required=labels_required)
    cases = []
    for case_id in sorted(named):  # a file without channel suffix has its one line already
        files = by_case.get(case_id, {})
        for i, name in enumerate(channels):
            if i not in files:
                col.error(
                    folder / f"{case_id}_{i:04d}{ending}",
                    f"missing channel {i} ({name}) of case {case_id}",
                    case_id,
                )
        label = label_files.get(case_id)
        if label is None and labels_required:
            col.error(
                root / labels_dir / f"{case_id}{ending}",
                f"image without label: case {case_id} has no label file",
                case_id,
            )
        elif label is None and (root / labels_dir).is_dir():
            col.warn(
                root / labels_dir / f"{case_id}{ending}",
                f"no label for test case {case_id} (kept without label)",
                case_id,
            )
        if len(files) == len(channels):
            cases.append(
                Case(
                    case_id=case_id,
                    subject=case_id,
                    images={ch: files[i] for i, ch in enumerate(channels)},
                    label=label,
                    split=split,
                )
            )
    return cases, len(named)


def _label_files(
    root: Path,
    labels_dir: str,
    ending: str,
    image_cases: Mapping[str, None],
    col: Collector,
    *,
    required: bool,
) -> dict[str, Path]:
    folder = root / labels_dir
    if not folder.is_dir():
        if folder.exists():
            col.error(folder, "not a folder")
        elif required:
            col.error(folder, f"no {labels_dir} folder: training cases need label files")
        return {}
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        stem = _layout_file(f, ending, col, channel_suffix=False)
        if stem is None:
            continue
        if stem not in image_cases:
            col.error(f, f"label without image: no {stem}_XXXX{ending} in the images folder", stem)
            continue
        warn_outside_link(col, f, root, stem)
        found[stem] = Path(labels_dir) / f.name
    return found


def _layout_file(f: Path, ending: str, col: Collector, *, channel_suffix: bool) -> str | None:
    """The name of ``f`` without ``ending``, or None after a line saying why it is not used.

    A file that cannot be used makes its case (the name up to the extension and, in an images
    folder, the channel suffix) a problem case.
    """
    if f.name.startswith("."):
        col.warn(f, "hidden file, ignored")
        return None
    nifti = strip_any(f.name) != f.name
    guess = strip_any(f.name) if nifti else f.name.split(".")[0]
    match = _NNUNET_CHANNEL.match(guess) if channel_suffix else None
    case = match["case"] if match else guess
    if f.is_dir():
        col.error(f, f"a directory where a {ending} file belongs", case)
        return None
    if not f.name.endswith(ending) or len(f.name) == len(ending):
        message = (
            f"ending {f.name[len(guess) :]!r}, but dataset.json says file_ending {ending!r}"
            if nifti
            else f"unknown extension (expected {ending!r} files only)"
        )
        col.error(f, message, case)
        return None
    return f.name[: -len(ending)]


def _listed_cases(
    listed: Any,
    channels: tuple[str, ...],
    root: Path,
    where: Path,
    col: Collector,
    *,
    allow_outside_root: bool,
) -> tuple[list[Case], int]:
    if not isinstance(listed, Mapping):
        col.error(where, "'dataset' must map case ids to image/label files")
        return [], 0
    cases = []
    for case_id, entry in listed.items():
        case_id = str(case_id)
        at = f"{where}: dataset.{case_id}"
        images = entry.get("images") if isinstance(entry, Mapping) else None
        if not isinstance(images, list) or len(images) != len(channels):
            col.error(at, f"'images' must list {len(channels)} file(s)", case_id)
            continue
        paths = [
            _listed_path(p, root, f"{at}.images[{i}]", case_id, col, allow_outside_root)
            for i, p in enumerate(images)
        ]
        raw_label = entry.get("label")
        label = None
        if raw_label:
            label = _listed_path(raw_label, root, f"{at}.label", case_id, col, allow_outside_root)
        else:
            col.error(at, "image without label: no 'label' entry", case_id)
        if col.is_bad(case_id) or any(p is None for p in paths):
            continue
        cases.append(
            Case(
                case_id=case_id,
                subject=case_id,
                images={ch: p for ch, p in zip(channels, paths, strict=True) if p is not None},
                label=label,
                split="train",
            )
        )
    return cases, len(listed)


def _listed_path(
    raw: Any, root: Path, at: str, case_id: str, col: Collector, allow_outside_root: bool
) -> Path | None:
    """A listed file relative to ``root`` (absolute when outside and allowed), else None."""
    path = Path(os.path.expandvars(str(raw)))
    full = Path(os.path.normpath(path if path.is_absolute() else root / path))
    if not full.name.endswith(NIFTI_ENDINGS):
        col.error(at, f"{raw!r}: unknown extension (not a NIfTI file)", case_id)
        return None
    inside = is_within(full, root)
    if not inside and not allow_outside_root:
        col.error(at, f"{raw!r} leads outside the dataset root {root}; {OUTSIDE_HINT}", case_id)
        return None
    if full.is_dir():
        col.error(full, "a directory where a file belongs", case_id)
        return None
    if not full.exists():
        col.error(full, f"file listed in dataset.json ({at.split(': ')[-1]}) not found", case_id)
        return None
    if inside:
        warn_outside_link(col, full, root, case_id)
        return full.relative_to(root)
    return full
