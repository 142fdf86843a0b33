"""Dataset manifests: one YAML file per dataset listing its cases.

Format (YAML, documented in data_manifests/README.md)::

    name: demo_labelled            # dataset name
    root: ${MAE3D_DATA:-.}         # env var with fallback, or a path; relative = next to this file
    channels: [T1]                 # modality names, in channel order
    labels: {0: background, 1: csf, 2: gm, 3: wm}   # labelled sets only; 0 must be background
    cases:
      - id: sub-001_ses-1          # unique case id
        subject: sub-001           # subject id (leakage checks work on this)
        session: ses-1
        images: {T1: sub-001/t1.nii.gz}   # one file per channel, relative to root
        label: sub-001/seg.nii.gz         # optional
        split: train                      # optional: train, val or test
        fold: 0                           # optional

Relative case paths must stay inside the root: ``../x.nii.gz`` climbing out of it is refused when
the manifest loads, unless the manifest says ``allow_outside_root: true`` (or the caller passes
``allow_outside_root=True``). Absolute case paths are taken as written: someone typed them.

Example:
    >>> m = Manifest(name="x", root=Path("."), channels=("T1",),
    ...              cases=(Case(case_id="a", subject="s1", images={"T1": Path("a.nii.gz")}),))
    >>> m.case("a").subject
    's1'
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from toolkit.errors import ManifestError

# libyaml's safe loader/dumper when PyYAML was built with it: the pure-Python ones cost ~4 s per
# 1,000 cases (a 100k-volume manifest took minutes to write and read); same documents either way.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

PathLike = str | os.PathLike[str]
SPLITS = ("train", "val", "test")
_ENV = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


@dataclass(frozen=True)
class Case:
    """One imaging session: its channel files, optional label map, split and fold.

    Paths are as written in the manifest (relative to the manifest root unless absolute);
    use :meth:`Manifest.image_paths` / :meth:`Manifest.label_path` for resolved paths.
    """

    case_id: str
    subject: str
    images: Mapping[str, Path]
    session: str = ""
    label: Path | None = None
    split: str | None = None
    fold: int | None = None


@dataclass(frozen=True)
class Manifest:
    """A dataset: its name, resolved root, channel names, optional label names and cases."""

    name: str
    root: Path
    channels: tuple[str, ...]
    cases: tuple[Case, ...]
    labels: Mapping[int, str] | None = None
    path: Path | None = None
    root_spec: str = "."
    extra: Mapping[str, Any] = field(default_factory=dict)
    allow_outside_root: bool = False

    @property
    def is_labelled(self) -> bool:
        return self.labels is not None

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.case_id == case_id:
                return c
        raise KeyError(f"{self.name}: no case {case_id!r}")

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else self.root / p

    def image_paths(self, case: Case) -> list[Path]:
        """Resolved image files of ``case`` in channel order."""
        return [self.resolve(Path(case.images[ch])) for ch in self.channels]

    def label_path(self, case: Case) -> Path | None:
        return None if case.label is None else self.resolve(Path(case.label))

    def split(self, *splits: str) -> Manifest:
        """A manifest with only the cases whose split is one of ``splits``."""
        return replace(self, cases=tuple(c for c in self.cases if c.split in splits))

    def subset(self, case_ids: Iterable[str]) -> Manifest:
        wanted = set(case_ids)
        return replace(self, cases=tuple(c for c in self.cases if c.case_id in wanted))


def expand_root(spec: str, base: Path) -> Path:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$VAR`` in ``spec``; relative joins ``base``."""

    def sub(m: re.Match[str]) -> str:
        name = m.group("name") or m.group("bare")
        value = os.environ.get(name)
        if value is None:
            if m.group("default") is not None:
                return m.group("default")
            raise ManifestError(f"root: environment variable {name} is not set (root: {spec!r})")
        return value

    expanded = Path(_ENV.sub(sub, spec)).expanduser()
    return expanded if expanded.is_absolute() else (base / expanded)


def is_within(path: PathLike, root: PathLike) -> bool:
    """Whether ``path`` lies in ``root``, comparing normalised paths (symlinks not followed).

    Example:
        >>> is_within("/data/x/../y/a.nii", "/data/y"), is_within("/data/y/../z", "/data/y")
        (True, False)
    """
    p, r = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return os.path.commonpath([p, r]) == r


def paths_outside_root(m: Manifest) -> list[tuple[str, str, Path]]:
    """``(case id, field, path)`` of every relative case path that climbs out of the root.

    Absolute paths are not listed: they do not claim to be under the root.

    Example:
        >>> c = Case(case_id="a", subject="a", images={"T1": Path("../a.nii")})
        >>> paths_outside_root(Manifest(name="x", root=Path("/d"), channels=("T1",), cases=(c,)))
        [('a', 'images.T1', PosixPath('../a.nii'))]
    """
    out = []
    for c in m.cases:
        fields = [(f"images.{ch}", Path(p)) for ch, p in c.images.items()]
        if c.label is not None:
            fields.append(("label", Path(c.label)))
        for name, p in fields:
            if not p.is_absolute() and not is_within(m.root / p, m.root):
                out.append((c.case_id, name, p))
    return out


def symlinks_leaving_root(m: Manifest) -> list[tuple[str, Path, Path]]:
    """``(case id, path, target)`` of every case file under the root that links outside it.

    Such links are allowed (linking data in is a common habit); ``mae3d manifest import`` and
    ``check`` list them as warnings. Absolute case paths are not looked at. Only files that exist
    are followed.
    """
    real_root = os.path.realpath(m.root)
    out = []
    for c in m.cases:
        paths = [Path(p) for p in c.images.values()]
        if c.label is not None:
            paths.append(Path(c.label))
        for p in paths:
            full = m.root / p
            if p.is_absolute() or not full.exists():
                continue
            target = Path(os.path.realpath(full))
            if not is_within(target, real_root):
                out.append((c.case_id, full, target))
    return out


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] in (None, ""):
        raise ManifestError(f"{where}: missing required field '{key}'")
    return d[key]


def manifest_from_dict(
    data: Mapping[str, Any], path: Path | None = None, *, allow_outside_root: bool = False
) -> Manifest:
    """Build a :class:`Manifest` from parsed YAML; ``path`` anchors relative roots and errors.

    Args:
        data: the parsed YAML document.
        path: the manifest file (relative roots are relative to its folder).
        allow_outside_root: accept relative case paths that climb out of the root (``..``), as
            the manifest field ``allow_outside_root: true`` does.

    Raises:
        ManifestError: a schema error, or a case path leading outside the root.
    """
    src = str(path) if path else "manifest"
    if not isinstance(data, Mapping):
        raise ManifestError(f"{src}: expected a mapping at top level")
    known = {"name", "root", "channels", "labels", "cases", "description", "allow_outside_root"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ManifestError(f"{src}: unknown top-level field(s) {', '.join(unknown)}")
    name = str(_req(data, "name", src))
    root_spec = str(data.get("root", "."))
    base = path.parent.resolve() if path else Path.cwd()
    root = expand_root(root_spec, base)
    channels = data.get("channels") or ["image"]
    if isinstance(channels, str) or not all(isinstance(c, str) for c in channels):
        raise ManifestError(f"{src}: channels must be a list of modality names")
    if len(set(channels)) != len(channels):
        raise ManifestError(f"{src}: channels must be unique, got {list(channels)}")
    labels = None
    if data.get("labels") is not None:
        raw = data["labels"]
        if not isinstance(raw, Mapping):
            raise ManifestError(f"{src}: labels must map integer values to names")
        try:
            labels = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise ManifestError(f"{src}: label values must be integers, got {list(raw)}") from None
        if 0 not in labels:
            raise ManifestError(f"{src}: labels must include 0 (background)")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ManifestError(f"{src}: 'cases' must be a non-empty list")
    cases = []
    for i, rc in enumerate(raw_cases):
        where = f"{src}: cases[{i}]"
        if not isinstance(rc, Mapping):
            raise ManifestError(f"{where}: expected a mapping")
        extra_keys = sorted(
            set(rc) - {"id", "subject", "session", "images", "label", "split", "fold"}
        )
        if extra_keys:
            raise ManifestError(f"{where}: unknown field(s) {', '.join(extra_keys)}")
        cid = str(_req(rc, "id", where))
        where = f"{src}: case {cid}"
        images = rc.get("images")
        if isinstance(images, str):
            if len(channels) != 1:
                raise ManifestError(f"{where}: images must map each of {channels} to a file")
            images = {channels[0]: images}
        if not isinstance(images, Mapping) or not images:
            raise ManifestError(f"{where}: 'images' must map channel names to files")
        missing = [c for c in channels if c not in images]
        if missing:
            raise ManifestError(f"{where}: no image for channel(s) {', '.join(missing)}")
        stray = [str(c) for c in images if c not in channels]
        if stray:
            raise ManifestError(f"{where}: image channel(s) {', '.join(stray)} not in channels")
        split = rc.get("split")
        if split is not None and split not in SPLITS:
            raise ManifestError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
        fold = rc.get("fold")
        if fold is not None and (isinstance(fold, bool) or not isinstance(fold, int)):
            raise ManifestError(f"{where}: fold must be an integer, got {fold!r}")
        cases.append(
            Case(
                case_id=cid,
                subject=str(rc.get("subject") or cid),
                session=str(rc.get("session") or ""),
                images={str(k): Path(str(v)) for k, v in images.items()},
                label=Path(str(rc["label"])) if rc.get("label") else None,
                split=split,
                fold=fold,
            )
        )
    allow = data.get("allow_outside_root", False)
    if not isinstance(allow, bool):
        raise ManifestError(f"{src}: allow_outside_root must be true or false, got {allow!r}")
    m = Manifest(
        name=name,
        root=root,
        channels=tuple(channels),
        cases=tuple(cases),
        labels=labels,
        path=path,
        root_spec=root_spec,
        extra={"description": data["description"]} if "description" in data else {},
        allow_outside_root=allow,
    )
    outside = [] if allow or allow_outside_root else paths_outside_root(m)
    if outside:
        cid, name_, p = outside[0]
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise ManifestError(
            f"{src}: case {cid}: {name_} {p.as_posix()} leads outside the root {root}{more}; "
            f"add 'allow_outside_root: true' to the manifest if that is on purpose"
        )
    return m


def load_manifest(path: PathLike, *, allow_outside_root: bool = False) -> Manifest:
    """Read and parse a manifest file (schema errors raise :class:`ManifestError`).

    Args:
        path: the YAML file.
        allow_outside_root: accept relative case paths that climb out of the root even when the
            manifest does not say ``allow_outside_root: true``.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    return manifest_from_dict(data, path.resolve(), allow_outside_root=allow_outside_root)


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    """Plain dict for YAML output (paths as POSIX strings, as written)."""
    out: dict[str, Any] = {"name": m.name, "root": m.root_spec, "channels": list(m.channels)}
    if "description" in m.extra:
        out["description"] = m.extra["description"]
    if m.labels is not None:
        out["labels"] = {int(k): v for k, v in sorted(m.labels.items())}
    if m.allow_outside_root:
        out["allow_outside_root"] = True
    cases = []
    for c in m.cases:
        d: dict[str, Any] = {"id": c.case_id, "subject": c.subject}
        if c.session:
            d["session"] = c.session
        d["images"] = {k: Path(v).as_posix() for k, v in c.images.items()}
        if c.label is not None:
            d["label"] = Path(c.label).as_posix()
        if c.split is not None:
            d["split"] = c.split
        if c.fold is not None:
            d["fold"] = c.fold
        cases.append(d)
    out["cases"] = cases
    return out


def save_manifest(m: Manifest, path: PathLike) -> Path:
    """Write ``m`` as YAML atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.dump(manifest_to_dict(m), Dumper=_YAML_DUMPER, sort_keys=False))
    tmp.replace(path)
    return path
