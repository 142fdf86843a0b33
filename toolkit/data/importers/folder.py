"""Plain unlabelled NIfTI files matching a glob (``**`` recurses).

:func:`scan_folder` lists every match that cannot be used (unknown extension, a directory named
like an image, hidden files) instead of leaving it out silently; :func:`import_folder` is the strict
form that returns the manifest or raises.
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from toolkit.data.importers.common import (
    Collector,
    ImportReport,
    nifti_stem,
    strip_any,
    warn_outside_link,
)
from toolkit.data.manifest import Case, Manifest

# BIDS entities in a file name, e.g. sub-01_ses-2_T1w.nii.gz.
_BIDS_SUBJECT = re.compile(r"(?:^|_)(sub-[A-Za-z0-9]+)")
_BIDS_SESSION = re.compile(r"(?:^|_)(ses-[A-Za-z0-9]+)")


def scan_folder(pattern: str, name: str) -> ImportReport:
    """Every problem of the files matching ``pattern``, and the manifest of the NIfTI ones.

    Case ids are the file names without ``.nii``/``.nii.gz`` (or the relative path with ``/``
    replaced by ``_`` when two files share a name). The subject is the BIDS ``sub-XXX`` entity
    of the file name when it has one, else the case id; the session is its ``ses-XXX`` entity.
    The root is the deepest folder holding every NIfTI match, so no path leaves it; a symlink
    whose target lies outside it is kept with a warning.

    Problems: an empty name, no NIfTI match, matched files with another extension (narrow the
    pattern to leave them out), directories named like a NIfTI file. Warnings: hidden files
    (ignored), symlinks out of the root. Other directories the glob matches are not data and are
    passed over.

    Args:
        pattern: glob pattern, e.g. ``"/data/ixi/**/*T1*.nii.gz"``.
        name: dataset name.

    Returns:
        The report; its manifest (unlabelled, one channel ``image``) holds the NIfTI files.

    Example:
        >>> report = scan_folder("/data/ixi/**/*.nii.gz", name="ixi")  # doctest: +SKIP
    """
    col = Collector()
    if not name.strip():
        col.error("import folder", "--name must not be empty")
    files: list[Path] = []
    for p in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)):
        path = Path(os.path.abspath(p))  # not resolve(): a symlink stays a link, and is warned
        stem = nifti_stem(path.name)
        if path.name.startswith("."):
            col.warn(path, "hidden file, ignored")
        elif path.is_dir():
            if stem is not None:
                col.error(path, "a directory where a NIfTI file belongs", stem)
        elif stem is None:
            col.error(
                path,
                "unknown extension (not .nii.gz or .nii); narrow the pattern to leave it out",
                path.name.split(".")[0],
            )
        else:
            files.append(path)
    if not files:
        col.error(f"import folder: pattern {pattern!r}", "matches no .nii/.nii.gz file")
        return col.report(pattern, None)
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    rel = [f.relative_to(root) for f in files]
    stems = [strip_any(f.name) for f in files]
    unique = len(set(stems)) == len(stems)
    cases = []
    for path, stem in zip(rel, stems, strict=True):
        case_id = stem if unique else strip_any(path.as_posix()).replace("/", "_")
        warn_outside_link(col, root / path, root, case_id)
        subject = _BIDS_SUBJECT.search(stem)
        session = _BIDS_SESSION.search(stem)
        cases.append(
            Case(
                case_id=case_id,
                subject=subject.group(1) if subject else case_id,
                session=session.group(1) if session else "",
                images={"image": path},
            )
        )
    if not name.strip():
        return col.report(pattern, None)
    manifest = Manifest(
        name=name, root=root, channels=("image",), cases=tuple(cases), root_spec=str(root)
    )
    return col.report(pattern, manifest)


def import_folder(pattern: str, name: str, *, keep_going: bool = False) -> Manifest:
    """Manifest of plain, unlabelled NIfTI files matching a glob; see :func:`scan_folder`.

    Args:
        pattern: glob pattern, e.g. ``"/data/ixi/**/*T1*.nii.gz"``.
        name: dataset name.
        keep_going: return the NIfTI files even when other matches are problems.

    Returns:
        An unlabelled (pretraining) manifest with one channel, ``image``, rooted at the deepest
        folder holding every match.

    Raises:
        ImportProblemsError: (a ManifestError) listing every problem; ``.report`` holds them.
    """
    return scan_folder(pattern, name).manifest_or_raise(keep_going=keep_going)
