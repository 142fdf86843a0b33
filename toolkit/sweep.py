"""Ablation sweeps: a grid over config fields, expanded into resumable pretrain/fine-tune runs.

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
``runtime.``) changes pretraining, so each
combination of those values is pretrained once and the fine-tuning runs inherit the values. The
from-scratch baseline ignores the axes that only matter to pretraining (``mask.``, ``pretrain.``
and ``data.pretrain_manifest``), so it is trained once per remaining combination (e.g. once per
``model.name``), dataset and seed. ``seeds`` vary fine-tuning only: like the paper, each
pretraining config is pretrained once (with the base ``runtime.seed``).

**Layout of the sweep folder** (run names are built from the axis values)::

    SWEEP_DIR/spec.yaml  plan.json  status.csv  failures.csv  results.csv
    SWEEP_DIR/data/<name>/           synthetic data sets (written once)
    SWEEP_DIR/cache/<manifest>/      preprocessed caches shared by every run
    SWEEP_DIR/pt_mask.ratio=0.6_mask.variant=s3d/             a pretraining run
    SWEEP_DIR/ft_<dataset>_pt_mask.ratio=0.6_mask.variant=s3d_seed0/   fine-tuning + evaluation
    SWEEP_DIR/ft_<dataset>_scratch_seed0/                     the from-scratch baseline

Each run folder holds its ``config.yaml`` (written before it starts), ``attempts.jsonl`` (one line
per attempt, with the error of a failed one) and, written last, ``done.json``. Rerunning a sweep
skips runs with ``done.json``, resumes an interrupted run from its ``latest`` checkpoint, and
retries a failed run once per invocation; a run that still fails is listed in ``failures.csv``
(with the fine-tuning runs it blocks), never dropped silently. A run whose saved config differs
from the spec is an error, so one folder never mixes two versions of a sweep.

Example:
    >>> spec = load_sweep_spec("data_manifests/sweeps/example_mask_ratio.yaml")  # doctest: +SKIP
    >>> plan = expand_sweep(spec, "sweeps/mask_ratio")  # doctest: +SKIP
    >>> len(plan.pretrain_runs), len(plan.finetune_runs)  # doctest: +SKIP
    (8, 18)
    >>> report = run_sweep(spec, "sweeps/mask_ratio")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from toolkit.config import (
    Config,
    apply_overrides,
    describe,
    load_config,
    save_config,
)
from toolkit.config_legacy import moved_field_error
from toolkit.errors import ConfigError, ToolkitError, TrainingError

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

SPEC_FILE = "spec.yaml"
PLAN_FILE = "plan.json"
STATUS_FILE = "status.csv"
FAILURES_FILE = "failures.csv"
RESULTS_FILE = "results.csv"
DATA_DIR = "data"
CONFIG_FILE = "config.yaml"
DONE_FILE = "done.json"
ATTEMPTS_FILE = "attempts.jsonl"
EVAL_DIR = "evaluation"
EVAL_METRICS = "metrics.csv"

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
_MAX_NAME = 180  # run folder names stay well under the usual 255-byte file-name limit


# --------------------------------------------------------------------------------------------------
# The spec


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


def _scratch_relevant(name: str) -> bool:
    return not any(name == p or name.startswith(p) for p in PRETRAIN_ONLY_PREFIXES)


def get_field(cfg: Config, name: str) -> Any:
    """The value of a dotted field, e.g. ``get_field(cfg, "mask.ratio")``."""
    value: Any = cfg
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _where(source: Path | None) -> str:
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
    where = _where(source)
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


# --------------------------------------------------------------------------------------------------
# Expansion


def format_value(value: Any) -> str:
    """A value as it appears in run names: ``0.6``, ``true``, ``48x48x48``, ``s3d``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)  # shortest string that reads back as the same float
    if isinstance(value, list | tuple):
        return "x".join(format_value(v) for v in value)
    text = str(value)
    if "/" in text or os.sep in text:
        text = Path(text).stem
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", text) or "empty"


def _label(values: Mapping[str, Any]) -> str:
    return "_".join(f"{k}={format_value(v)}" for k, v in values.items())


def _shorten(name: str) -> str:
    if len(name) <= _MAX_NAME:
        return name
    import hashlib

    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}~{digest}"


@dataclass(frozen=True)
class Run:
    """One run of an expanded sweep.

    Attributes:
        name: folder name inside the sweep folder.
        kind: ``pretrain`` or ``finetune``.
        config: the full config of the run.
        values: the swept field values that apply to it (scratch runs lack pretraining-only ones).
        arm: ``pretrain`` for pretraining runs; ``pretrained`` or ``scratch`` for fine-tuning.
        config_label: the compared configuration, e.g. ``mask.ratio=0.6 mask.variant=s3d`` or
            ``scratch``; the same for every dataset and seed.
        dataset: downstream set (fine-tuning only).
        seed: fine-tuning seed (fine-tuning only).
        pretrain_run: the pretraining run whose weights are fine-tuned.
        manifest: the labelled manifest (fine-tuning only).
        split: the evaluated split (fine-tuning only).
    """

    name: str
    kind: str
    config: Config
    values: dict[str, Any]
    arm: str
    config_label: str
    dataset: str | None = None
    seed: int | None = None
    pretrain_run: str | None = None
    manifest: Path | None = None
    split: str | None = None

    @property
    def steps(self) -> int:
        """Optimiser steps of the run."""
        return self.config.pretrain.steps if self.kind == "pretrain" else self.config.finetune.steps

    def to_dict(self) -> dict[str, Any]:
        """Plain metadata (no config) for ``plan.json``."""
        return {
            "name": self.name,
            "kind": self.kind,
            "arm": self.arm,
            "config": self.config_label,
            "dataset": self.dataset,
            "seed": self.seed,
            "pretrain_run": self.pretrain_run,
            "split": self.split,
            "steps": self.steps,
            "values": {k: list(v) if isinstance(v, tuple) else v for k, v in self.values.items()},
        }


@dataclass(frozen=True)
class SweepPlan:
    """An expanded sweep: every run with its config, in execution order."""

    spec: SweepSpec
    out_dir: Path
    runs: tuple[Run, ...]

    @property
    def pretrain_runs(self) -> list[Run]:
        """The pretraining runs, one per combination of pretraining axes."""
        return [r for r in self.runs if r.kind == "pretrain"]

    @property
    def finetune_runs(self) -> list[Run]:
        """The fine-tuning runs (pretrained and scratch), seed by seed, dataset by dataset."""
        return [r for r in self.runs if r.kind == "finetune"]

    def run(self, name: str) -> Run:
        """The run called ``name``."""
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    def run_dir(self, run: Run | str) -> Path:
        """The folder of a run."""
        return self.out_dir / (run if isinstance(run, str) else run.name)

    def pretrained_checkpoint(self, run: Run) -> Path | None:
        """The pretraining checkpoint a fine-tuning run starts from.

        ``final`` by default, as the paper fine-tunes the end of a fixed-length pretraining; with
        ``pretrained_checkpoint: best`` the lowest validation loss (``final`` if there is none).
        """
        if run.pretrain_run is None:
            return None
        ckpts = self.run_dir(run.pretrain_run) / "checkpoints"
        best = ckpts / "best.pt"
        if self.spec.pretrained_checkpoint == "best" and best.is_file():
            return best
        return ckpts / "final.pt"

    def to_dict(self) -> dict[str, Any]:
        """What ``plan.json`` holds: the sweep name, the axes and every run's metadata."""
        return {
            "sweep": self.spec.name,
            "pretrain_fields": self.spec.pretrain_fields,
            "finetune_fields": self.spec.finetune_fields,
            "axes": {
                k: [list(v) if isinstance(v, tuple) else v for v in vs]
                for k, vs in self.spec.axes.items()
            },
            "datasets": [d.name for d in self.spec.datasets],
            "seeds": list(self.spec.seeds),
            "runs": [r.to_dict() for r in self.runs],
        }


def _data_overrides(spec: SweepSpec, out: Path) -> dict[str, Any]:
    pd_ = spec.pretrain_data
    if pd_ is None:
        return {}
    if pd_.synthetic is not None:
        return {"data.pretrain_manifest": str(pd_.synthetic.folder(out) / "pretrain.yaml")}
    if pd_.manifest is not None:
        return {"data.pretrain_manifest": str(pd_.manifest)}
    return {}


def expand_sweep(spec: SweepSpec, out_dir: PathLike) -> SweepPlan:
    """Expand a spec into its runs, with deterministic names and full configs.

    Pretraining runs come first (one per combination of pretraining axes), then fine-tuning runs
    seed by seed and dataset by dataset: the scratch baselines, then every pretrained config.
    Names use the values as the config stores them (``0.60`` and ``0.6`` are one value).

    Raises:
        ConfigError: a combination of values is invalid (the message names the run), or two runs
            would get the same folder name.
    """
    out = Path(out_dir).resolve()
    pt_fields, ft_fields = spec.pretrain_fields, spec.finetune_fields
    data_over = _data_overrides(spec, out)

    def build(values: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple[Config, dict[str, Any]]:
        try:
            cfg = apply_overrides(spec.base, {**data_over, **values, **extra})
        except ConfigError as exc:
            raise ConfigError(
                f"{_where(spec.source)}combination {_config_text(values)}: {exc}"
            ) from None
        return cfg, {k: get_field(cfg, k) for k in values}

    def check_schedule(cfg: Config, arm: str, values: Mapping[str, Any]) -> None:
        # Fails before anything runs, instead of once per run after pretraining.
        from toolkit.engine.schedules import finetune_phases

        f = cfg.finetune
        try:
            finetune_phases(
                f.schedule if arm == "pretrained" else f.schedule_scratch,
                f.steps,
                warmup_fraction=f.warmup_fraction,
                decoder_warmup_fraction=f.decoder_warmup_fraction,
            )
        except ConfigError as exc:
            text = " ".join([arm, _config_text(values)]).strip()
            raise ConfigError(f"{_where(spec.source)}combination {text}: {exc}") from None

    def combos(fields: Sequence[str]) -> list[dict[str, Any]]:
        grids = itertools.product(*(spec.axes[f] for f in fields))
        return [dict(zip(fields, values, strict=True)) for values in grids]

    pt_runs: list[Run] = []
    for raw in combos(pt_fields):
        cfg, values = build(raw, {})
        if spec.pretrain_data is not None and spec.pretrain_data.cache is not None:
            cfg = cfg.replace({"data.cache_dir": str(spec.pretrain_data.cache)})
        name = _shorten("pt_" + (_label(values) or "base"))
        pt_runs.append(Run(name, "pretrain", cfg, values, "pretrain", _config_text(values)))
    runs: list[Run] = list(pt_runs)

    scratch_fields = [f for f in pt_fields if _scratch_relevant(f)]
    for seed in spec.seeds:
        for ds in spec.datasets:
            manifest = ds.manifest_path(out)
            ds_over = {"data.finetune_manifest": str(manifest), "runtime.seed": seed}
            common: dict[str, Any] = {
                "dataset": ds.name,
                "seed": seed,
                "manifest": manifest,
                "split": ds.split,
            }
            if spec.scratch:
                for raw in combos([*scratch_fields, *ft_fields]):
                    cfg, values = build(raw, ds_over)
                    check_schedule(cfg, "scratch", values)
                    label = _label(values)
                    name = _shorten(
                        f"ft_{ds.name}_scratch{'_' + label if label else ''}_seed{seed}"
                    )
                    text = " ".join(["scratch", _config_text(values)]).strip()
                    runs.append(Run(name, "finetune", cfg, values, "scratch", text, **common))
            for pt in pt_runs:
                for raw_ft in combos(ft_fields):
                    cfg, values = build({**pt.values, **raw_ft}, ds_over)
                    check_schedule(cfg, "pretrained", values)
                    label = _label({k: values[k] for k in ft_fields})
                    name = _shorten(
                        f"ft_{ds.name}_{pt.name}{'_' + label if label else ''}_seed{seed}"
                    )
                    text = _config_text(values) or "pretrained"
                    runs.append(
                        Run(
                            name,
                            "finetune",
                            cfg,
                            values,
                            "pretrained",
                            text,
                            pretrain_run=pt.name,
                            **common,
                        )
                    )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(
            f"{_where(spec.source)}two runs would share the folder {dup!r} (an axis lists the "
            "same value twice, or two values look alike in names)"
        )
    return SweepPlan(spec=spec, out_dir=out, runs=tuple(runs))


def _config_text(values: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else format_value(v)

    return " ".join(f"{k}={show(v)}" for k, v in values.items())


# --------------------------------------------------------------------------------------------------
# Run state on disk


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_done(run_dir: Path) -> dict[str, Any] | None:
    """The ``done.json`` of a finished run, or None (missing or unreadable = not finished)."""
    try:
        data = json.loads((run_dir / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded attempt of a run (oldest first); a torn last line is ignored."""
    path = run_dir / ATTEMPTS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _append_attempt(run_dir: Path, record: Mapping[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    # One line per attempt; a line torn by a crash is skipped by read_attempts.
    with (run_dir / ATTEMPTS_FILE).open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def run_state(plan: SweepPlan, run: Run) -> str:
    """``done``, ``failed`` (last attempt raised), ``started`` (interrupted) or ``pending``."""
    run_dir = plan.run_dir(run)
    if read_done(run_dir) is not None:
        return "done"
    attempts = read_attempts(run_dir)
    if attempts:
        return "failed" if attempts[-1].get("outcome") == "failed" else "started"
    return "pending"


def check_existing_configs(plan: SweepPlan) -> None:
    """Refuse to continue in a folder whose runs were made from a different spec.

    Raises:
        ConfigError: a run folder's ``config.yaml`` differs from the planned config (the message
            names the run and the first differing fields).
    """
    from toolkit.config import from_dict

    for run in plan.runs:
        path = plan.run_dir(run) / CONFIG_FILE
        if not path.is_file():
            continue
        try:
            saved = from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path)).to_dict()
        except (yaml.YAMLError, ToolkitError):
            raise ConfigError(f"{path}: unreadable run config; delete the run folder") from None
        diffs = _diff(saved, run.config.to_dict())
        if diffs:
            raise ConfigError(
                f"{plan.run_dir(run)}: made with another config than this spec "
                f"({'; '.join(diffs[:3])}); use a new sweep folder or delete this run"
            )


def _diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Executing runs


class RunStopped(TrainingError):
    """A run returned before its last step (a STOP file): the sweep stops and can be resumed."""


#: ``executor(plan, run) -> info``: trains (and for fine-tuning evaluates) one run in
#: ``plan.run_dir(run)``; ``info`` may hold ``train_time_s``, ``eval_time_s``, ``num_params``.
RunExecutor = Callable[[SweepPlan, Run], Mapping[str, Any]]


def count_checkpoint_parameters(path: PathLike) -> int:
    """Number of weights in a checkpoint's network entries (``model`` or ``network_weights``).

    Tensors that share storage are counted once: dynamic-network-architectures registers each
    conv and norm under two names (``convs.0.conv`` and ``convs.0.all_modules.0``).
    """
    from toolkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    keys = ("model",) if "model" in state else ("network_weights", "extra_weights")
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for key in keys:
        for tensor in (state.get(key) or {}).values():
            ident = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if ident not in seen:
                seen.add(ident)
                total += int(tensor.numel())
    return total


def execute_run(plan: SweepPlan, run: Run, *, progress: bool = False) -> dict[str, Any]:
    """Run one sweep run with the toolkit: pretrain, or fine-tune and evaluate.

    An interrupted run continues from its ``latest`` checkpoint; a fine-tuning run whose training
    finished is only evaluated again. Evaluation writes
    ``RUN_DIR/evaluation/metrics.csv`` (one row per case x label).

    Returns:
        ``{"prep_time_s", "train_time_s", "eval_time_s", "num_params"}``: wall times of the
        preprocessing, training and evaluation calls of this attempt, and the weights of the
        trained network (pretraining: plus the S3D / token weights).

    Raises:
        RunStopped: training returned before its last step (``RUN_DIR/STOP``).
    """
    from toolkit.engine.checkpoint import checkpoint_path

    run_dir = plan.run_dir(run)
    final = checkpoint_path(run_dir, "final")
    resume = checkpoint_path(run_dir, "latest").is_file()
    info: dict[str, Any] = {"prep_time_s": 0.0, "train_time_s": 0.0, "eval_time_s": 0.0}
    if run.kind == "pretrain":
        from toolkit.pretrain import pretrain, resolve_pretrain_cache

        tick = time.perf_counter()
        resolve_pretrain_cache(run.config, run_dir)
        info["prep_time_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        pretrain(run.config, run_dir, resume=resume, progress=progress)
        info["train_time_s"] = time.perf_counter() - tick
        if not final.is_file():
            raise RunStopped(f"{run_dir}: pretraining stopped before its last step")
        info["num_params"] = count_checkpoint_parameters(final)
        return info

    from toolkit.evaluate import evaluate
    from toolkit.finetune import finetune, resolve_finetune_cache

    if not final.is_file():
        pretrained = plan.pretrained_checkpoint(run)
        tick = time.perf_counter()
        resolve_finetune_cache(run.config, run_dir)
        info["prep_time_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        finetune(run.config, run_dir, pretrained=pretrained, resume=resume, progress=progress)
        info["train_time_s"] = time.perf_counter() - tick
        if not final.is_file():
            raise RunStopped(f"{run_dir}: fine-tuning stopped before its last step")
    assert run.manifest is not None
    tick = time.perf_counter()
    evaluate(
        run_dir,
        run.manifest,
        split=run.split,
        run_name=run.name,
        out_dir=run_dir / EVAL_DIR,
        write_predictions=False,
        progress=progress,
    )
    info["eval_time_s"] = time.perf_counter() - tick
    info["num_params"] = count_checkpoint_parameters(final)
    return info


def prepare_data(plan: SweepPlan, *, progress: bool = True) -> None:
    """Write the spec's synthetic data sets into ``SWEEP_DIR/data`` (once; reused afterwards).

    Raises:
        ConfigError: a folder holds a synthetic set drawn with other settings.
    """
    from toolkit.data.synthetic import write_synthetic_dataset

    sets = [d.synthetic for d in plan.spec.datasets if d.synthetic is not None]
    if plan.spec.pretrain_data is not None and plan.spec.pretrain_data.synthetic is not None:
        sets.insert(0, plan.spec.pretrain_data.synthetic)
    for synth in sets:
        folder = synth.folder(plan.out_dir)
        settings = dataclasses.asdict(synth)
        marker = folder / "synthetic.json"
        manifest = folder / ("pretrain.yaml" if synth.subjects else "labelled.yaml")
        if marker.is_file() and manifest.is_file():
            if json.loads(marker.read_text()) != settings:
                raise ConfigError(
                    f"{folder}: holds a synthetic set with other settings than the spec "
                    f"({marker}); rename the data set or delete the folder"
                )
            continue
        write_synthetic_dataset(
            folder,
            synth.subjects,
            synth.labelled,
            synth.seed,
            lesions=synth.lesions,
            spacing_mm=synth.spacing_mm,
            test_fraction=synth.test_fraction,
            name=synth.name,
            progress=progress,
        )
        _write_atomic(marker, json.dumps(settings, indent=1))


@dataclass
class SweepReport:
    """What :func:`run_sweep` did.

    Attributes:
        out_dir: the sweep folder.
        completed: runs finished by this call.
        skipped: runs already finished before it.
        failed: runs that raised on every attempt of this call.
        blocked: fine-tuning runs not started because their pretraining run failed.
        stopped: the sweep stopped early (a STOP file); rerun to continue.
        wall_s: wall time of this call.
        results: the results table, if written.
    """

    out_dir: Path
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    stopped: bool = False
    wall_s: float = 0.0
    results: Path | None = None

    def lines(self) -> list[str]:
        """Human-readable summary."""
        out = [
            f"sweep {self.out_dir}: {len(self.completed)} run(s) finished now, "
            f"{len(self.skipped)} already done, {len(self.failed)} failed, "
            f"{len(self.blocked)} blocked ({self.wall_s:.1f} s)"
        ]
        if self.stopped:
            out.append("stopped early; run the same command again to continue")
        if self.failed or self.blocked:
            out.append(f"see {self.out_dir / FAILURES_FILE}")
        if self.results is not None:
            out.append(f"results: {self.results}")
        return out


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:500]


def write_status(plan: SweepPlan, blocked: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """Write ``status.csv`` (every run) and ``failures.csv`` (failed and blocked runs).

    Args:
        plan: the expanded sweep.
        blocked: run name -> reason, for runs not started because a dependency failed.

    Returns:
        The paths of the two tables.
    """
    import csv
    import io

    blocked = dict(blocked or {})
    columns = ["run", "kind", "arm", "dataset", "seed", "state", "attempts", "wall_s", "error"]
    rows = []
    for run in plan.runs:
        run_dir = plan.run_dir(run)
        attempts = read_attempts(run_dir)
        state = run_state(plan, run)
        error = next((a.get("error", "") for a in reversed(attempts) if a.get("error")), "")
        if state != "done" and run.name in blocked:
            state, error = "blocked", blocked[run.name]
        rows.append(
            {
                "run": run.name,
                "kind": run.kind,
                "arm": run.arm,
                "dataset": run.dataset or "",
                "seed": "" if run.seed is None else run.seed,
                "state": state,
                "attempts": len(attempts),
                "wall_s": round(sum(float(a.get("wall_s", 0.0)) for a in attempts), 3),
                "error": "" if state == "done" else error,
            }
        )
    paths = []
    for name, selected in (
        (STATUS_FILE, rows),
        (FAILURES_FILE, [r for r in rows if r["state"] in ("failed", "blocked")]),
    ):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(selected)
        path = plan.out_dir / name
        _write_atomic(path, buf.getvalue())
        paths.append(path)
    return paths[0], paths[1]


def _attempt(
    plan: SweepPlan, run: Run, executor: RunExecutor, number: int
) -> tuple[bool, dict[str, Any]]:
    run_dir = plan.run_dir(run)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    tick = time.perf_counter()
    record: dict[str, Any] = {"attempt": number, "started": started}
    try:
        info = dict(executor(plan, run))
    except RunStopped as exc:
        record.update(outcome="stopped", wall_s=time.perf_counter() - tick, error=str(exc))
        _append_attempt(run_dir, record)
        raise
    except KeyboardInterrupt:
        record.update(outcome="interrupted", wall_s=time.perf_counter() - tick)
        _append_attempt(run_dir, record)
        raise
    except Exception as exc:
        record.update(
            outcome="failed",
            wall_s=time.perf_counter() - tick,
            error=_error_text(exc),
            traceback=traceback.format_exc(limit=8),
        )
        _append_attempt(run_dir, record)
        return False, record
    record.update(outcome="ok", wall_s=time.perf_counter() - tick)
    _append_attempt(run_dir, record)
    return True, {**info, **record}


def run_sweep(
    spec: SweepSpec | PathLike,
    out_dir: PathLike,
    *,
    executor: RunExecutor | None = None,
    retries: int = 1,
    progress: bool = True,
    write_results: bool = True,
) -> SweepReport:
    """Run (or continue) a sweep: every run not yet done, pretraining first.

    A run that raises is retried ``retries`` times (resuming from its ``latest`` checkpoint when
    there is one), then recorded as failed; the sweep goes on with the other runs, and fine-tuning
    runs of a failed pretraining run are reported as blocked. Ctrl-C or a STOP file in a run folder
    stops the sweep after recording the attempt; rerunning continues where it stopped.

    Args:
        spec: a :class:`SweepSpec` or the path of a spec YAML.
        out_dir: the sweep folder (created).
        executor: runs one run (default :func:`execute_run`); tests pass a fake.
        retries: extra attempts per failing run in this call.
        progress: a progress bar over runs.
        write_results: collect ``results.csv`` at the end (:func:`toolkit.results.write_results`).

    Returns:
        A :class:`SweepReport`; ``status.csv`` and ``failures.csv`` are rewritten after every run.

    Raises:
        ConfigError: a bad spec, or a folder made from another spec.
    """
    from tqdm.auto import tqdm

    spec = spec if isinstance(spec, SweepSpec) else load_sweep_spec(spec)
    if isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"retries: must be >= 0, got {retries!r}")
    start = time.perf_counter()
    plan = expand_sweep(spec, out_dir)
    check_existing_configs(plan)
    out = plan.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / SPEC_FILE, yaml.safe_dump(spec.raw, sort_keys=False))
    _write_atomic(out / PLAN_FILE, json.dumps(plan.to_dict(), indent=1))
    report = SweepReport(out_dir=out)
    pending = [r for r in plan.runs if read_done(plan.run_dir(r)) is None]
    report.skipped = [r.name for r in plan.runs if r not in pending]
    blocked: dict[str, str] = {}
    run_one = executor if executor is not None else execute_run
    if pending:
        prepare_data(plan, progress=progress)
    bar = tqdm(
        total=len(plan.runs),
        initial=len(report.skipped),
        desc="sweep",
        unit="run",
        disable=not progress,
    )
    try:
        for run in pending:
            if run.pretrain_run is not None and read_done(plan.run_dir(run.pretrain_run)) is None:
                blocked[run.name] = f"pretraining run {run.pretrain_run} did not finish"
                report.blocked.append(run.name)
                bar.update()
                continue
            run_dir = plan.run_dir(run)
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(run.config, run_dir / CONFIG_FILE)
            bar.set_postfix_str(run.name, refresh=True)
            ok = False
            info: dict[str, Any] = {}
            previous = len(read_attempts(run_dir))
            for attempt in range(retries + 1):
                ok, info = _attempt(plan, run, run_one, previous + attempt + 1)
                if ok:
                    break
                bar.write(f"{run.name}: attempt {attempt + 1} failed: {info['error']}")
            if ok:
                attempts = read_attempts(run_dir)
                done = {
                    "run": run.name,
                    "kind": run.kind,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "attempts": len(attempts),
                    "wall_s": sum(float(a.get("wall_s", 0.0)) for a in attempts),
                    **{k: v for k, v in info.items() if k not in ("attempt", "started", "outcome")},
                }
                _write_atomic(run_dir / DONE_FILE, json.dumps(done, indent=1))
                report.completed.append(run.name)
            else:
                report.failed.append(run.name)
            bar.update()
            write_status(plan, blocked)
    except RunStopped as exc:
        report.stopped = True
        bar.write(str(exc))
    finally:
        bar.close()
        write_status(plan, blocked)
    if write_results:
        # results.py reads this module's folder layout, so it is imported here, not at the top.
        from toolkit.results import write_results as write_table

        report.results = write_table(out)
    report.wall_s = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------------------------------
# Dry run


@dataclass(frozen=True)
class RunEstimate:
    """A planned run with its state and estimated duration.

    Attributes:
        run: the run.
        state: ``done``, ``failed``, ``started`` or ``pending``.
        sec_per_step: measured seconds per training step (None: not measured).
        estimated_s: estimated training time (steps x sec_per_step, plus pretraining validation).
    """

    run: Run
    state: str
    sec_per_step: float | None
    estimated_s: float | None


def _step_key(cfg: Config, kind: str) -> str:
    """What a step's cost depends on: network, patch, batch, runtime and (pretraining) the MAE.

    The mask ratio is left out: dense and S3D steps compute on every voxel whatever the ratio.
    """
    d = cfg.to_dict()
    keep = {
        "model": d["model"],
        "patch": d["data"]["patch_size"],
        "batch": d["pretrain"]["batch_size"],
        "runtime": {k: v for k, v in d["runtime"].items() if k != "seed"},
        "optimizer": d["pretrain"]["optim"]["optimizer"],
    }
    if kind == "pretrain":
        keep["mask"] = {k: v for k, v in d["mask"].items() if k not in ("ratio", "ratio_range")}
    return json.dumps(keep, sort_keys=True)


def _proxy_config(run: Run) -> Config:
    """The pretraining-step config that is timed for a run.

    A fine-tuning step is timed as a dense MAE step of the same network at the fine-tuning batch
    size and optimiser: the same encoder-decoder forward and backward, without S3D's extra
    convolutions.
    """
    cfg = run.config
    if run.kind == "pretrain":
        return cfg
    return cfg.replace(
        {
            "mask.variant": "dense",
            "mask.input_mask_token": False,
            "pretrain.batch_size": cfg.finetune.batch_size,
            "pretrain.optim.optimizer": cfg.finetune.optim.optimizer,
        }
    )


def estimate_sweep(
    plan: SweepPlan,
    *,
    measure_steps: int = 2,
    step_timer: Callable[[Config, int], float] | None = None,
) -> list[RunEstimate]:
    """Every planned run with its state and an estimated training time.

    Times come from measuring ``measure_steps`` steps (after one warm-up step, on random
    in-memory volumes) once per distinct network / mask / patch / batch / runtime, with
    :func:`toolkit.bench.bench_pretrain`; fine-tuning steps are timed as dense MAE steps at the
    fine-tuning batch (see :func:`_proxy_config`). Pretraining validation is added as one forward
    pass (a third of a step) per validation batch; preprocessing, fine-tuning validation and the
    final evaluation are not included. ``measure_steps=0`` measures nothing.

    Args:
        plan: the expanded sweep.
        measure_steps: timed steps per distinct setting (0 = no estimate).
        step_timer: ``(config, steps) -> seconds per step``; default the benchmark above.
    """
    if step_timer is None:

        def step_timer(cfg: Config, steps: int) -> float:
            from toolkit.bench import bench_pretrain

            report = bench_pretrain(cfg, steps=steps, warmup=1, measure_data=False)
            return float(report.sec_per_step)

    measured: dict[str, float] = {}
    out = []
    for run in plan.runs:
        state = run_state(plan, run)
        sec = est = None
        if measure_steps > 0:
            proxy = _proxy_config(run)
            key = _step_key(proxy, run.kind)
            if key not in measured:
                measured[key] = step_timer(proxy, measure_steps)
            sec = measured[key]
            est = sec * run.steps
            if run.kind == "pretrain":
                p = run.config.pretrain
                passes = math.ceil(p.steps / p.val_every)
                est += passes * p.val_batches * sec / 3.0
        out.append(RunEstimate(run, state, sec, est))
    return out


def format_duration(seconds: float | None) -> str:
    """``75.2`` -> ``"1m15s"``; None -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_estimates(estimates: Sequence[RunEstimate], *, measure_steps: int) -> str:
    """The dry-run listing: one line per run, totals and how the time was estimated."""
    width = max((len(e.run.name) for e in estimates), default=3)
    lines = [f"{'run':<{width}}  {'kind':<8}  {'steps':>6}  {'estimate':>9}  state"]
    for e in estimates:
        lines.append(
            f"{e.run.name:<{width}}  {e.run.kind:<8}  {e.run.steps:>6}  "
            f"{format_duration(e.estimated_s):>9}  {e.state}"
        )
    todo = [e for e in estimates if e.state != "done"]
    n_pt = sum(e.run.kind == "pretrain" for e in estimates)
    lines.append(
        f"{len(estimates)} runs ({n_pt} pretraining, {len(estimates) - n_pt} fine-tuning), "
        f"{len(todo)} to do"
    )
    if measure_steps > 0:
        total = sum(e.estimated_s or 0.0 for e in todo)
        lines.append(
            f"estimated training time still to do: {format_duration(total)} (from {measure_steps} "
            "timed steps per distinct network/mask/patch/batch on this machine; fine-tuning "
            "timed as dense steps; preprocessing, fine-tuning validation and evaluation not "
            "included)"
        )
    else:
        lines.append("no time estimate (measure_steps=0)")
    return "\n".join(lines)


__all__ = [
    "DatasetSpec",
    "FINETUNE_SECTIONS",
    "PretrainData",
    "Run",
    "RunEstimate",
    "RunExecutor",
    "RunStopped",
    "SweepPlan",
    "SweepReport",
    "SweepSpec",
    "SyntheticData",
    "check_existing_configs",
    "count_checkpoint_parameters",
    "estimate_sweep",
    "execute_run",
    "expand_sweep",
    "format_duration",
    "format_estimates",
    "format_value",
    "get_field",
    "is_finetune_field",
    "load_sweep_spec",
    "parse_sweep_spec",
    "prepare_data",
    "read_attempts",
    "read_done",
    "run_state",
    "run_sweep",
    "write_status",
]
