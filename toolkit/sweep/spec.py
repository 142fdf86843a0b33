"""The sweep spec: a YAML file naming a base config, axes over config fields, data and seeds.

A sweep spec is a YAML file::

    name: mask_ratio                    # optional, default: the file name
    base: tiny                          # preset name or config YAML (relative to the spec)
    overrides: [pretrain.steps=30]      # dotted overrides of the base (list or mapping)
    axes:                               # dotted config field -> values; the grid is their product
      mask.ratio: [0.3, 0.6, 0.75, 0.9]
      mask.variant: [dense, s3d]
    pretrain_data:                      # unlabelled data: a manifest path, {manifest: path},
      synthetic: {subjects: 8, seed: 0} #   {cache: preprocessed folder} or {synthetic: {...}}
    datasets:                           # labelled downstream sets, each a manifest path,
      - synthetic: {labelled: 6, seed: 1}   # {manifest: path, name: .., split: test}
      - manifest: data_manifests/demo_labelled.yaml    # or {synthetic: {...}, name: ..}
    seeds: [0]                          # fine-tuning seeds (runtime.seed)
    scratch: true                       # add a from-scratch baseline per dataset x seed
    pretrained_checkpoint: final        # which pretraining checkpoint is fine-tuned (final, best)

**Which axes cause a new pretraining run.** Fields under ``finetune.`` and ``evaluate.`` only
change fine-tuning (``finetune.optim.*`` included): all their values share one pretraining run.
Every other field (``mask.``, ``pretrain.`` with ``pretrain.optim.*``, ``model.``, ``data.``,
``runtime.``) changes pretraining, so each combination of those values is pretrained once and the
fine-tuning runs inherit the values. The from-scratch baseline ignores the axes that only matter
to pretraining (``mask.``, ``pretrain.`` and ``data.pretrain_manifest``), so it is trained once per
remaining combination (e.g. once per ``model.name``), dataset and seed. ``seeds`` vary fine-tuning
only: like the paper, each pretraining config is pretrained once (with the base ``runtime.seed``).

Example:
    >>> spec = load_sweep_spec("data_manifests/sweeps/example_mask_ratio.yaml")  # doctest: +SKIP
    >>> spec.pretrain_fields, spec.finetune_fields  # doctest: +SKIP
    (['mask.ratio', 'mask.variant'], [])
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.config import Config, describe, load_config
from toolkit.config_legacy import moved_field_error
from toolkit.errors import ConfigError
from toolkit.sweep.layout import DATA_DIR

PathLike = str | os.PathLike[str]

#: Sections whose fields change fine-tuning only (see the module docstring).
FINETUNE_SECTIONS = ("finetune", "evaluate")
#: Fields a from-scratch baseline does not depend on (prefixes of dotted names).
PRETRAIN_ONLY_PREFIXES = ("mask.", "pretrain.", "data.pretrain_manifest")
#: Fields the sweep sets itself; an axis over them would be ambiguous.
RESERVED_FIELDS = {
    "runtime.seed": "use 'seeds:' to vary the seed",
    "data.finetune_manifest": "use 'datasets:' to list the downstream sets",
    "preset": "use 'base:' to choose the preset",
}


_SPEC_KEYS = (
    "name",
    "base",
    "overrides",
    "axes",
    "pretrain_data",
    "datasets",
    "seeds",
    "scratch",
    "pretrained_checkpoint",
)
_SYNTHETIC_KEYS = ("subjects", "labelled", "seed", "spacing_mm", "lesions", "test_fraction")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic data set written into ``SWEEP_DIR/data/<name>`` by the sweep.

    Attributes:
        name: folder name; the manifests are ``<name>_pretrain`` / ``<name>_labelled``.
        subjects: unlabelled pretraining subjects.
        labelled: labelled subjects (train/test split).
        seed: data set seed.
        spacing_mm: voxel spacing of every subject.
        lesions: white-matter lesions (label 4).
        test_fraction: fraction of labelled subjects in the test split.
    """

    name: str
    subjects: int = 0
    labelled: int = 0
    seed: int = 0
    spacing_mm: float = 2.0
    lesions: bool = False
    test_fraction: float = 0.25

    def folder(self, sweep_dir: Path) -> Path:
        """Where the data set is written."""
        return sweep_dir / DATA_DIR / self.name


@dataclass(frozen=True)
class PretrainData:
    """The unlabelled pretraining data: exactly one of a manifest, a cache or a synthetic set."""

    manifest: Path | None = None
    cache: Path | None = None
    synthetic: SyntheticData | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled downstream data set: fine-tuned on its non-test cases, scored on ``split``.

    Attributes:
        name: label in run names and in the results' ``dataset`` column.
        manifest: labelled manifest (None for a synthetic set until the sweep folder is known).
        synthetic: the synthetic set to write, if any.
        split: the split that is evaluated.
    """

    name: str
    manifest: Path | None = None
    synthetic: SyntheticData | None = None
    split: str = "test"

    def manifest_path(self, sweep_dir: Path) -> Path:
        """The labelled manifest (a synthetic set's is inside the sweep folder)."""
        if self.synthetic is not None:
            return self.synthetic.folder(sweep_dir) / "labelled.yaml"
        assert self.manifest is not None
        return self.manifest


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep spec (see the module docstring for the YAML form).

    Attributes:
        name: sweep name (``sweep`` column of the results).
        base: the config every run starts from, with ``overrides`` applied.
        axes: dotted field -> values, in spec order; values are as the config stores them.
        pretrain_data: unlabelled data (None: the base config's ``data`` section says).
        datasets: downstream sets.
        seeds: fine-tuning seeds.
        scratch: add the from-scratch baseline.
        pretrained_checkpoint: ``final`` (default) or ``best`` (lowest validation loss)
            pretraining checkpoint to fine-tune.
        source: the spec file, if it came from one.
        raw: the spec as written (copied into the sweep folder).
    """

    name: str
    base: Config
    axes: dict[str, tuple[Any, ...]]
    datasets: tuple[DatasetSpec, ...]
    pretrain_data: PretrainData | None = None
    seeds: tuple[int, ...] = (0,)
    scratch: bool = False
    pretrained_checkpoint: str = "final"
    source: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def pretrain_fields(self) -> list[str]:
        """Axes that change pretraining (one pretraining run per combination)."""
        return [k for k in self.axes if not is_finetune_field(k)]

    @property
    def finetune_fields(self) -> list[str]:
        """Axes that only change fine-tuning."""
        return [k for k in self.axes if is_finetune_field(k)]


def is_finetune_field(name: str) -> bool:
    """True for a dotted field that changes fine-tuning only (``finetune.*``, ``evaluate.*``)."""
    return name.split(".", 1)[0] in FINETUNE_SECTIONS


def is_scratch_field(name: str) -> bool:
    """True for a field a from-scratch baseline depends on (not ``mask.*``, ``pretrain.*``)."""
    return not any(name == p or name.startswith(p) for p in PRETRAIN_ONLY_PREFIXES)


def get_field(cfg: Config, name: str) -> Any:
    """The value of a dotted field, e.g. ``get_field(cfg, "mask.ratio")``."""
    value: Any = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return value


def where_prefix(source: Path | None) -> str:
    """``"spec.yaml: "`` for messages about a spec (``"sweep spec: "`` without a file)."""
    return f"{source}: " if source is not None else "sweep spec: "


def _unknown_key(where: str, key: str, known: Sequence[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{where}{key}: unknown key{extra}")


def _as_int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be >= {minimum}, got {value}")
    return int(value)


def _resolve(path: Any, root: Path, where: str) -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ConfigError(f"{where}: expected a path, got {path!r}")
    p = Path(os.path.expandvars(os.fspath(path))).expanduser()
    return (p if p.is_absolute() else root / p).resolve()


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a usable name (letters, digits, '_', '.', '+', '-'; "
            "starting with a letter or digit)"
        )
    return name


def _parse_synthetic(data: Any, where: str, default_name: str, role: str) -> SyntheticData:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(_SYNTHETIC_KEYS)}")
    for key in data:
        if key not in _SYNTHETIC_KEYS:
            raise _unknown_key(f"{where}.", str(key), _SYNTHETIC_KEYS)
    subjects = _as_int(data.get("subjects", 0), f"{where}.subjects", minimum=0)
    labelled = _as_int(data.get("labelled", 0), f"{where}.labelled", minimum=0)
    if role == "pretrain" and (subjects < 1 or labelled):
        raise ConfigError(
            f"{where}: pretraining data needs subjects >= 1 and no labelled subjects "
            f"(got subjects={subjects}, labelled={labelled})"
        )
    if role == "labelled" and (labelled < 2 or subjects):
        raise ConfigError(
            f"{where}: a downstream set needs labelled >= 2 and no unlabelled subjects (put those "
            f"under pretrain_data; got subjects={subjects}, labelled={labelled})"
        )
    spacing = data.get("spacing_mm", 2.0)
    if isinstance(spacing, bool) or not isinstance(spacing, int | float) or not spacing > 0:
        raise ConfigError(f"{where}.spacing_mm: expected a positive number, got {spacing!r}")
    test_fraction = data.get("test_fraction", 0.25)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, int | float):
        raise ConfigError(f"{where}.test_fraction: expected a number, got {test_fraction!r}")
    if not 0 < test_fraction < 1:
        raise ConfigError(f"{where}.test_fraction: must be in (0, 1), got {test_fraction!r}")
    lesions = data.get("lesions", False)
    if not isinstance(lesions, bool):
        raise ConfigError(f"{where}.lesions: expected true or false, got {lesions!r}")
    return SyntheticData(
        name=default_name,
        subjects=subjects,
        labelled=labelled,
        seed=_as_int(data.get("seed", 0), f"{where}.seed"),
        spacing_mm=float(spacing),
        lesions=lesions,
        test_fraction=float(test_fraction),
    )


def _parse_pretrain_data(data: Any, root: Path, where: str) -> PretrainData:
    if isinstance(data, str | os.PathLike):
        return PretrainData(manifest=_resolve(data, root, where))
    if not isinstance(data, Mapping) or len(data) != 1:
        raise ConfigError(
            f"{where}: expected a manifest path or one of {{manifest: ..}}, {{cache: ..}}, "
            f"{{synthetic: {{subjects, seed}}}}; got {data!r}"
        )
    ((key, value),) = data.items()
    if key == "manifest":
        return PretrainData(manifest=_resolve(value, root, f"{where}.manifest"))
    if key == "cache":
        return PretrainData(cache=_resolve(value, root, f"{where}.cache"))
    if key == "synthetic":
        return PretrainData(
            synthetic=_parse_synthetic(value, f"{where}.synthetic", "pretrain", "pretrain")
        )
    raise _unknown_key(f"{where}.", str(key), ("manifest", "cache", "synthetic"))


def _parse_dataset(entry: Any, root: Path, where: str) -> DatasetSpec:
    from toolkit.data.manifest import load_manifest

    if isinstance(entry, str | os.PathLike):
        entry = {"manifest": entry}
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: expected a manifest path or a mapping, got {entry!r}")
    known = ("manifest", "synthetic", "name", "split")
    for key in entry:
        if key not in known:
            raise _unknown_key(f"{where}.", str(key), known)
    if ("manifest" in entry) == ("synthetic" in entry):
        raise ConfigError(f"{where}: give exactly one of 'manifest' or 'synthetic'")
    split = entry.get("split", "test")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"{where}.split: must be train, val or test, got {split!r}")
    if "synthetic" in entry:
        seed = entry["synthetic"].get("seed", 0) if isinstance(entry["synthetic"], Mapping) else 0
        name = _check_name(entry.get("name", f"synth{seed}"), f"{where}.name")
        synth = _parse_synthetic(entry["synthetic"], f"{where}.synthetic", name, "labelled")
        return DatasetSpec(name=name, synthetic=synth, split=split)
    manifest = _resolve(entry["manifest"], root, f"{where}.manifest")
    m = load_manifest(manifest)
    if not m.is_labelled:
        raise ConfigError(f"{where}.manifest: {manifest} has no labels (needs a labelled set)")
    name = _check_name(entry.get("name", m.name), f"{where}.name")
    return DatasetSpec(name=name, manifest=manifest, split=split)


def _parse_axes(data: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}axes: expected a mapping of dotted field -> list of values")
    known = [name for name, _, _ in describe()]
    axes: dict[str, tuple[Any, ...]] = {}
    for key, values in data.items():
        name = str(key)
        if name in RESERVED_FIELDS:
            raise ConfigError(f"{where}axes.{name}: cannot be an axis; {RESERVED_FIELDS[name]}")
        moved = moved_field_error(name)
        if moved is not None:
            raise ConfigError(f"{where}axes.{moved}")
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}axes.{name}: unknown config field{extra}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}axes.{name}: expected a non-empty list of values")
        # Values are checked and coerced when each combination is built (expand_sweep): a value
        # may only be valid together with another axis (e.g. mask.input_mask_token with dense).
        axes[name] = tuple(tuple(v) if isinstance(v, list) else v for v in values)
    return axes


def parse_sweep_spec(data: Mapping[str, Any], *, source: Path | None = None) -> SweepSpec:
    """Build a :class:`SweepSpec` from the YAML mapping; relative paths are relative to ``source``.

    Raises:
        ConfigError: unknown keys, bad values or an axis over an unknown or reserved field, with
            the spec file and the key in the message.
    """
    where = where_prefix(source)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}expected a mapping at the top level")
    for key in data:
        if key not in _SPEC_KEYS:
            raise _unknown_key(where, str(key), _SPEC_KEYS)
    root = source.parent.resolve() if source is not None else Path.cwd()
    name = _check_name(data.get("name", source.stem if source else "sweep"), f"{where}name")

    if "base" not in data:
        raise ConfigError(f"{where}base: missing (a preset name such as tiny, or a config YAML)")
    base_ref = data["base"]
    if not isinstance(base_ref, str):
        raise ConfigError(f"{where}base: expected a preset name or a path, got {base_ref!r}")
    from toolkit.config import PRESETS

    base_key = base_ref if base_ref in PRESETS else str(_resolve(base_ref, root, f"{where}base"))
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list | Mapping):
        raise ConfigError(f"{where}overrides: expected a list of field=value or a mapping")
    try:
        base = load_config(base_key, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    axes = _parse_axes(data.get("axes"), where)

    pretrain_data = None
    if data.get("pretrain_data") is not None:
        pretrain_data = _parse_pretrain_data(data["pretrain_data"], root, f"{where}pretrain_data")
    elif not (base.data.pretrain_manifest or base.data.cache_dir):
        raise ConfigError(
            f"{where}pretrain_data: missing, and the base config sets neither "
            "data.pretrain_manifest nor data.cache_dir"
        )

    entries = data.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}datasets: expected a non-empty list of downstream data sets")
    datasets = tuple(
        _parse_dataset(e, root, f"{where}datasets[{i}]") for i, e in enumerate(entries)
    )
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{where}datasets: the name {dup!r} is used twice (set 'name:')")
    synth_names = [d.synthetic.name for d in datasets if d.synthetic is not None]
    if pretrain_data is not None and pretrain_data.synthetic is not None:
        synth_names.append(pretrain_data.synthetic.name)
    if len(set(synth_names)) != len(synth_names):
        raise ConfigError(f"{where}datasets: synthetic data set names must be unique")

    seeds_raw = data.get("seeds", [0])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise ConfigError(f"{where}seeds: expected a non-empty list of integers")
    seeds = tuple(_as_int(s, f"{where}seeds[{i}]") for i, s in enumerate(seeds_raw))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}seeds: a seed is listed twice ({seeds_raw})")
    scratch = data.get("scratch", False)
    if not isinstance(scratch, bool):
        raise ConfigError(f"{where}scratch: expected true or false, got {scratch!r}")
    which = data.get("pretrained_checkpoint", "final")
    if which not in ("final", "best"):
        raise ConfigError(f"{where}pretrained_checkpoint: must be final or best, got {which!r}")
    return SweepSpec(
        name=name,
        base=base,
        axes=axes,
        datasets=datasets,
        pretrain_data=pretrain_data,
        seeds=seeds,
        scratch=scratch,
        pretrained_checkpoint=which,
        source=source,
        raw=dict(data),
    )


def load_sweep_spec(path: PathLike) -> SweepSpec:
    """Read and check a sweep spec YAML file (see the module docstring).

    Raises:
        ConfigError: the file is missing, not YAML, or not a valid spec.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: sweep spec not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    return parse_sweep_spec(data or {}, source=p)


__all__ = [
    "FINETUNE_SECTIONS",
    "PRETRAIN_ONLY_PREFIXES",
    "RESERVED_FIELDS",
    "DatasetSpec",
    "PretrainData",
    "SweepSpec",
    "SyntheticData",
    "get_field",
    "is_finetune_field",
    "is_scratch_field",
    "load_sweep_spec",
    "parse_sweep_spec",
    "where_prefix",
]
