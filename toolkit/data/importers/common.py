"""What every importer shares: the report it returns, its problem lines, and the path rules.

An importer never stops at the first problem. It walks the whole layout, collects one
:class:`ImportProblem` per file (or dataset.json field) that does not fit, and returns an
:class:`ImportReport` holding the manifest of the cases that are fine plus every problem, so the
command line can list them all at once and notebooks can inspect them.

Paths stay inside their root: a path that leads outside the dataset root (``..``, an absolute
path elsewhere) is a problem unless the caller allows it; a symlink inside the root that points
outside it is accepted with a warning (linking data in is a common habit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.data.manifest import Manifest, PathLike, is_within
from toolkit.errors import ManifestError

NIFTI_ENDINGS = (".nii.gz", ".nii")
OUTSIDE_HINT = "pass --allow-outside-root (allow_outside_root=True) if that is on purpose"


@dataclass(frozen=True)
class ImportProblem:
    """One thing an importer found wrong (or worth a warning), as one line.

    Attributes:
        where: the file, folder or ``dataset.json: key`` it is about.
        message: what is wrong, complete on its own.
        case: the case it makes unusable (None for dataset-level problems).
        warning: True for a warning (the case is still imported).
    """

    where: str
    message: str
    case: str | None = None
    warning: bool = False

    def __str__(self) -> str:
        return f"{'warning: ' if self.warning else ''}{self.where}: {self.message}"


@dataclass(frozen=True)
class ImportReport:
    """What an importer found: the manifest of the fine cases and every problem.

    Attributes:
        source: the dataset folder, JSON file or glob that was imported.
        manifest: the cases without problems (None when none is fine, or when a dataset-level
            problem, e.g. unusable ``channel_names`` or ``labels``, leaves no manifest to write).
        problems: every problem and warning, in the order they were found.
        problem_cases: ids of the cases (or stray files) left out because of a problem.

    Example:
        >>> r = ImportReport("x", None, (ImportProblem("x/a.txt", "unknown extension", "a"),),
        ...                  ("a",))
        >>> r.ok, len(r.errors)
        (False, 1)
        >>> r.summary()
        'x: imported 0 cases, skipped 0 fine cases, 1 problem case (1 problem, 0 warnings)'
    """

    source: str
    manifest: Manifest | None
    problems: tuple[ImportProblem, ...]
    problem_cases: tuple[str, ...]

    @property
    def errors(self) -> tuple[ImportProblem, ...]:
        return tuple(p for p in self.problems if not p.warning)

    @property
    def warnings(self) -> tuple[ImportProblem, ...]:
        return tuple(p for p in self.problems if p.warning)

    @property
    def ok(self) -> bool:
        """True when there is no problem (warnings are fine)."""
        return not self.errors

    @property
    def num_fine(self) -> int:
        return 0 if self.manifest is None else len(self.manifest.cases)

    def summary(self, *, written: bool = False) -> str:
        """One line: imported, skipped (fine but not written) and problem cases.

        The three counts are disjoint: ``imported`` cases are in the manifest that was written
        (``written=True``), ``skipped`` ones were fine but not written because of problems
        elsewhere (no ``--keep-going``), ``problem`` cases have at least one problem.
        """
        imported = self.num_fine if written else 0
        skipped = 0 if written else self.num_fine
        n_bad, n_err, n_warn = len(self.problem_cases), len(self.errors), len(self.warnings)
        return (
            f"{self.source}: imported {imported} case{'s' * (imported != 1)}, "
            f"skipped {skipped} fine case{'s' * (skipped != 1)}, "
            f"{n_bad} problem case{'s' * (n_bad != 1)} "
            f"({n_err} problem{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)})"
        )

    def manifest_or_raise(self, *, keep_going: bool = False) -> Manifest:
        """The manifest, or :class:`ImportProblemsError` listing every problem.

        Args:
            keep_going: return the manifest of the fine cases even when other cases have
                problems (it still raises when no case is fine).
        """
        if self.manifest is not None and (self.ok or keep_going):
            return self.manifest
        raise ImportProblemsError(self)


class ImportProblemsError(ManifestError):
    """An import found problems; ``report`` holds them all (``str()`` lists one per line)."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
        lines = [str(p) for p in report.problems]
        if report.manifest is None and report.ok:
            lines.append(f"{report.source}: no case to import")
        super().__init__("\n".join([report.summary(), *lines]))


class Collector:
    """Problems found so far, and which cases they make unusable."""

    def __init__(self) -> None:
        self.problems: list[ImportProblem] = []
        self.bad_cases: dict[str, None] = {}

    def error(self, where: PathLike, message: str, case: str | None = None) -> None:
        self.problems.append(ImportProblem(str(where), message, case))
        if case is not None:
            self.bad_cases[case] = None

    def warn(self, where: PathLike, message: str, case: str | None = None) -> None:
        self.problems.append(ImportProblem(str(where), message, case, warning=True))

    def ok_so_far(self) -> bool:
        return all(p.warning for p in self.problems)

    def is_bad(self, case: str) -> bool:
        return case in self.bad_cases

    def report(self, source: PathLike, manifest: Manifest | None) -> ImportReport:
        return ImportReport(str(source), manifest, tuple(self.problems), tuple(self.bad_cases))


# --------------------------------------------------------------------------------------------------
# Paths and roots


def link_leaves_root(path: PathLike, root: PathLike) -> Path | None:
    """Where ``path`` really is when a symlink on the way takes it outside ``root``, else None."""
    real = Path(os.path.realpath(path))
    return None if is_within(real, os.path.realpath(root)) else real


def warn_outside_link(col: Collector, path: Path, root: Path, case: str | None) -> None:
    """A warning line when ``path`` (inside ``root`` by name) is a symlink to outside it."""
    target = link_leaves_root(path, root)
    if target is not None:
        col.warn(path, f"symlink to {target}, outside the dataset root {root} (kept)", case)


def rebase_root(manifest: Manifest, manifest_path: PathLike) -> Manifest:
    """``manifest`` with its root written relative to the folder of ``manifest_path``.

    Roots given by an environment variable stay as they are, and so do roots that share nothing
    but the filesystem root with the manifest's folder (``../../../..`` helps nobody).

    Example:
        >>> m = Manifest(name="x", root=Path("/data/x"), channels=("image",), cases=())
        >>> rebase_root(m, "/data/manifests/x.yaml").root_spec
        '../x'
    """
    manifest_path = Path(manifest_path).absolute()
    if "$" in manifest.root_spec:
        return replace(manifest, path=manifest_path)
    folder = manifest_path.parent
    root = manifest.root.absolute()
    common = Path(os.path.commonpath([str(root), str(folder)]))
    spec = str(root) if common == Path(common.anchor) else os.path.relpath(root, folder)
    return replace(manifest, root_spec=Path(spec).as_posix(), path=manifest_path)


# --------------------------------------------------------------------------------------------------
# Small readers that report instead of raising


def read_json(path: Path, col: Collector, *, what: str) -> Any:
    """Parsed JSON, or None after one problem line (missing, a folder, not JSON)."""
    if path.is_dir():
        col.error(path, f"a directory where the {what} file belongs")
        return None
    if not path.is_file():
        col.error(path, f"{what} not found")
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        col.error(path, f"not valid JSON ({exc.__class__.__name__}: {exc})")
        return None


def as_mapping(
    value: Any, where: str, col: Collector, case: str | None = None
) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one after a problem line."""
    if isinstance(value, Mapping):
        return value
    col.error(where, f"expected a JSON object, got {type(value).__name__}", case)
    return {}


def nifti_stem(filename: str) -> str | None:
    """``filename`` without ``.nii.gz``/``.nii``, or None when it has neither."""
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending) and len(filename) > len(ending):
            return filename[: -len(ending)]
    return None


def strip_any(filename: str) -> str:
    """``filename`` without a NIfTI ending when it has one."""
    stem = nifti_stem(filename)
    return filename if stem is None else stem
