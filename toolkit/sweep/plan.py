"""Plan expansion: a spec becomes its runs, with deterministic folder names and full configs.

Run names are built from the axis values::

    SWEEP_DIR/pt_mask.ratio=0.6_mask.variant=s3d/             a pretraining run
    SWEEP_DIR/ft_<dataset>_pt_mask.ratio=0.6_mask.variant=s3d_seed0/   fine-tuning + evaluation
    SWEEP_DIR/ft_<dataset>_scratch_seed0/                     the from-scratch baseline

A fine-tuning run of pretrained weights depends on its pretraining run (``Run.pretrain_run``);
every executor starts it only once that run has finished.

Example:
    >>> plan = expand_sweep(load_sweep_spec("spec.yaml"), "sweeps/x")  # doctest: +SKIP
    >>> [r.name for r in plan.pretrain_runs]  # doctest: +SKIP
    ['pt_mask.ratio=0.6', 'pt_mask.ratio=0.75']
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.config import Config, apply_overrides
from toolkit.errors import ConfigError
from toolkit.sweep.layout import format_value
from toolkit.sweep.spec import SweepSpec, get_field, is_scratch_field, where_prefix

PathLike = str | os.PathLike[str]

_MAX_NAME = 180  # run folder names stay well under the usual 255-byte file-name limit


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
                f"{where_prefix(spec.source)}combination {_config_text(values)}: {exc}"
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
            raise ConfigError(f"{where_prefix(spec.source)}combination {text}: {exc}") from None

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

    scratch_fields = [f for f in pt_fields if is_scratch_field(f)]
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
            f"{where_prefix(spec.source)}two runs would share the folder {dup!r} (an axis lists "
            "the same value twice, or two values look alike in names)"
        )
    return SweepPlan(spec=spec, out_dir=out, runs=tuple(runs))


def _config_text(values: Mapping[str, Any]) -> str:
    def show(v: Any) -> str:
        return v if isinstance(v, str) else format_value(v)

    return " ".join(f"{k}={show(v)}" for k, v in values.items())


__all__ = ["Run", "SweepPlan", "expand_sweep"]
