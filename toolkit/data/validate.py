"""Manifest validation: every problem of every manifest, found in one pass.

:func:`check_manifests` loads the manifests, opens every file they list once (in a thread pool, so
memory stays bounded by the number of workers times one volume) and reports, as :class:`Problem`
records, everything that would break or bias training:

- schema errors (one problem per manifest that cannot be loaded) and a missing data root;
- header first (:func:`toolkit.data.header.inspect_header`, before any voxel is read): missing,
  unreadable or non-NIfTI files, not 3D, empty dimensions, complex/RGB datatypes, headers claiming
  more voxels than the budget or more bytes than the file can hold; zero, negative or NaN voxel
  spacing (pixdim or affine); qform and sform that disagree (saying which one is used);
- voxels second: truncated or corrupt data, NaN/Inf voxels, all-zero or constant images;
- image channels of one case on different grids; a label grid differing from the image grid; a
  label file that is one of the case's images;
- label values outside the declared label set, non-integer label values, label maps holding only
  background; label files in a manifest that declares no labels; unlabelled training cases;
  declared label values that are not 0..N;
- dataset level (:mod:`toolkit.data.dataset_checks`): duplicate case ids, ids equal up to letter
  case or unusable as file names, file paths equal up to letter case; a subject in more than one
  split of one manifest; subject leakage: a subject in the test split of a labelled (fine-tuning)
  manifest that is also in a pretraining manifest. Unlabelled manifests are pretraining sets;
  ``pretrain=`` adds more.

With ``warnings=True`` it also returns warnings (:attr:`Problem.severity` ``"warning"``): no
orientation in a header, voxel spacing more anisotropic than 5:1, declared classes that occur in
no label map. Any unexpected exception while checking one file becomes that file's line
``could not be read: <Type>: <message>``; the report always goes on.

Example:
    >>> problems = check_manifests(["data_manifests/demo.yaml"])  # doctest: +SKIP
    >>> for p in problems:  # doctest: +SKIP
    ...     print(p)
    demo: case sub-003: file data/sub-003/t1.nii.gz: contains 12 NaN voxel(s)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from toolkit.data import dataset_checks
from toolkit.data.dataset_checks import ERROR, WARNING, Finding
from toolkit.data.header import (
    anisotropy_warning,
    default_max_voxels,
    fmt,
    inspect_header,
    quiet_nibabel,
    short_error,
)
from toolkit.data.io import PathLike, read_voxels
from toolkit.data.manifest import Case, Manifest, load_manifest
from toolkit.errors import DataError, ManifestError

#: Largest absolute difference (mm) between two affines' entries that still counts as one grid.
AFFINE_ATOL_MM = 1e-3
# Below this many files a progress bar is noise.
_PROGRESS_MIN_FILES = 32


@dataclass(frozen=True)
class Problem:
    """One thing wrong with (or worth a look in) a manifest, a case or a file.

    ``str(problem)`` is one line: ``"manifest: case X: file F: what is wrong"``; the case and file
    parts are left out when the problem is about the whole manifest or the whole case. Warnings
    start with ``"warning: "``.
    """

    manifest: str
    case: str | None
    file: str | None
    message: str
    severity: str = ERROR

    @property
    def is_warning(self) -> bool:
        return self.severity == WARNING

    def __str__(self) -> str:
        parts = ["warning: " + self.manifest if self.is_warning else self.manifest]
        if self.case is not None:
            parts.append(f"case {self.case}")
        if self.file is not None:
            parts.append(f"file {self.file}")
        parts.append(self.message)
        return ": ".join(parts)


@dataclass(frozen=True)
class _FileReport:
    """What one pass over one file found: problems, warnings, grid, label values (labels only)."""

    problems: tuple[str, ...]
    shape: tuple[int, ...] | None = None
    affine: np.ndarray | None = None
    label_values: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = ()


def check_manifests(
    paths_or_manifests: Iterable[PathLike | Manifest] | PathLike | Manifest,
    *,
    pretrain: Iterable[PathLike | Manifest] | PathLike | Manifest | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    affine_atol_mm: float = AFFINE_ATOL_MM,
    max_voxels: int | None = None,
    warnings: bool = False,
) -> list[Problem]:
    """Check manifests and every file they list; return all problems (empty list = clean).

    Every file is read once, header first. Nothing is raised for bad data: each problem becomes a
    :class:`Problem`, in manifest order, then case order, then channel order, then the
    manifest-wide problems.

    Args:
        paths_or_manifests: manifest files (YAML) or loaded :class:`Manifest` objects.
        pretrain: more manifests used for pretraining (checked too). Unlabelled manifests in
            ``paths_or_manifests`` are pretraining sets already; use this to declare a labelled
            manifest that is also used (without its labels) for pretraining.
        num_workers: threads reading files (default: ``min(4, CPU count)``).
        progress: show a tqdm bar when there are many files.
        affine_atol_mm: tolerance of the grid comparisons (affine entries, mm).
        max_voxels: voxel budget per file (default ``$MAE3D_MAX_VOXELS`` or 2**31); a header
            claiming more is a problem and nothing is allocated for it.
        warnings: also return warnings (``severity == "warning"``), in the same order as the
            errors.

    Returns:
        The problems found, each printable as one line.

    Raises:
        DataError: ``$MAE3D_MAX_VOXELS`` is set but not a positive integer.

    Example:
        >>> check_manifests([])
        []
    """
    given = _as_list(paths_or_manifests)
    extra = _as_list(pretrain) if pretrain is not None else []
    problems: list[Problem] = []
    loaded: list[Manifest] = []
    pretrain_sets: list[Manifest] = []
    seen: dict[object, Manifest | None] = {}
    for item, is_pretrain in [(x, False) for x in given] + [(x, True) for x in extra]:
        key = _identity(item)
        if key not in seen:
            seen[key] = new = _load(item, problems)
            if new is not None:
                loaded.append(new)
        m = seen[key]
        if m is not None and (is_pretrain or not m.is_labelled):
            if all(p is not m for p in pretrain_sets):
                pretrain_sets.append(m)

    # A wrong root gives one problem, not one "file not found" per file.
    readable = [m for m in loaded if m.root.is_dir()]
    # Resolved once: a bad $MAE3D_MAX_VOXELS is one error, not one problem per file.
    budget = default_max_voxels() if max_voxels is None else max_voxels
    reports = _inspect_all(readable, num_workers=num_workers, progress=progress, max_voxels=budget)
    for m in loaded:
        if any(r is m for r in readable):
            for case in m.cases:
                problems.extend(_check_case(m, case, reports, affine_atol_mm))
            label_maps = [
                reports[(label, True)].label_values
                for case in m.cases
                if (label := m.label_path(case)) is not None
            ]
            found = dataset_checks.check_unused_labels(m.labels, label_maps)
            problems.extend(_wrap(m, found))
        else:
            message = f"data root {m.root} is not a folder (root: {m.root_spec})"
            problems.append(Problem(m.name, None, None, message))
        for check in (
            dataset_checks.check_ids,
            dataset_checks.check_file_names,
            dataset_checks.check_splits,
        ):
            problems.extend(_wrap(m, check(m)))
        problems.extend(_wrap(m, dataset_checks.check_declared_labels(m.labels)))
    for m, finding in dataset_checks.check_leakage(loaded, pretrain_sets):
        problems.extend(_wrap(m, [finding]))
    return problems if warnings else [p for p in problems if not p.is_warning]


def _wrap(m: Manifest, findings: Iterable[Finding]) -> list[Problem]:
    return [
        Problem(m.name, case, None if path is None else _display(path), message, severity)
        for case, path, message, severity in findings
    ]


def describe_manifests(
    manifests: Sequence[Manifest], num_problems: int = 0, num_warnings: int = 0
) -> str:
    """One line, e.g. ``"3 manifests, 14 cases, 0 problems (12 subjects, 2 labelled sets)"``.

    Warnings are counted after the problems when there are any (``"0 problems, 2 warnings"``).

    Example:
        >>> describe_manifests([])
        '0 manifests, 0 cases, 0 problems (0 subjects, 0 labelled sets)'
    """
    num_cases = sum(len(m.cases) for m in manifests)
    subjects = {c.subject for m in manifests for c in m.cases}
    labelled = sum(m.is_labelled for m in manifests)
    return (
        f"{_plural(len(manifests), 'manifest')}, {_plural(num_cases, 'case')}, "
        f"{_plural(num_problems, 'problem')}"
        + (f", {_plural(num_warnings, 'warning')}" if num_warnings else "")
        + f" ({_plural(len(subjects), 'subject')}, {_plural(labelled, 'labelled set')})"
    )


# --------------------------------------------------------------------------------------------------
# Loading


def _as_list(
    items: Iterable[PathLike | Manifest] | PathLike | Manifest,
) -> list[PathLike | Manifest]:
    if isinstance(items, str | os.PathLike | Manifest):
        return [items]
    return list(items)


def _identity(item: PathLike | Manifest) -> object:
    if isinstance(item, Manifest):
        return id(item) if item.path is None else Path(item.path).resolve()
    return Path(item).resolve()


def _load(item: PathLike | Manifest, problems: list[Problem]) -> Manifest | None:
    if isinstance(item, Manifest):
        return item
    try:
        return load_manifest(item)
    except ManifestError as exc:
        message = str(exc)
        # The error names the file already; keep it once, as the problem's manifest part.
        for prefix in (f"{Path(item).resolve()}: ", f"{item}: "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
                break
        problems.append(Problem(_display(Path(item)), None, None, message))
        return None


# --------------------------------------------------------------------------------------------------
# Per-file inspection (runs in worker threads)


def _inspect_all(
    manifests: Sequence[Manifest],
    *,
    num_workers: int | None,
    progress: bool,
    max_voxels: int | None = None,
) -> dict[tuple[Path, bool], _FileReport]:
    jobs: dict[tuple[Path, bool], None] = {}
    for m in manifests:
        for case in m.cases:
            for path in m.image_paths(case):
                jobs[(path, False)] = None
            label = m.label_path(case)
            if label is not None:
                jobs[(label, True)] = None
    workers = num_workers or min(4, os.cpu_count() or 1)
    keys = list(jobs)
    bar = tqdm(
        total=len(keys),
        desc="checking files",
        unit="file",
        disable=not progress or len(keys) < _PROGRESS_MIN_FILES,
    )

    def inspect(key: tuple[Path, bool]) -> _FileReport:
        try:
            return _inspect_file(*key, max_voxels=max_voxels)
        except Exception as exc:  # one bad file never ends the report (MemoryError included)
            return _FileReport((f"could not be read: {short_error(exc)}",))

    reports: dict[tuple[Path, bool], _FileReport] = {}
    # nibabel logs header fixes (e.g. zero pixdim) to stderr; they are reported as problems here.
    with quiet_nibabel(), ThreadPoolExecutor(workers) as pool, bar:
        for key, report in zip(keys, pool.map(inspect, keys), strict=True):
            reports[key] = report
            bar.update()
    return reports


def _inspect_file(path: Path, is_label: bool, *, max_voxels: int | None = None) -> _FileReport:
    """Read ``path`` once: header checks first, then voxel checks (NaN/Inf; constant; labels)."""
    try:
        info = inspect_header(path, max_voxels=max_voxels)
    except DataError as exc:
        return _FileReport((_strip_path(str(exc), path),))
    problems = list(info.problems)
    warnings = list(info.warnings)
    affine = info.affine
    if not is_label:
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        anisotropy = anisotropy_warning(spacing)
        if anisotropy is not None:
            warnings.append(anisotropy)
    grid_affine = affine if np.all(np.isfinite(affine)) else None

    try:
        data, _ = read_voxels(info.image, path)
    except DataError as exc:
        problems.append(_strip_path(str(exc), path))
        return _FileReport(tuple(problems), info.shape, grid_affine, warnings=tuple(warnings))

    values: tuple[int, ...] | None = None
    finite: np.ndarray = data
    num_bad = 0
    if np.issubdtype(data.dtype, np.floating):
        num_nan = int(np.count_nonzero(np.isnan(data)))
        num_inf = int(np.count_nonzero(np.isinf(data)))
        if num_nan:
            problems.append(f"contains {num_nan} NaN voxel(s)")
        if num_inf:
            problems.append(f"contains {num_inf} Inf voxel(s)")
        num_bad = num_nan + num_inf
        if num_bad:
            finite = data[np.isfinite(data)]
    if is_label:
        unique = np.unique(finite)
        if np.issubdtype(unique.dtype, np.floating):
            fractional = unique[unique != np.round(unique)]
            if fractional.size:
                problems.append(
                    f"{fractional.size} non-integer label value(s), e.g. {fmt(fractional[:3])}"
                )
            unique = unique[unique == np.round(unique)]
        values = tuple(int(v) for v in unique)
    elif finite.size and num_bad < data.size:
        low, high = float(np.min(finite)), float(np.max(finite))
        if low == high == 0:
            problems.append("image is zero everywhere")
        elif low == high:
            problems.append(f"image is constant (every voxel is {low:g})")
    del data, finite
    return _FileReport(tuple(problems), info.shape, grid_affine, values, tuple(warnings))


# --------------------------------------------------------------------------------------------------
# Per-case, per-manifest and cross-manifest checks (main thread)


def _check_case(
    m: Manifest,
    case: Case,
    reports: dict[tuple[Path, bool], _FileReport],
    atol: float,
) -> list[Problem]:
    problems: list[Problem] = []

    def add(message: str, path: Path | None) -> None:
        problems.append(
            Problem(m.name, case.case_id, None if path is None else _display(path), message)
        )

    def warn(message: str, path: Path) -> None:
        problems.append(Problem(m.name, case.case_id, _display(path), message, WARNING))

    images = m.image_paths(case)
    for path in dict.fromkeys(images):  # two channels may share a file: report it once
        for message in reports[(path, False)].problems:
            add(message, path)
        for message in reports[(path, False)].warnings:
            warn(message, path)
    grids = [
        (ch, path, reports[(path, False)])
        for ch, path in zip(m.channels, images, strict=True)
        if reports[(path, False)].shape is not None
    ]
    ref = grids[0] if grids else None
    if ref is not None:
        for ch, path, report in grids[1:]:
            diff = _grid_difference(report, ref[2], atol)
            if diff is not None:
                add(f"channel {ch} is on a different grid than channel {ref[0]}: {diff}", path)

    label = m.label_path(case)
    if label is None:
        if m.is_labelled and case.split != "test":
            add(f"no label file, but only test cases may be unlabelled (split: {case.split})", None)
        return problems
    report = reports[(label, True)]
    for message in report.problems:
        add(message, label)
    for message in report.warnings:
        warn(message, label)
    if label in images:
        add("the label file is also an image of this case", label)
    if not m.is_labelled:
        add("has a label file, but the manifest declares no labels", label)
    if ref is not None and report.shape is not None:
        diff = _grid_difference(report, ref[2], atol)
        if diff is not None:
            add(f"label grid differs from the image grid ({ref[0]}): {diff}", label)
    if report.label_values is not None:
        if m.labels is not None:
            unknown = sorted(set(report.label_values) - set(m.labels))
            if unknown:
                add(
                    f"label value(s) {unknown} not in the declared labels {sorted(m.labels)}",
                    label,
                )
        if set(report.label_values) == {0}:
            add("label map is empty (only background)", label)
    return problems


def _grid_difference(a: _FileReport, b: _FileReport, atol: float) -> str | None:
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    if a.affine is None or b.affine is None:
        return None  # a non-finite affine is reported on its own
    deviation = float(np.max(np.abs(a.affine - b.affine)))
    if deviation > atol:
        return f"affines differ by up to {deviation:.3g} mm"
    return None


# --------------------------------------------------------------------------------------------------
# Formatting


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (shorter lines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
