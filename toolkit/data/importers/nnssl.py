"""nnssl ``pretrain_data.json``: collection -> datasets -> subjects -> sessions -> images.

:func:`scan_nnssl` walks the whole JSON once and returns an
:class:`~toolkit.data.importers.common.ImportReport` with one line per entry that cannot be used;
:func:`import_nnssl` is the strict form that returns the manifest or raises.

The dataset root of a pretrain_data.json is the variable its paths start with (nnssl writes
``$nnssl_raw/...``) when they all use one, else the folder holding the JSON. Image paths that
lead outside it (``..``, absolute paths elsewhere) are problems unless ``allow_outside_root``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.data.importers.common import (
    OUTSIDE_HINT,
    Collector,
    ImportReport,
    as_mapping,
    is_within,
    nifti_stem,
    read_json,
    strip_any,
    warn_outside_link,
)
from toolkit.data.manifest import Case, Manifest, PathLike


@dataclass(frozen=True)
class _Image:
    case_id: str
    subject: str
    session: str
    modality: str
    raw: str  # image_path as written
    where: str  # JSON location, for problem lines


def scan_nnssl(json_path: PathLike, *, allow_outside_root: bool = False) -> ImportReport:
    """Every problem of an nnssl ``pretrain_data.json``, and the manifest of its fine images.

    Each image becomes one single-channel case with id ``DATASET__SUBJECT__SESSION__IMAGE`` and
    subject ``DATASET__SUBJECT`` (subject ids are only unique within an nnssl dataset). The channel
    is named after the modality when all images share one, else ``image`` (pretraining mixes
    modalities in one channel). If all image paths start with the same ``$VAR`` the manifest root
    is ``${VAR}``; relative paths are relative to the JSON file. Associated anonymisation/anatomy
    masks are not imported.

    Problems (one line each, naming the JSON location or file): missing keys, entries of the
    wrong type, non-NIfTI images, an unset ``$VAR``, paths outside the root, repeated case ids,
    missing files and directories where a file belongs. Warnings: symlinks out of the root.

    Args:
        json_path: the ``pretrain_data.json`` file.
        allow_outside_root: accept image paths outside the root; the manifest root then becomes
            the deepest folder holding every image.

    Returns:
        The report; its manifest (unlabelled, named after ``collection_name``) holds the fine
        images, or is None when none is.
    """
    json_path = Path(json_path).resolve()
    col = Collector()
    data = read_json(json_path, col, what="nnssl pretrain_data.json")
    if data is None:
        return col.report(json_path, None)
    where = str(json_path)
    if not isinstance(data, Mapping):
        col.error(where, f"expected a JSON object, got {type(data).__name__}")
        return col.report(json_path, None)
    collection = data
    if "collection_name" not in collection:
        col.error(where, "missing key 'collection_name'")
    name = str(collection.get("collection_name") or json_path.parent.name)
    if "datasets" not in collection:
        col.error(where, "missing key 'datasets'")
        return col.report(json_path, None)
    images = _walk(collection["datasets"], f"{where}: datasets", col)
    if not images:
        if col.ok_so_far():
            col.error(where, "the collection lists no images")
        return col.report(json_path, None)

    root, root_spec, full = _root(images, json_path, col, allow_outside_root)
    modalities = {im.modality for im in images}
    channel = modalities.pop() if len(modalities) == 1 else "image"
    cases = []
    seen: dict[str, str] = {}
    for i, im in enumerate(images):
        path = full.get(i)
        if im.case_id in seen:
            col.error(im.where, f"case id {im.case_id} repeats {seen[im.case_id]}", im.case_id)
            continue
        seen[im.case_id] = im.where
        if path is None or col.is_bad(im.case_id):
            continue
        if path.is_dir():
            col.error(path, "a directory where a file belongs", im.case_id)
        elif not path.exists():
            col.error(path, f"image not found ({im.where.split(': ')[-1]})", im.case_id)
        else:
            warn_outside_link(col, path, root, im.case_id)
            cases.append(
                Case(
                    case_id=im.case_id,
                    subject=im.subject,
                    session=im.session,
                    images={channel: path.relative_to(root)},
                )
            )
    cases = [c for c in cases if not col.is_bad(c.case_id)]
    if not cases:
        return col.report(json_path, None)
    manifest = Manifest(
        name=name,
        root=root,
        channels=(channel,),
        cases=tuple(cases),
        root_spec=root_spec,
        extra={"description": f"imported from {json_path.name} (nnssl)"},
    )
    return col.report(json_path, manifest)


def import_nnssl(
    json_path: PathLike, *, allow_outside_root: bool = False, keep_going: bool = False
) -> Manifest:
    """Manifest of an nnssl ``pretrain_data.json``; see :func:`scan_nnssl` for the rules.

    Args:
        json_path: the ``pretrain_data.json`` file.
        allow_outside_root: accept image paths outside the root.
        keep_going: return the fine images even when others have problems.

    Returns:
        An unlabelled (pretraining) manifest named after ``collection_name``.

    Raises:
        ImportProblemsError: (a ManifestError) listing every problem; ``.report`` holds them.
    """
    report = scan_nnssl(json_path, allow_outside_root=allow_outside_root)
    return report.manifest_or_raise(keep_going=keep_going)


def _walk(datasets: Any, where: str, col: Collector) -> list[_Image]:
    """Every image entry, with problem lines for the entries that cannot be read."""
    images: list[_Image] = []
    for ds_key, ds in as_mapping(datasets, where, col).items():
        ds_where = f"{where}.{ds_key}"
        if not isinstance(ds, Mapping):
            col.error(ds_where, f"expected a JSON object, got {type(ds).__name__}")
            continue
        ds_id = str(ds.get("dataset_index", ds_key))
        for sub_key, subject in _children(ds, "subjects", ds_where, col):
            sub_where = f"{ds_where}.subjects.{sub_key}"
            sub_id = str(subject.get("subject_id", sub_key))
            for ses_key, session in _children(subject, "sessions", sub_where, col):
                ses_where = f"{sub_where}.sessions.{ses_key}"
                ses_id = str(session.get("session_id", ses_key))
                entries = session.get("images")
                if not isinstance(entries, list):
                    message = "missing key 'images'" if entries is None else "expected a list"
                    col.error(f"{ses_where}.images", message)
                    continue
                for i, image in enumerate(entries):
                    img_where = f"{ses_where}.images[{i}]"
                    if not isinstance(image, Mapping) or not image.get("image_path"):
                        col.error(img_where, "expected an object with an 'image_path'")
                        continue
                    raw = str(image["image_path"])
                    stem = nifti_stem(Path(raw).name)
                    image_name = strip_any(str(image.get("name") or stem or Path(raw).name))
                    case_id = f"{ds_id}__{sub_id}__{ses_id}__{image_name}"
                    if stem is None:
                        col.error(
                            img_where, f"{raw}: unknown extension (not .nii.gz or .nii)", case_id
                        )
                        continue
                    modality = str(image.get("modality") or "image")
                    images.append(
                        _Image(case_id, f"{ds_id}__{sub_id}", ses_id, modality, raw, img_where)
                    )
    return images


def _children(
    parent: Mapping[str, Any], key: str, where: str, col: Collector
) -> list[tuple[str, Any]]:
    if key not in parent:
        col.error(where, f"missing key '{key}'")
        return []
    items = as_mapping(parent[key], f"{where}.{key}", col)
    out = []
    for k, v in items.items():
        if isinstance(v, Mapping):
            out.append((str(k), v))
        else:
            col.error(f"{where}.{key}.{k}", f"expected a JSON object, got {type(v).__name__}")
    return out


def _root(
    images: list[_Image], json_path: Path, col: Collector, allow_outside_root: bool
) -> tuple[Path, str, dict[int, Path]]:
    """Root folder, root as written, and each usable image's absolute normalised path by index."""
    heads = {im.raw.split("/", 1)[0] for im in images}
    one_var = len(heads) == 1 and all(im.raw.startswith("$") for im in images)
    unset: dict[str, None] = {}
    full: dict[int, Path] = {}
    for i, im in enumerate(images):
        raw = im.raw
        if raw.startswith("$"):
            head, _, tail = raw.partition("/")
            var = head[1:].strip("{}")
            value = os.environ.get(var)
            if not value:
                if var not in unset:
                    col.error(
                        json_path,
                        f"image paths use ${var}, which is not set; set it to the folder "
                        f"nnssl resolves it to",
                    )
                unset[var] = None
                col.bad_cases[im.case_id] = None
                continue
            path = Path(value) / tail
        else:
            path = Path(raw) if Path(raw).is_absolute() else json_path.parent / raw
        full[i] = Path(os.path.normpath(path))

    if one_var and not unset:
        var = next(iter(heads))[1:].strip("{}")
        root, root_spec = Path(os.path.normpath(os.environ[var])), f"${{{var}}}"
    else:
        root, root_spec = json_path.parent, str(json_path.parent)
    outside = {i for i, p in full.items() if not is_within(p, root)}
    if outside and allow_outside_root:
        root = Path(os.path.commonpath([str(p.parent) for p in full.values()]))
        return root, str(root), full
    for i, im in enumerate(images):
        if i in outside:
            col.error(
                im.where,
                f"{im.raw!r} leads outside the dataset root {root}; {OUTSIDE_HINT}",
                im.case_id,
            )
    return root, root_spec, {i: p for i, p in full.items() if i not in outside}
