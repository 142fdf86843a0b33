"""Checks over a whole manifest (or several): ids, splits, leakage, declared labels, file names.

These run after every file has been read once (:mod:`toolkit.data.validate` does the reading) and
see only names, splits and the label values each label file holds. Each returns
:class:`~toolkit.data.validate.Problem`-shaped tuples ``(case, file, message, severity)``; the
caller wraps them, so this module does not import the validator.

Errors (exit 1 in ``mae3d manifest check``): duplicate ids, ids equal up to letter case, ids that
cannot be file names, file paths equal up to letter case, a subject in two splits, test subjects in
a pretraining set, declared label values that are not 0..N. Warnings (exit 0): declared classes
that occur in no label map.

Example:
    >>> check_declared_labels({0: "background", 1: "a", 3: "b"})
    [(None, None, 'declared label values [0, 1, 3] are not consecutive from 0 (nnU-Net needs 0..N): missing 2', 'error')]
"""  # noqa: E501

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from toolkit.data.manifest import Manifest

#: (case id or None, file or None, message, "error" | "warning")
Finding = tuple[str | None, Path | None, str, str]

ERROR = "error"
WARNING = "warning"


def check_ids(m: Manifest) -> list[Finding]:
    """Duplicate ids, ids equal up to letter case, and ids that cannot be used as file names.

    Case ids name cache folders and prediction files (``OUT/<id>.nii.gz``): two ids that differ
    only in letter case collide on case-insensitive file systems (macOS, Windows), and an id with a
    path separator or ``..`` would write outside its folder.
    """
    found: list[Finding] = [
        (cid, None, f"case id appears {n} times", ERROR)
        for cid, n in Counter(m.case_ids).items()
        if n > 1
    ]
    by_fold: dict[str, list[str]] = defaultdict(list)
    for cid in dict.fromkeys(m.case_ids):
        by_fold[cid.casefold()].append(cid)
    for ids in by_fold.values():
        if len(ids) > 1:
            found.append(
                (
                    None,
                    None,
                    f"case ids {', '.join(ids)} differ only in letter case "
                    "(they collide on case-insensitive file systems)",
                    ERROR,
                )
            )
    for cid in dict.fromkeys(m.case_ids):
        if "/" in cid or "\\" in cid or cid in (".", "..") or cid != cid.strip():
            found.append(
                (
                    cid,
                    None,
                    f"case id {cid!r} cannot be a file name (path separator, '.'/'..' or "
                    "surrounding spaces)",
                    ERROR,
                )
            )
    return found


def check_file_names(m: Manifest) -> list[Finding]:
    """Different files of one manifest whose paths are equal up to letter case.

    They are two files here, one file (or an error) on a case-insensitive file system.
    """
    paths: dict[Path, None] = {}
    for case in m.cases:
        for path in m.image_paths(case):
            paths[path] = None
        label = m.label_path(case)
        if label is not None:
            paths[label] = None
    by_fold: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        by_fold[str(path).casefold()].append(path)
    return [
        (
            None,
            group[1],
            f"file name differs from {group[0].name} only in letter case "
            "(one file on case-insensitive file systems)",
            ERROR,
        )
        for group in by_fold.values()
        if len(group) > 1
    ]


def check_splits(m: Manifest) -> list[Finding]:
    """A subject whose cases are in more than one split of one manifest (leakage)."""
    splits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for c in m.cases:
        if c.split is not None:
            splits[c.subject][c.split].append(c.case_id)
    found: list[Finding] = []
    for subject, by_split in splits.items():
        if len(by_split) > 1:
            where = "; ".join(f"{s}: {', '.join(ids)}" for s, ids in sorted(by_split.items()))
            found.append(
                (
                    None,
                    None,
                    f"subject {subject} is in more than one split (leakage): {where}",
                    ERROR,
                )
            )
    return found


def check_leakage(
    manifests: Sequence[Manifest], pretrain_sets: Sequence[Manifest]
) -> list[tuple[Manifest, Finding]]:
    """Test subjects of labelled manifests that are also in a pretraining manifest."""
    pretrain_subjects = [(p, {c.subject for c in p.cases}) for p in pretrain_sets]
    found: list[tuple[Manifest, Finding]] = []
    for m in manifests:
        if not m.is_labelled:
            continue
        for case in m.cases:
            if case.split != "test":
                continue
            for p, subjects in pretrain_subjects:
                if case.subject in subjects:
                    message = (
                        f"test subject {case.subject} is also in pretraining manifest "
                        f"{p.name} (leakage)"
                    )
                    found.append((m, (case.case_id, None, message, ERROR)))
    return found


def check_declared_labels(labels: Mapping[int, str] | None) -> list[Finding]:
    """Declared label values must be 0, 1, ..., N (nnU-Net trains one output per value)."""
    if not labels:
        return []
    values = sorted(labels)
    expected = list(range(len(values)))
    if values == expected:
        return []
    missing = sorted(set(range(max(values[-1], 0) + 1)) - set(values))
    detail = f"missing {', '.join(map(str, missing))}" if missing else "negative values"
    if missing and values[0] < 0:
        detail += " and negative values"
    return [
        (
            None,
            None,
            f"declared label values {values} are not consecutive from 0 (nnU-Net needs 0..N): "
            f"{detail}",
            ERROR,
        )
    ]


def check_unused_labels(
    labels: Mapping[int, str] | None, label_maps: Iterable[tuple[int, ...] | None]
) -> list[Finding]:
    """A warning for declared classes (other than background) that occur in no label map.

    Args:
        labels: the manifest's declared labels.
        label_maps: the values found in each label file; None for a file that could not be read.
    """
    if not labels:
        return []
    maps = list(label_maps)
    read = [set(v) for v in maps if v is not None]
    if not read:
        return []
    present = set().union(*read)
    unused = [v for v in sorted(labels) if v != 0 and v not in present]
    if not unused:
        return []
    names = ", ".join(f"{v} ({labels[v]})" for v in unused)
    unread = len(maps) - len(read)
    scope = f"{len(read)} readable label map(s)" + (f" ({unread} unreadable)" if unread else "")
    return [(None, None, f"declared class(es) {names} occur in none of the {scope}", WARNING)]
