"""One typed configuration for every stage: frozen dataclasses, presets, YAML, dotted overrides.

A :class:`Config` has one section per concern (``data``, ``mask``, ``model``, ``pretrain``,
``finetune``, ``evaluate``, ``runtime``); each stage has its own optimiser section
(``pretrain.optim``, ``finetune.optim``). Every field carries a help text and, where
it matters, a check; unknown keys and bad values raise :class:`~toolkit.errors.ConfigError` naming
the dotted field.

Two presets ship: ``paper`` (the defaults of Wald et al., CVPR 2025, see RECIPE.md) and ``tiny``
(runs in seconds on a CPU: small network, small patches, coarse spacing, few steps).

Example:
    >>> cfg = load_config("tiny", ["mask.ratio=0.6"])
    >>> cfg.mask.ratio
    0.6
    >>> load_config("tiny", ["mask.ratoi=0.6"])
    Traceback (most recent call last):
    ...
    toolkit.errors.ConfigError: mask.ratoi: unknown field (did you mean 'ratio'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from toolkit.config_legacy import migrate_config_dict, moved_field_error
from toolkit.errors import ConfigError

T = TypeVar("T")
Check = Callable[[Any], str | None]

# --------------------------------------------------------------------------------------------------
# Field helpers: every field has a help text and an optional check returning an error message.


def _f(default: Any, help: str, check: Check | None = None) -> Any:
    meta = {"help": help, "check": check}
    if isinstance(default, list | dict):
        raise TypeError("use tuples for sequence defaults so configs stay hashable and frozen")
    return field(default=default, metadata=meta)


def _between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if not (ok_lo and ok_hi and math.isfinite(v)):
            lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
            return f"must be in {lb}{lo}, {hi}{rb}, got {v!r}"
        return None

    return check


def _positive(v: Any) -> str | None:
    if isinstance(v, tuple):
        bad = [x for x in v if not (x > 0 and math.isfinite(x))]
        return f"every entry must be > 0, got {v!r}" if bad else None
    return None if (v > 0 and math.isfinite(v)) else f"must be > 0, got {v!r}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def _one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"

    return check


def _len3(v: Any) -> str | None:
    if len(v) != 3:
        return f"must have 3 entries (D, H, W), got {len(v)}"
    return _positive(v)


def _ratio_range(v: Any) -> str | None:
    if v is None:
        return None
    if len(v) != 2 or not (0.0 <= v[0] <= v[1] <= 1.0):
        return f"must be two numbers 0 <= low <= high <= 1, got {v!r}"
    return None


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class DataConfig:
    """Where data lives and how it is turned into patches."""

    pretrain_manifest: str = _f("", "manifest of the unlabelled pretraining set (YAML)")
    finetune_manifest: str = _f("", "manifest of the labelled set with train/test splits (YAML)")
    cache_dir: str = _f("", "root of preprocessed caches; one sub-folder per manifest")
    target_spacing_mm: tuple[float, float, float] = _f(
        (1.0, 1.0, 1.0), "voxel spacing after resampling, mm (paper: 1 mm isotropic)", _len3
    )
    patch_size: tuple[int, int, int] = _f(
        (160, 160, 160), "training patch size in voxels (paper: 160^3)", _len3
    )
    image_order: int = _f(3, "spline order for resampling images (3 = cubic)", _between(0, 5))
    brain_extraction: str = _f(
        "none",
        "brain mask before crop and z-score: none (data already skull-stripped) or otsu "
        "(toolkit.data.brain_mask, for raw heads); recorded in the cache plan",
        _one_of("none", "otsu"),
    )
    num_workers: int = _f(2, "data-loader worker processes", _non_negative)
    val_fraction: float = _f(
        0.1, "fraction of pretraining subjects held out for validation", _between(0, 0.5)
    )


@dataclass(frozen=True)
class MaskConfig:
    """Block masking for MAE pretraining (1 = visible, 0 = masked)."""

    ratio: float = _f(0.75, "fraction of blocks masked per sample (paper: 0.75)", _between(0, 1))
    ratio_range: tuple[float, float] | None = _f(
        None,
        "if set, draw the ratio per sample from U[low, high] (paper tie: 0.6-0.9)",
        _ratio_range,
    )
    block_size: int = _f(16, "edge of a mask block in voxels (paper: 16)", _positive)
    variant: str = _f(
        "s3d", "dense (input x mask) or s3d (sparse encoder)", _one_of("dense", "s3d")
    )
    input_mask_token: bool = _f(
        False, "dense only: fill masked input voxels with a learned token instead of zero"
    )
    sparse_conv: bool = _f(True, "s3d: re-mask conv outputs and use masked instance-norm stats")
    mask_token: bool = _f(True, "s3d: fill masked positions with a learned per-scale token")
    densify: bool = _f(True, "s3d: 3^3 densification conv at every scale but full resolution")


@dataclass(frozen=True)
class ModelConfig:
    """Network architecture (see ``toolkit.models.list_models``)."""

    name: str = _f(
        "resenc_l", "registered architecture name, e.g. resenc_l, resenc_tiny, segresnet"
    )
    in_channels: int = _f(1, "input channels (modalities)", _positive)
    deep_supervision: bool = _f(False, "fine-tuning: deep supervision loss on decoder outputs")
    init: str = _f(
        "auto",
        "weight init: auto (PyTorch defaults for pretraining as nnssl, nnU-Net's for fine-tuning "
        "networks), torch (PyTorch defaults) or nnunet (He normal, last norm of every residual "
        "block zeroed)",
        _one_of("auto", "torch", "nnunet"),
    )


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser of one stage: the fields both ``pretrain.optim`` and ``finetune.optim`` have.

    Each stage has its own section so that changing one stage's optimiser never changes the other.
    """

    optimizer: str = _f("sgd", "sgd (Nesterov) or adamw", _one_of("sgd", "adamw"))
    lr: float = _f(1e-2, "peak learning rate (paper pretraining: 1e-2)", _positive)
    momentum: float = _f(0.99, "SGD momentum (Nesterov)", _between(0, 1, hi_open=True))
    weight_decay: float = _f(3e-5, "weight decay", _non_negative)
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas")
    poly_exponent: float = _f(0.9, "exponent of the poly decay", _positive)
    grad_clip: float = _f(12.0, "max gradient norm (0 = off)", _non_negative)


@dataclass(frozen=True)
class PretrainOptimConfig(OptimConfig):
    """Pretraining optimiser and lr schedule (``pretrain.optim``)."""

    schedule: str = _f("poly", "poly, cosine or constant", _one_of("poly", "cosine", "constant"))
    warmup_steps: int = _f(0, "linear warm-up steps before the schedule", _non_negative)


@dataclass(frozen=True)
class FinetuneOptimConfig(OptimConfig):
    """Fine-tuning optimiser (``finetune.optim``); the lr shape is ``finetune.schedule``."""

    lr: float = _f(1e-3, "peak lr when starting from pretrained weights (paper: 1e-3)", _positive)
    lr_scratch: float = _f(1e-2, "peak lr when training from scratch (paper: 1e-2)", _positive)


@dataclass(frozen=True)
class PretrainConfig:
    """MAE pretraining run."""

    steps: int = _f(250_000, "optimiser steps (paper: 1000 epochs x 250)", _positive)
    batch_size: int = _f(6, "global batch size (split over DDP processes)", _positive)
    loss: str = _f(
        "mse_masked",
        "mse_masked (paper), mse_all or l1_masked",
        _one_of("mse_masked", "mse_all", "l1_masked"),
    )
    augment: bool = _f(True, "device-side spatial augmentation (rotation, scale, mirroring)")
    rotation_deg: float = _f(30.0, "max rotation per axis, degrees", _non_negative)
    scale_range: tuple[float, float] = _f((0.7, 1.4), "isotropic scale range")
    augment_prob: float = _f(0.2, "probability of rotation and of scaling", _between(0, 1))
    mirror: bool = _f(True, "random mirroring on all three axes")
    val_every: int = _f(1000, "steps between validation passes", _positive)
    val_batches: int = _f(4, "batches per validation pass", _positive)
    checkpoint_every: int = _f(1000, "steps between 'latest' checkpoints", _positive)
    snapshot_every: int = _f(5000, "steps between reconstruction snapshots", _positive)
    log_every: int = _f(50, "steps between metric log lines", _positive)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning for segmentation, pretrained or from scratch."""

    steps: int = _f(250_000, "optimiser steps (paper: 1000 epochs x 250)", _positive)
    batch_size: int = _f(2, "global batch size", _positive)
    schedule: str = _f(
        "sawtooth",
        "sawtooth, warmup_poly, frozen_encoder or none",
        _one_of("sawtooth", "warmup_poly", "frozen_encoder", "none"),
    )
    schedule_scratch: str = _f(
        "none",
        "schedule when training from scratch (paper baseline: none = nnU-Net's plain poly)",
        _one_of("sawtooth", "warmup_poly", "frozen_encoder", "none"),
    )
    warmup_fraction: float = _f(
        0.05, "whole-net warm-up as a fraction of steps (paper: 50 of 1000 epochs)", _between(0, 1)
    )
    decoder_warmup_fraction: float = _f(
        0.025,
        "sawtooth: decoder-only warm-up, then as long a decay (paper: 25 + 25 epochs)",
        _between(0, 0.5),
    )
    transfer_decoder: bool = _f(False, "also load pretrained decoder weights")
    foreground_fraction: float = _f(
        0.33, "share of patches centred on a foreground voxel", _between(0, 1)
    )
    augment: bool = _f(True, "segmentation augmentation (spatial + intensity)")
    val_every: int = _f(1000, "steps between validation Dice passes", _positive)
    checkpoint_every: int = _f(1000, "steps between 'latest' checkpoints", _positive)
    log_every: int = _f(50, "steps between metric log lines", _positive)
    num_train_cases: int = _f(0, "use only the first k training cases (0 = all)", _non_negative)
    train_subset_seed: int = _f(
        -1,
        "with num_train_cases: -1 keeps the first k training cases in manifest order; a seed "
        ">= 0 draws k training subjects at random (spread over subsets in label efficiency)",
    )
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)


@dataclass(frozen=True)
class EvaluateConfig:
    """Sliding-window inference and metrics."""

    overlap: float = _f(0.5, "sliding-window overlap", _between(0, 1, hi_open=True))
    mirror_tta: bool = _f(False, "average predictions over mirrored inputs")
    sw_batch_size: int = _f(2, "windows per forward pass", _positive)
    hd_percentile: float = _f(95.0, "Hausdorff distance percentile", _between(0, 100, lo_open=True))


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how computation runs (only toolkit.engine.runtime acts on this)."""

    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    precision: str = _f(
        "bf16",
        "bf16, fp16 (with grad scaler) or fp32; CPU always runs fp32",
        _one_of("bf16", "fp16", "fp32"),
    )
    compile: bool = _f(False, "torch.compile the network")
    channels_last: bool = _f(False, "channels-last-3d memory format on CUDA")
    seed: int = _f(0, "seed for weights, sampling, masks and augmentation")
    threads: int = _f(
        0,
        "intra-op CPU threads per process; 0 = chosen from the cores this process may use "
        "(affinity, cgroup quota, busy cores, loader workers, processes per machine)",
        _non_negative,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration of a run. Saved inside every checkpoint and run folder."""

    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    preset: str = _f("paper", "name of the preset this config started from")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
        return _to_plain(dataclasses.asdict(self))

    def replace(self, overrides: Sequence[str] | Mapping[str, Any]) -> Config:
        """Return a copy with dotted overrides applied (``["mask.ratio=0.6"]`` or a mapping)."""
        return apply_overrides(self, overrides)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Presets

PAPER = Config()

# The paper's mask geometry at a quarter of its size: 160^3 patch / 16^3 blocks / total stride 32
# becomes 40^3 / 4^3 / 8 (resenc_tiny): 10 blocks per axis and a 5^3 bottleneck coarser than the
# blocks, so it runs dense as in the paper (48^3 patches of 8^3 blocks masked the bottleneck too).
TINY = Config(
    preset="tiny",
    data=DataConfig(target_spacing_mm=(2.5, 2.5, 2.5), patch_size=(40, 40, 40), num_workers=0),
    mask=MaskConfig(block_size=4),
    model=ModelConfig(name="resenc_tiny"),
    pretrain=PretrainConfig(
        steps=40,
        batch_size=2,
        val_every=20,
        val_batches=2,
        checkpoint_every=20,
        snapshot_every=20,
        log_every=5,
    ),
    finetune=FinetuneConfig(
        steps=40,
        batch_size=2,
        val_every=20,
        checkpoint_every=20,
        log_every=5,
    ),
    evaluate=EvaluateConfig(sw_batch_size=1),
    runtime=RuntimeConfig(precision="fp32"),
)

PRESETS: dict[str, Config] = {"paper": PAPER, "tiny": TINY}


# --------------------------------------------------------------------------------------------------
# Building and validating from plain data


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if origin is tuple:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"{name}: expected a list of {len(args)} values, got {value!r}")
        if len(value) != len(args):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads "3e-3" as a string; every user writes lrs that way.
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{name}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {name}")


def _unknown(name: str, key: str, known: Sequence[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{name}: unknown field{extra}")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, base: T) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise _unknown(name, str(key), list(fields))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, name, getattr(base, key))  # type: ignore[arg-type]
        else:
            coerced = _coerce(value, tp, name)
            check = fields[key].metadata.get("check")
            problem = check(coerced) if (check and coerced is not None) else None
            if problem:
                raise ConfigError(f"{name}: {problem}")
            values[key] = coerced
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


_log = logging.getLogger(__name__)


def from_dict(
    data: Mapping[str, Any], base: Config | None = None, *, source: str = "config"
) -> Config:
    """Build a :class:`Config` from a nested mapping, on top of ``base`` (default: ``paper``).

    A ``preset`` key selects the base preset when ``base`` is not given. Configs saved with the
    old shared ``optim`` section are migrated (:func:`migrate_config_dict`) and one line saying
    so is logged (``source`` names the file or run in that line).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping, got {data!r}")
    data, note = migrate_config_dict(data)
    if note:
        _log.warning("%s: old config layout migrated: %s", source, note)
    if base is None:
        preset = data.get("preset", "paper")
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        base = PRESETS[preset]
    cfg = _build(Config, data, "", base)
    _check_cross_fields(cfg)
    return cfg


def _check_cross_fields(cfg: Config) -> None:
    if cfg.mask.variant == "s3d" and cfg.mask.input_mask_token:
        raise ConfigError("mask.input_mask_token: only applies to mask.variant=dense")
    lo, hi = cfg.pretrain.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(
            f"pretrain.scale_range: need 0 < low <= high, got {cfg.pretrain.scale_range}"
        )


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"mask.ratio=0.6"`` into ``("mask.ratio", 0.6)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"{text}: an override must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse value {raw!r} ({exc.__class__.__name__})") from None
    return key.strip(), value


def apply_overrides(cfg: Config, overrides: Sequence[str] | Mapping[str, Any]) -> Config:
    """Apply dotted overrides to ``cfg`` and validate them.

    Args:
        cfg: the config to start from.
        overrides: ``["mask.ratio=0.6", "model.name=resenc_m"]`` or ``{"mask.ratio": 0.6}``.
    """
    pairs = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    nested: dict[str, Any] = {}
    for key, value in pairs:
        legacy = moved_field_error(key)
        if legacy is not None:
            raise legacy
        parts = key.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a section")
        node[parts[-1]] = value
    cfg = _build(Config, nested, "", cfg)
    _check_cross_fields(cfg)
    return cfg


def load_config(
    preset_or_path: str | os.PathLike[str] = "paper",
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> Config:
    """Load a preset name (``tiny``, ``paper``) or a YAML file, then apply dotted overrides."""
    key = str(preset_or_path)
    if key in PRESETS:
        cfg = PRESETS[key]
    else:
        path = Path(key)
        if not path.is_file():
            raise ConfigError(
                f"{key}: neither a preset ({', '.join(PRESETS)}) nor an existing YAML file"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        cfg = from_dict(data, source=str(path))
    return apply_overrides(cfg, overrides) if overrides else cfg


def save_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write ``cfg`` as YAML (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


def describe(cls: type[Any] = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """List ``(dotted name, default, help)`` for every field, for docs and UIs."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], name + ".")
        else:
            rows.append((name, f.default, f.metadata.get("help", "")))
    return rows
