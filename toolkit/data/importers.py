"""Manifests from existing dataset layouts: nnU-Net raw folders, nnssl pretrain_data.json, globs.

Every importer returns a :class:`~toolkit.data.manifest.Manifest` whose ``root`` is an absolute
folder (or an environment variable, for nnssl paths written as ``$nnssl_raw/...``) and whose file
paths are relative to it. :func:`rebase_root` rewrites the root relative to the folder of the
manifest file it will be saved in, so a dataset and its manifest can move together.

Importers look at names only: they do not open the images. Run
:func:`toolkit.data.validate.check_manifests` (``mae3d manifest check``) on the result.

Example:
    >>> m = import_folder("/data/ixi/*.nii.gz", name="ixi")  # doctest: +SKIP
    >>> save_manifest(rebase_root(m, "data_manifests/ixi.yaml"), "data_manifests/ixi.yaml")
    ... # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from toolkit.data.manifest import Case, Manifest, PathLike
from toolkit.errors import ManifestError

NIFTI_ENDINGS = (".nii.gz", ".nii")
# nnU-Net names channel files CASE_XXXX<ending>, XXXX = zero-padded channel index.
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# BIDS entities in a file name, e.g. sub-01_ses-2_T1w.nii.gz.
_BIDS_SUBJECT = re.compile(r"(?:^|_)(sub-[A-Za-z0-9]+)")
_BIDS_SESSION = re.compile(r"(?:^|_)(ses-[A-Za-z0-9]+)")


def import_nnunet(dataset_dir: PathLike) -> Manifest:
    """Manifest of an nnU-Net v2 raw dataset folder (``DatasetXXX_Name``).

    Reads ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``; the nnU-Net v1 keys
    ``modality`` and ``{"0": "background"}``-style labels are accepted too). Cases come from
    ``imagesTr`` (split ``train``, label ``labelsTr/CASE<ending>``) and, if present, ``imagesTs``
    (split ``test``, label ``labelsTs/CASE<ending>`` when that folder exists). Channel files are
    named ``CASE_0000<ending>``, ``CASE_0001<ending>``, ... A ``dataset`` entry in dataset.json
    (explicit file lists) replaces the ``imagesTr`` scan. Subjects are the case ids (nnU-Net has
    no subject field); edit them if one subject has several cases.

    Args:
        dataset_dir: the folder holding ``dataset.json``.

    Returns:
        A labelled manifest named after the folder, rooted at the folder.

    Raises:
        ManifestError: no or invalid dataset.json, a non-NIfTI file ending, region-based labels,
            badly named files, or a case missing a channel.
    """
    root = Path(dataset_dir).resolve()
    spec_path = root / "dataset.json"
    spec = _read_json(spec_path, what="nnU-Net dataset.json")
    if not isinstance(spec, Mapping):
        raise ManifestError(f"{spec_path}: expected a JSON object")
    channels = _nnunet_channels(spec, spec_path)
    labels = _nnunet_labels(spec, spec_path)
    ending = str(spec.get("file_ending", ".nii.gz"))
    if ending not in NIFTI_ENDINGS:
        raise ManifestError(f"{spec_path}: file_ending {ending!r} is not NIfTI (.nii.gz or .nii)")

    cases: list[Case] = []
    if "dataset" in spec:
        cases.extend(_nnunet_listed_cases(spec["dataset"], channels, root, spec_path))
    else:
        cases.extend(_nnunet_folder_cases(root, "imagesTr", "labelsTr", "train", channels, ending))
    if (root / "imagesTs").is_dir():
        cases.extend(_nnunet_folder_cases(root, "imagesTs", "labelsTs", "test", channels, ending))
    if not cases:
        raise ManifestError(f"{root}: no cases found (imagesTr holds no *_0000{ending} files)")
    extra = {"description": str(spec["description"])} if spec.get("description") else {}
    return Manifest(
        name=root.name,
        root=root,
        channels=channels,
        cases=tuple(cases),
        labels=labels,
        root_spec=str(root),
        extra=extra,
    )


def import_nnssl(json_path: PathLike) -> Manifest:
    """Manifest of an nnssl ``pretrain_data.json`` (collection -> datasets -> subjects -> sessions).

    Each image becomes one single-channel case with id ``DATASET__SUBJECT__SESSION__IMAGE`` and
    subject ``DATASET__SUBJECT`` (subject ids are only unique within an nnssl dataset). The channel
    is named after the modality when all images share one, else ``image`` (pretraining mixes
    modalities in one channel). Image paths may start with ``$VAR`` (nnssl's way of writing
    ``$nnssl_raw/...``); if all do with the same variable, the manifest root is ``${VAR}``.
    Relative paths are relative to the JSON file. Associated anonymisation/anatomy masks are not
    imported.

    Args:
        json_path: the ``pretrain_data.json`` file.

    Returns:
        An unlabelled (pretraining) manifest named after ``collection_name``.

    Raises:
        ManifestError: unreadable JSON, missing keys, an unset ``$VAR``, non-NIfTI images.
    """
    json_path = Path(json_path).resolve()
    data = _read_json(json_path, what="nnssl pretrain_data.json")
    where = str(json_path)
    collection = _mapping(data, where)
    name = str(_key(collection, "collection_name", where))
    datasets = _mapping(_key(collection, "datasets", where), f"{where}: datasets")

    records: list[tuple[str, str, str, str, str, str]] = []  # ds, subject, session, name, mod, path
    for ds_key, ds in datasets.items():
        ds_where = f"{where}: datasets.{ds_key}"
        ds_id = str(_mapping(ds, ds_where).get("dataset_index", ds_key))
        subjects = _mapping(_key(ds, "subjects", ds_where), f"{ds_where}.subjects")
        for sub_key, subject in subjects.items():
            sub_where = f"{ds_where}.subjects.{sub_key}"
            sub_id = str(_mapping(subject, sub_where).get("subject_id", sub_key))
            sessions = _mapping(_key(subject, "sessions", sub_where), f"{sub_where}.sessions")
            for ses_key, session in sessions.items():
                ses_where = f"{sub_where}.sessions.{ses_key}"
                ses_id = str(_mapping(session, ses_where).get("session_id", ses_key))
                images = _key(session, "images", ses_where)
                if not isinstance(images, list):
                    raise ManifestError(f"{ses_where}.images: expected a list")
                for i, image in enumerate(images):
                    img_where = f"{ses_where}.images[{i}]"
                    image = _mapping(image, img_where)
                    path = str(_key(image, "image_path", img_where))
                    stem = _strip_nifti(Path(path).name, img_where)
                    image_name = _strip_any(str(image.get("name") or stem))
                    modality = str(image.get("modality") or "image")
                    records.append((ds_id, sub_id, ses_id, image_name, modality, path))
    if not records:
        raise ManifestError(f"{where}: the collection lists no images")

    root, root_spec, rel_paths = _nnssl_root([r[5] for r in records], json_path)
    modalities = {r[4] for r in records}
    channel = modalities.pop() if len(modalities) == 1 else "image"
    cases = tuple(
        Case(
            case_id=f"{ds}__{sub}__{ses}__{img}",
            subject=f"{ds}__{sub}",
            session=ses,
            images={channel: rel},
        )
        for (ds, sub, ses, img, _, _), rel in zip(records, rel_paths, strict=True)
    )
    return Manifest(
        name=name,
        root=root,
        channels=(channel,),
        cases=cases,
        root_spec=root_spec,
        extra={"description": f"imported from {json_path.name} (nnssl)"},
    )


def import_folder(pattern: str, name: str) -> Manifest:
    """Manifest of plain, unlabelled NIfTI files matching a glob (``**`` recurses).

    Case ids are the file names without ``.nii``/``.nii.gz`` (or the relative path with ``/``
    replaced by ``_`` when two files share a name). The subject is the BIDS ``sub-XXX`` entity
    of the file name when it has one, else the case id; the session is its ``ses-XXX`` entity.

    Args:
        pattern: glob pattern, e.g. ``"/data/ixi/**/*T1*.nii.gz"``.
        name: dataset name.

    Returns:
        An unlabelled (pretraining) manifest with one channel, ``image``, rooted at the deepest
        folder holding every match.

    Raises:
        ManifestError: no NIfTI file matches, or the name is empty.
    """
    if not name.strip():
        raise ManifestError("import folder: --name must not be empty")
    files = sorted(
        Path(p).resolve()
        for p in glob.glob(os.path.expanduser(pattern), recursive=True)
        if p.endswith(NIFTI_ENDINGS) and Path(p).is_file()
    )
    if not files:
        raise ManifestError(f"import folder: pattern {pattern!r} matches no .nii/.nii.gz file")
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    rel = [f.relative_to(root) for f in files]
    stems = [_strip_any(f.name) for f in files]
    unique = len(set(stems)) == len(stems)
    cases = []
    for path, stem in zip(rel, stems, strict=True):
        case_id = stem if unique else _strip_any(path.as_posix()).replace("/", "_")
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
    return Manifest(
        name=name, root=root, channels=("image",), cases=tuple(cases), root_spec=str(root)
    )


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
# nnU-Net helpers


def _nnunet_channels(spec: Mapping[str, Any], where: Path) -> tuple[str, ...]:
    raw = spec.get("channel_names", spec.get("modality"))
    if not isinstance(raw, Mapping) or not raw:
        raise ManifestError(f"{where}: 'channel_names' must map channel indices to names")
    try:
        indexed = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        raise ManifestError(
            f"{where}: channel_names keys must be integers, got {list(raw)}"
        ) from None
    if [i for i, _ in indexed] != list(range(len(indexed))):
        raise ManifestError(f"{where}: channel_names keys must be 0..{len(indexed) - 1}")
    names = [n for _, n in indexed]
    # nnU-Net allows repeated names ("MRI", "MRI"); manifest channels must be unique.
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    return tuple(names)


def _nnunet_labels(spec: Mapping[str, Any], where: Path) -> dict[int, str]:
    raw = spec.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise ManifestError(f"{where}: 'labels' must map label names to integer values")
    labels: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, list):
            raise ManifestError(
                f"{where}: label {k!r} is a region ({v}); region-based labels are not supported"
            )
        if isinstance(v, int) and not isinstance(v, bool):  # v2: {"background": 0}
            labels[v] = str(k)
        elif isinstance(k, str) and k.isdigit():  # v1: {"0": "background"}
            labels[int(k)] = str(v)
        else:
            raise ManifestError(f"{where}: label {k!r}: value must be an integer, got {v!r}")
    if 0 not in labels:
        raise ManifestError(f"{where}: labels must include background = 0")
    return dict(sorted(labels.items()))


def _nnunet_folder_cases(
    root: Path,
    images_dir: str,
    labels_dir: str,
    split: str,
    channels: tuple[str, ...],
    ending: str,
) -> list[Case]:
    folder = root / images_dir
    if not folder.is_dir():
        raise ManifestError(f"{root}: no {images_dir} folder")
    by_case: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(ending) or f.name.startswith("."):
            continue
        match = _NNUNET_CHANNEL.match(f.name[: -len(ending)])
        if match is None:
            raise ManifestError(f"{f}: not named CASE_XXXX{ending} (XXXX = channel index)")
        index = int(match["channel"])
        if index >= len(channels):
            raise ManifestError(f"{f}: channel {index}, but dataset.json lists {len(channels)}")
        by_case[match["case"]][index] = Path(images_dir) / f.name
    has_labels = (root / labels_dir).is_dir()
    cases = []
    for case_id, files in sorted(by_case.items()):
        missing = [channels[i] for i in range(len(channels)) if i not in files]
        if missing:
            raise ManifestError(
                f"{folder}: case {case_id} has no file for channel(s) {', '.join(missing)}"
            )
        cases.append(
            Case(
                case_id=case_id,
                subject=case_id,
                images={ch: files[i] for i, ch in enumerate(channels)},
                # nnU-Net finds labels by name; a missing one is reported by `manifest check`.
                label=Path(labels_dir) / f"{case_id}{ending}" if has_labels else None,
                split=split,
            )
        )
    return cases


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
        match = _NNUNET_CHANNEL.match(_strip_any(f.name))
        if match is None:
            return None
        by_case[match["case"]][int(match["channel"])] = f
    return {case: dict(sorted(ch.items())) for case, ch in sorted(by_case.items())}


def _nnunet_listed_cases(
    listed: Any, channels: tuple[str, ...], root: Path, where: Path
) -> list[Case]:
    if not isinstance(listed, Mapping):
        raise ManifestError(f"{where}: 'dataset' must map case ids to image/label files")
    cases = []
    for case_id, entry in listed.items():
        images = entry.get("images") if isinstance(entry, Mapping) else None
        if not isinstance(images, list) or len(images) != len(channels):
            raise ManifestError(
                f"{where}: dataset.{case_id}: 'images' must list {len(channels)} file(s)"
            )
        label = entry.get("label")
        cases.append(
            Case(
                case_id=str(case_id),
                subject=str(case_id),
                images={ch: _listed_path(p, root) for ch, p in zip(channels, images, strict=True)},
                label=_listed_path(label, root) if label else None,
                split="train",
            )
        )
    return cases


def _listed_path(p: str, root: Path) -> Path:
    path = Path(os.path.expandvars(str(p)))
    if path.is_absolute():
        try:
            return path.relative_to(root)
        except ValueError:
            return path
    return Path(os.path.normpath(path))


# --------------------------------------------------------------------------------------------------
# nnssl helpers


def _nnssl_root(paths: list[str], json_path: Path) -> tuple[Path, str, list[Path]]:
    """Root folder, root as written, and each path relative to the root."""
    variables = {p.split("/", 1)[0] for p in paths if p.startswith("$")}
    if len(variables) == 1 and all(p.startswith("$") for p in paths):
        var = variables.pop()
        value = _env(var[1:], paths[0], json_path)
        rel = [Path(p.split("/", 1)[1]) if "/" in p else Path(".") for p in paths]
        return Path(value), f"${{{var[1:]}}}", rel
    resolved = []
    for p in paths:
        if p.startswith("$"):
            head, _, tail = p.partition("/")
            resolved.append(Path(_env(head[1:], p, json_path)) / tail)
        else:
            path = Path(p)
            resolved.append(path if path.is_absolute() else json_path.parent / path)
    resolved = [Path(os.path.normpath(r)) for r in resolved]
    root = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    return root, str(root), [r.relative_to(root) for r in resolved]


def _env(name: str, path: str, json_path: Path) -> str:
    value = os.environ.get(name)
    if not value:
        raise ManifestError(
            f"{json_path}: image path {path!r} uses ${name}, which is not set; "
            f"set it to the folder nnssl resolves it to"
        )
    return value.rstrip("/") or "/"


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _read_json(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise ManifestError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc.__class__.__name__})") from None


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _key(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing key '{key}'")
    return d[key]


def _strip_nifti(filename: str, where: str) -> str:
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending):
            return filename[: -len(ending)]
    raise ManifestError(f"{where}: {filename} is not a NIfTI file (.nii.gz or .nii)")


def _strip_any(filename: str) -> str:
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending):
            return filename[: -len(ending)]
    return filename
