"""Pretrained weights into a segmentation network, a transfer report, and nnssl / nnU-Net export.

Transfer follows the paper (RECIPE.md "Fine-tuning") and nnssl's ``load_pretrained_weights``:
the encoder stem and stages (``encoder.stem.*``, ``encoder.stages.*``) are copied by name,
optionally the decoder too (``finetune.transfer_decoder``), never the 1x1x1 segmentation heads
(``decoder.seg_layers.*``: the class count differs from the reconstruction's). Shapes must match
exactly; the one adaptation is the input projection: a stem pretrained on 1 channel fine-tunes on
C channels by repeating its weight C times along the input axis and dividing by C, so a C-channel
input of identical channels gives the pretrained stem's output.

Two source formats are read:

* a toolkit checkpoint (``RUN_DIR/checkpoints/*.pt`` of ``mae3d pretrain``): ``config``, ``plan``
  and ``network_weights`` (the plain network's state dict, nnU-Net keys; the S3D extras in
  ``extra_weights`` are never transferred) — or ``model`` of a fine-tuning run;
* an nnssl checkpoint: ``network_weights`` and ``nnssl_adaptation_plan`` (see RECIPE.md
  "Checkpoint interoperability"), as written by nnssl or by :func:`export_checkpoint`;
* a bare ``{"network_weights": ...}`` file as nnU-Net's ``-pretrained_weights`` takes.

``dynamic-network-architectures`` registers modules twice (``conv`` and ``all_modules.0``; the
encoder again under ``decoder.encoder``), so a state dict repeats tensors under alias keys. Reports
list each tensor once, under the first key ``state_dict()`` gives it.

Example:
    >>> from toolkit.config import load_config
    >>> report = inspect_transfer("run/checkpoints/final.pt", load_config("tiny"))  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pydoc
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.config import Config, from_dict
from toolkit.errors import ConfigError, DataError, ToolkitError, TrainingError

PathLike = str | os.PathLike[str]

#: Where nnssl / dynamic-network-architectures keep the parts of a ResidualEncoderUNet.
KEY_TO_ENCODER = "encoder.stages"
KEY_TO_STEM = "encoder.stem"
KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
DECODER_PREFIX = "decoder."
#: Never transferred: the 1x1x1 output heads (as nnU-Net's ``load_pretrained_weights`` skips).
SEG_HEAD_MARKER = ".seg_layers."
#: nnssl trains 250 iterations per epoch; exported ``current_epoch`` counts in those units.
NNSSL_STEPS_PER_EPOCH = 250
#: Name of the single configuration written into an exported adaptation plan's pretrain plan.
EXPORT_CONFIGURATION = "mae3d"
EXPORT_FORMATS = ("nnssl", "nnunet")


# --------------------------------------------------------------------------------------------------
# Reading pretraining checkpoints


@dataclass(frozen=True)
class PretrainedWeights:
    """Network weights and what is known about how they were pretrained.

    Attributes:
        path: the checkpoint file.
        source_format: ``"mae3d"`` (toolkit checkpoint), ``"nnssl"`` or ``"nnunet"`` (weights only).
        state_dict: plain-network weights (nnU-Net keys, no wrapper prefixes).
        model_name: toolkit registry name of the pretrained network, if known.
        arch_kwargs: ``ResidualEncoderUNet`` kwargs in nnU-Net plans format, if known.
        in_channels: input channels of the pretrained stem.
        patch_size: (3,) pretraining patch size in voxels (cache axis order), if known.
        spacing_mm: (3,) pretraining voxel spacing in mm (cache axis order), if known.
        key_to_encoder: state-dict prefix of the encoder stages.
        key_to_stem: state-dict prefix of the stem.
        keys_to_in_proj: module keys of the input projection (its weight is channel-adapted).
        step: optimiser step of the checkpoint, if known.
    """

    path: Path
    source_format: str
    state_dict: Mapping[str, torch.Tensor]
    model_name: str | None = None
    arch_kwargs: Mapping[str, Any] | None = None
    in_channels: int = 1
    patch_size: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    key_to_encoder: str = KEY_TO_ENCODER
    key_to_stem: str = KEY_TO_STEM
    keys_to_in_proj: tuple[str, ...] = KEYS_TO_IN_PROJ
    step: int | None = None


def read_pretrained(path: PathLike) -> PretrainedWeights:
    """Read a toolkit or nnssl pretraining checkpoint (``weights_only=True``).

    Args:
        path: ``RUN_DIR/checkpoints/{best,final,latest}.pt`` of ``mae3d pretrain``, or an nnssl /
            exported checkpoint with ``network_weights`` and ``nnssl_adaptation_plan``.

    Raises:
        DataError: missing or corrupt file, or neither format.
    """
    from toolkit.engine.checkpoint import clean_state_dict, load_checkpoint

    path = Path(path)
    state = load_checkpoint(path)
    if "nnssl_adaptation_plan" in state:
        if "network_weights" not in state:
            raise DataError(f"{path}: nnssl_adaptation_plan without network_weights")
        return _read_nnssl(path, state, clean_state_dict(state["network_weights"]))
    if "config" in state:
        # Pretraining stores the plain network as network_weights (S3D extras apart, never
        # transferred); a fine-tuning checkpoint stores its network as model.
        for key in ("network_weights", "model"):
            if key in state:
                return _read_toolkit(path, state, clean_state_dict(state[key]))
    if "network_weights" in state:
        return _read_bare(path, clean_state_dict(state["network_weights"]))
    raise DataError(
        f"{path}: neither a toolkit checkpoint (config + network_weights) nor an nnssl / nnU-Net "
        f"one (network_weights); keys: {', '.join(sorted(state)[:8])}"
    )


def _read_bare(path: Path, weights: dict[str, torch.Tensor]) -> PretrainedWeights:
    """nnU-Net ``-pretrained_weights`` style: weights only, nothing about how they were trained."""
    return PretrainedWeights(
        path=path,
        source_format="nnunet",
        state_dict=weights,
        in_channels=_stem_in_channels(weights, KEYS_TO_IN_PROJ, 1),
    )


def _read_toolkit(
    path: Path, state: Mapping[str, Any], weights: dict[str, torch.Tensor]
) -> PretrainedWeights:
    from toolkit.models import model_info

    try:
        cfg = from_dict(state["config"], source=str(path))
    except ConfigError as exc:
        raise DataError(f"{path}: the stored config is not valid here ({exc})") from None
    info = model_info(cfg.model.name)
    plan = state.get("plan") or {}
    spacing = plan.get("target_spacing_mm", cfg.data.target_spacing_mm)
    return PretrainedWeights(
        path=path,
        source_format="mae3d",
        state_dict=weights,
        model_name=cfg.model.name,
        arch_kwargs=info.get("arch_kwargs"),
        in_channels=_stem_in_channels(weights, KEYS_TO_IN_PROJ, cfg.model.in_channels),
        patch_size=_int3(cfg.data.patch_size),
        spacing_mm=_float3(spacing),
        step=int(state["step"]) if "step" in state else None,
    )


def _read_nnssl(
    path: Path, state: Mapping[str, Any], weights: dict[str, torch.Tensor]
) -> PretrainedWeights:
    plan = state.get("nnssl_adaptation_plan")
    if not isinstance(plan, Mapping):
        raise DataError(f"{path}: network_weights without an nnssl_adaptation_plan")
    arch = plan.get("architecture_plans") or {}
    configurations = (plan.get("pretrain_plan") or {}).get("configurations") or {}
    first: Mapping[str, Any] = {}
    if isinstance(configurations, Mapping) and configurations:
        first = next(iter(configurations.values())) or {}
    # nnssl / nnU-Net list spacing and patch size in their (z, y, x) array order; the cache grid
    # is (x, y, z) (see _nnunet_order), so both are reversed on the way in.
    patch = first.get("patch_size")
    spacing = first.get("spacing")
    in_proj = tuple(plan.get("keys_to_in_proj") or KEYS_TO_IN_PROJ)
    meta = state.get("mae3d")
    toolkit_meta: Mapping[str, Any] = meta if isinstance(meta, Mapping) else {}
    return PretrainedWeights(
        path=path,
        source_format="nnssl",
        state_dict=weights,
        model_name=toolkit_meta.get("model_name"),
        arch_kwargs=arch.get("arch_kwargs"),
        in_channels=_stem_in_channels(
            weights, in_proj, int(plan.get("pretrain_num_input_channels", 1))
        ),
        patch_size=None if not patch else _int3(list(patch)[::-1]),
        spacing_mm=None if not spacing or None in spacing else _float3(list(spacing)[::-1]),
        key_to_encoder=str(plan.get("key_to_encoder", KEY_TO_ENCODER)),
        key_to_stem=str(plan.get("key_to_stem", KEY_TO_STEM)),
        keys_to_in_proj=in_proj,
        step=toolkit_meta.get("step"),
    )


def _stem_in_channels(
    weights: Mapping[str, torch.Tensor], keys_to_in_proj: Sequence[str], default: int
) -> int:
    for key in keys_to_in_proj:
        w = weights.get(f"{key}.weight")
        if w is not None and w.ndim >= 2:
            return int(w.shape[1])
    return int(default)


def _int3(v: Sequence[Any]) -> tuple[int, int, int]:
    a, b, c = (int(x) for x in v)
    return a, b, c


def _float3(v: Sequence[Any]) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c


# --------------------------------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class TransferReport:
    """What loading pretrained weights into a segmentation network does (or would do).

    Attributes:
        source: checkpoint path.
        source_format: ``mae3d`` or ``nnssl``.
        source_architecture: description of the pretrained network.
        target_architecture: description of the fine-tuning network.
        architecture_match: the pretrained and target networks have the same topology (channels in
            and out aside); None when the source does not say (judge by the key lists then).
        scope: state-dict prefixes that are transferred.
        loaded: keys copied (each tensor once).
        missing: keys of the target in scope that the source lacks.
        unexpected: keys of the source in scope that the target lacks.
        shape_mismatched: ``(key, source shape, target shape)`` of keys that cannot be copied.
        not_transferred: number of source tensors outside the scope (decoder, heads), left alone.
        channel_adaptation: how the input projection was adapted, or None.
        source_in_channels: input channels of the pretrained stem.
        target_in_channels: input channels of the target network.
        pretrain_patch_size: (3,) voxels, if known.
        finetune_patch_size: (3,) voxels.
        pretrain_spacing_mm: (3,) mm, if known.
        finetune_spacing_mm: (3,) mm.
        notes: differences worth reading (patch size, spacing).
    """

    source: str
    source_format: str
    source_architecture: str
    target_architecture: str
    architecture_match: bool | None
    scope: tuple[str, ...]
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    not_transferred: int
    channel_adaptation: str | None
    source_in_channels: int
    target_in_channels: int
    pretrain_patch_size: tuple[int, int, int] | None
    finetune_patch_size: tuple[int, int, int]
    pretrain_spacing_mm: tuple[float, float, float] | None
    finetune_spacing_mm: tuple[float, float, float]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when every key in scope can be loaded: nothing missing, unexpected or mismatched."""
        return (
            bool(self.loaded)
            and not self.missing
            and not self.unexpected
            and not self.shape_mismatched
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["shape_mismatched"] = [
            {"key": k, "source": list(s), "target": list(t)} for k, s, t in self.shape_mismatched
        ]
        return data

    def format(self, max_keys: int = 20) -> str:
        """Human-readable report; long key lists are cut after ``max_keys`` entries."""

        def keys(title: str, items: Sequence[str]) -> list[str]:
            out = [f"  {title}: {len(items)}"]
            out += [f"    {k}" for k in items[:max_keys]]
            if len(items) > max_keys:
                out.append(f"    ... and {len(items) - max_keys} more")
            return out

        match = {True: "yes", False: "NO", None: "unknown (the source does not describe it)"}
        lines = [
            f"Transfer report: {self.source} ({self.source_format})",
            f"  status: {'OK' if self.ok else 'INCOMPATIBLE'}",
            f"  pretrained: {self.source_architecture}",
            f"  target:     {self.target_architecture}",
            f"  architecture match: {match[self.architecture_match]}",
            f"  transferred parts: {', '.join(self.scope)}",
            f"  loaded: {len(self.loaded)} tensors",
        ]
        lines += keys("missing in checkpoint", self.missing)
        lines += keys("unexpected in checkpoint", self.unexpected)
        lines.append(f"  shape-mismatched: {len(self.shape_mismatched)}")
        lines += [
            f"    {k}: checkpoint {tuple(s)} vs network {tuple(t)}"
            for k, s, t in self.shape_mismatched[:max_keys]
        ]
        if len(self.shape_mismatched) > max_keys:
            lines.append(f"    ... and {len(self.shape_mismatched) - max_keys} more")
        lines.append(f"  left out (decoder / heads / not in scope): {self.not_transferred} tensors")
        lines.append(
            f"  input channels: {self.source_in_channels} -> {self.target_in_channels}"
            + (f" ({self.channel_adaptation})" if self.channel_adaptation else "")
        )
        lines.append(
            f"  patch size: pretrain {_fmt(self.pretrain_patch_size)} / "
            f"fine-tune {_fmt(self.finetune_patch_size)}"
        )
        lines.append(
            f"  spacing mm: pretrain {_fmt(self.pretrain_spacing_mm)} / "
            f"fine-tune {_fmt(self.finetune_spacing_mm)}"
        )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Sequence[Any] | None) -> str:
    if v is None:
        return "unknown"
    return "x".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)


# --------------------------------------------------------------------------------------------------
# Planning and applying a transfer


def canonical_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Group alias keys: first key of every distinct tensor -> all keys that share its storage.

    Args:
        state_dict: a module's ``state_dict()`` (aliases share storage there).

    Returns:
        Ordered mapping from canonical key to ``[canonical key, alias, ...]``.
    """
    groups: dict[str, list[str]] = {}
    seen: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    for key, t in state_dict.items():
        ident = (
            int(t.untyped_storage().data_ptr()),
            int(t.storage_offset()),
            tuple(int(s) for s in t.shape),
            tuple(int(s) for s in t.stride()),
        )
        if t.numel() > 0 and ident in seen:
            groups[seen[ident]].append(key)
        else:
            seen[ident] = key
            groups[key] = [key]
    return groups


def transfer_scope(
    key_to_stem: str = KEY_TO_STEM,
    key_to_encoder: str = KEY_TO_ENCODER,
    *,
    decoder: bool = False,
) -> tuple[str, ...]:
    """State-dict prefixes to transfer: stem and encoder stages, plus the decoder if asked."""
    scope = (key_to_stem + ".", key_to_encoder + ".")
    return scope + ((DECODER_PREFIX,) if decoder else ())


def _in_scope(key: str, scope: Sequence[str]) -> bool:
    return key.startswith(tuple(scope)) and SEG_HEAD_MARKER not in key


def _describe_source(src: PretrainedWeights) -> str:
    parts = [src.model_name or "unnamed network"]
    if src.arch_kwargs:
        ak = src.arch_kwargs
        parts.append(
            f"features {tuple(ak.get('features_per_stage', ()))}, "
            f"blocks {tuple(ak.get('n_blocks_per_stage', ()))}"
        )
    parts.append(f"{src.in_channels} input channel(s)")
    if src.step is not None:
        parts.append(f"step {src.step}")
    return ", ".join(parts)


def _describe_target(cfg: Config, num_classes: int) -> str:
    from toolkit.models import model_info

    info = model_info(cfg.model.name)
    text = f"{cfg.model.name}, features {tuple(info['features'])}"
    if "n_blocks_per_stage" in info:
        text += f", blocks {tuple(info['n_blocks_per_stage'])}"
    return text + f", {cfg.model.in_channels} input channel(s), {num_classes} classes"


def _normalise_arch(kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """arch_kwargs with class paths resolved to ``module.Class`` and sequences as lists."""
    if kwargs is None:
        return None

    def norm(v: Any) -> Any:
        if isinstance(v, str) and "." in v:
            located = pydoc.locate(v)
            if isinstance(located, type):
                return f"{located.__module__}.{located.__qualname__}"
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if isinstance(v, Mapping):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    return {k: norm(v) for k, v in kwargs.items()}


def _architecture_match(src: PretrainedWeights, cfg: Config) -> bool | None:
    from toolkit.models import model_info

    target = _normalise_arch(model_info(cfg.model.name).get("arch_kwargs"))
    source = _normalise_arch(src.arch_kwargs)
    if source is None or target is None:
        if src.model_name is not None:
            return src.model_name == cfg.model.name
        return None
    return source == target


def plan_transfer(
    network: nn.Module,
    source: PretrainedWeights,
    cfg: Config,
    *,
    num_classes: int,
) -> tuple[TransferReport, dict[str, torch.Tensor]]:
    """Compare ``source`` with ``network`` and prepare the tensors to copy, without copying.

    Args:
        network: the segmentation network (plain, unwrapped), freshly built.
        source: from :func:`read_pretrained`.
        cfg: the fine-tuning config (model, data patch size and spacing, finetune.transfer_decoder).
        num_classes: output classes of ``network`` (for the report).

    Returns:
        The report and ``{target key: tensor}`` for every key that would be loaded (channel
        adaptation already applied).
    """
    target_sd = network.state_dict()
    groups = canonical_keys(target_sd)
    alias_of = {alias: canon for canon, aliases in groups.items() for alias in aliases}
    scope = transfer_scope(
        source.key_to_stem, source.key_to_encoder, decoder=cfg.finetune.transfer_decoder
    )
    target_in = int(cfg.model.in_channels)
    in_proj_weights = {f"{k}.weight" for k in source.keys_to_in_proj}

    loaded: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []
    adaptation: str | None = None
    for canon, aliases in groups.items():
        if not _in_scope(canon, scope):
            continue
        found = next((a for a in aliases if a in source.state_dict), None)
        if found is None:
            missing.append(canon)
            continue
        value = source.state_dict[found]
        want = tuple(target_sd[canon].shape)
        if set(aliases) & in_proj_weights and value.ndim >= 2 and value.shape[1] != want[1]:
            if (
                value.shape[1] == 1
                and tuple(value.shape[2:]) == want[2:]
                and value.shape[0] == want[0]
            ):
                value = value.repeat(1, want[1], *([1] * (value.ndim - 2))) / want[1]
                adaptation = (
                    f"pretrained 1-channel stem repeated over {want[1]} channels and divided "
                    f"by {want[1]}"
                )
        if tuple(value.shape) != want:
            mismatched.append((canon, tuple(int(s) for s in value.shape), want))
            continue
        loaded[canon] = value

    # Source aliases collapse too, so a missing block is listed once per tensor, not per alias.
    unexpected = [
        k for k in canonical_keys(source.state_dict) if _in_scope(k, scope) and k not in alias_of
    ]
    # Count each source tensor once: aliases of the target's own keys collapse to one.
    source_canon = {alias_of.get(k, k) for k in source.state_dict}
    in_scope_canon = {alias_of.get(k, k) for k in source.state_dict if _in_scope(k, scope)}
    not_transferred = len(source_canon - in_scope_canon)

    notes: list[str] = []
    ft_patch = _int3(cfg.data.patch_size)
    ft_spacing = _float3(cfg.data.target_spacing_mm)
    if source.patch_size is not None and source.patch_size != ft_patch:
        notes.append(
            f"patch size differs from pretraining ({_fmt(source.patch_size)} -> {_fmt(ft_patch)}); "
            "fine for a CNN, but receptive-field statistics change"
        )
    if source.spacing_mm is not None and any(
        abs(a - b) > 1e-6 for a, b in zip(source.spacing_mm, ft_spacing, strict=True)
    ):
        notes.append(
            f"spacing differs from pretraining ({_fmt(source.spacing_mm)} mm -> "
            f"{_fmt(ft_spacing)} mm); structures appear at another scale than the encoder learned"
        )
    if source.in_channels not in (1, target_in):
        notes.append(
            f"the checkpoint has a {source.in_channels}-channel stem; only a 1-channel stem can be "
            f"adapted to {target_in} channels"
        )
    report = TransferReport(
        source=str(source.path),
        source_format=source.source_format,
        source_architecture=_describe_source(source),
        target_architecture=_describe_target(cfg, num_classes),
        architecture_match=_architecture_match(source, cfg),
        scope=tuple(p.rstrip(".") for p in scope),
        loaded=tuple(loaded),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        shape_mismatched=tuple(mismatched),
        not_transferred=not_transferred,
        channel_adaptation=adaptation,
        source_in_channels=source.in_channels,
        target_in_channels=target_in,
        pretrain_patch_size=source.patch_size,
        finetune_patch_size=ft_patch,
        pretrain_spacing_mm=source.spacing_mm,
        finetune_spacing_mm=ft_spacing,
        notes=tuple(notes),
    )
    return report, loaded


def load_pretrained(
    network: nn.Module,
    source: PretrainedWeights | PathLike,
    cfg: Config,
    *,
    num_classes: int,
    strict: bool = True,
) -> TransferReport:
    """Copy pretrained stem + encoder (+ decoder) weights into ``network`` in place.

    Args:
        network: plain (unwrapped) segmentation network built from ``cfg``.
        source: a :class:`PretrainedWeights` or a checkpoint path.
        cfg: the fine-tuning config.
        num_classes: output classes of ``network``.
        strict: refuse (raise) unless the report is ``ok``; with False, copy what fits.

    Returns:
        The :class:`TransferReport`.

    Raises:
        TrainingError: ``strict`` and some key in scope is missing, unexpected or mismatched (the
            message is the full report).
    """
    src = source if isinstance(source, PretrainedWeights) else read_pretrained(source)
    _require_transferable(network, cfg)
    report, tensors = plan_transfer(network, src, cfg, num_classes=num_classes)
    if strict and not report.ok:
        raise TrainingError(
            "pretrained weights do not fit the fine-tuning network:\n" + report.format()
        )
    target_sd = network.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            # state_dict() tensors share storage with the parameters (and their aliases).
            target_sd[key].copy_(value.to(dtype=target_sd[key].dtype))
    return report


def inspect_transfer(
    source: PretrainedWeights | PathLike, cfg: Config, *, num_classes: int | None = None
) -> TransferReport:
    """The transfer report for fine-tuning ``cfg`` from ``source``, without training anything.

    Builds the segmentation network of ``cfg`` on the CPU (the class count only affects the heads,
    which are never transferred). Backs ``mae3d check-transfer CKPT CONFIG``.

    Args:
        source: checkpoint path or :class:`PretrainedWeights`.
        cfg: fine-tuning config.
        num_classes: classes of the target (default: from ``cfg.data.finetune_manifest``'s labels,
            else 2).
    """
    from toolkit.models import build_segmentation_model

    src = source if isinstance(source, PretrainedWeights) else read_pretrained(source)
    if num_classes is None:
        num_classes = _num_classes_from_config(cfg)
    network = build_segmentation_model(cfg, num_classes)
    _require_transferable(network, cfg)
    report, _ = plan_transfer(network, src, cfg, num_classes=num_classes)
    return report


def _num_classes_from_config(cfg: Config) -> int:
    if cfg.data.finetune_manifest:
        from toolkit.data.manifest import load_manifest

        m = load_manifest(cfg.data.finetune_manifest)
        if m.labels:
            return max(m.labels) + 1
    return 2


def _require_transferable(network: nn.Module, cfg: Config) -> None:
    if not (hasattr(network, "encoder") and hasattr(network, "decoder")):
        raise ConfigError(
            f"model.name: {cfg.model.name} has no encoder/decoder split in nnU-Net layout; "
            "transfer of pretrained weights is implemented for the ResEnc family (resenc_*)"
        )


# --------------------------------------------------------------------------------------------------
# Export


def nnssl_arch_kwargs(arch_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``arch_kwargs`` and ``arch_kwargs_requiring_import`` exactly as nnssl serialises them.

    nnssl's ``DynamicArchitecturePlans.serialize`` writes classes as ``module.Class`` of their
    defining module (``torch.nn.modules.conv.Conv3d``) and lists as requiring import the keys
    whose value is such a string (``None`` entries such as ``dropout_op`` are not listed).
    """
    resolved = _normalise_arch(arch_kwargs) or {}
    requiring = [
        k for k, v in resolved.items() if isinstance(v, str) and isinstance(pydoc.locate(v), type)
    ]
    return resolved, requiring


def _nnunet_order(values: Sequence[Any]) -> list[Any]:
    # nnU-Net / nnssl read NIfTI through (z, y, x) arrays; the cache grid is nibabel's (x, y, z).
    return list(values)[::-1]


def build_adaptation_plan(
    cfg: Config, plan: Mapping[str, Any] | None, in_channels: int
) -> dict[str, Any]:
    """nnssl ``AdaptationPlan.serialize()`` of a toolkit pretraining run.

    Args:
        cfg: the pretraining config stored in the checkpoint.
        plan: the preprocessing plan stored in the checkpoint (spacing, channels), or None.
        in_channels: input channels of the pretrained stem.

    Raises:
        ToolkitError: the network is not a ResEnc (nnssl/nnU-Net cannot rebuild it).
    """
    from toolkit.models import model_info

    info = model_info(cfg.model.name)
    if info.get("family") != "resenc" or "arch_kwargs" not in info:
        raise ToolkitError(
            f"export: {cfg.model.name} is a {info.get('family')} network; nnssl / nnU-Net export "
            "is only defined for ResidualEncoderUNet models (resenc_*)"
        )
    arch_kwargs, requiring = nnssl_arch_kwargs(info["arch_kwargs"])
    plan = dict(plan or {})
    spacing = [float(s) for s in plan.get("target_spacing_mm", cfg.data.target_spacing_mm)]
    patch = [int(p) for p in cfg.data.patch_size]
    channels = list(plan.get("channels") or [f"channel_{i}" for i in range(in_channels)])
    configuration = {
        "data_identifier": f"{plan.get('dataset', 'mae3d')}_{EXPORT_CONFIGURATION}",
        "preprocessor_name": "mae3d.preprocess (crop non-zero, z-score region, resample)",
        "batch_size": int(cfg.pretrain.batch_size),
        "patch_size": _nnunet_order(patch),
        "spacing": _nnunet_order(spacing),
        "normalization_schemes": ["ZScoreNormalization" for _ in channels],
        "use_mask_for_norm": [True for _ in channels],
        "resampling_fn_data_kwargs": {"is_seg": False, "order": int(cfg.data.image_order)},
        "resampling_fn_mask_kwargs": {"is_seg": True, "order": 0},
    }
    return {
        "architecture_plans": {
            "arch_class_name": str(info["arch_class_name"]),
            "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": requiring,
        },
        "pretrain_plan": {
            "dataset_name": str(plan.get("dataset", "mae3d")),
            "plans_name": "mae3dPlans",
            "original_median_spacing_after_transp": _nnunet_order(spacing),
            "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {EXPORT_CONFIGURATION: configuration},
            "experiment_planner_used": "mae3d",
        },
        "pretrain_num_input_channels": int(in_channels),
        "recommended_downstream_patchsize": _nnunet_order(patch),
        "key_to_encoder": KEY_TO_ENCODER,
        "key_to_stem": KEY_TO_STEM,
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
        "key_to_lpe": None,
    }


def export_checkpoint(ckpt: PathLike, out: PathLike, *, fmt: str = "nnssl") -> Path:
    """Write a toolkit pretraining checkpoint in nnssl or nnU-Net format (atomic).

    ``nnssl``: ``network_weights`` (the plain network, all nnU-Net keys), ``nnssl_adaptation_plan``
    (:func:`build_adaptation_plan`), ``current_epoch`` (steps // 250, nnssl's epoch length),
    ``trainer_name``, ``init_args`` (the toolkit config) and ``optimizer_state`` = None: the
    toolkit's optimiser also covers the S3D wrapper's parameters, so its indices would not match
    the exported network. This is what nnU-Net's pretrained fine-tuning (``nnssl`` adaptation
    plans) reads: ``network_weights``, the architecture plans, the pretraining spacing and patch
    size, the stem / encoder keys and ``keys_to_in_proj``.

    ``nnunet``: ``{"network_weights": ...}``, what ``nnUNetv2_train -pretrained_weights`` loads (it
    copies every key except ``.seg_layers.`` whose name and shape match, decoder included, so the
    target plans must describe the same network).

    Both load with ``torch.load(weights_only=True)``.

    Args:
        ckpt: toolkit checkpoint (``RUN_DIR/checkpoints/*.pt``).
        out: output file.
        fmt: ``nnssl`` or ``nnunet``.

    Raises:
        ConfigError: unknown format.
        ToolkitError: not a toolkit checkpoint, or not a ResEnc network.
    """
    from toolkit.engine.checkpoint import save_checkpoint

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    src = read_pretrained(ckpt)
    if src.source_format != "mae3d":
        raise ToolkitError(
            f"{ckpt}: already an {src.source_format}-format checkpoint; export reads toolkit "
            "pretraining checkpoints"
        )
    from toolkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    cfg = from_dict(state["config"], source=str(ckpt))
    adaptation_plan = build_adaptation_plan(cfg, state.get("plan"), src.in_channels)
    # Not cloned: torch.save keeps the storage sharing of alias keys, so the file stays small.
    weights = dict(src.state_dict)
    meta = {
        "model_name": cfg.model.name,
        "step": int(src.step or 0),
        "toolkit_version": str(state.get("toolkit_version", "")),
        "variant": cfg.mask.variant,
    }
    if fmt == "nnunet":
        payload: dict[str, Any] = {"network_weights": weights, "mae3d": meta}
    else:
        payload = {
            "network_weights": weights,
            "optimizer_state": None,
            "current_epoch": int(src.step or 0) // NNSSL_STEPS_PER_EPOCH,
            "trainer_name": f"mae3d_{cfg.mask.variant}_mae",
            "init_args": {
                "configuration": EXPORT_CONFIGURATION,
                "fold": "all",
                "config": cfg.to_dict(),
            },
            "nnssl_adaptation_plan": adaptation_plan,
            "mae3d": meta,
        }
    return save_checkpoint(out, payload)


__all__ = [
    "EXPORT_FORMATS",
    "KEYS_TO_IN_PROJ",
    "KEY_TO_ENCODER",
    "KEY_TO_STEM",
    "PretrainedWeights",
    "TransferReport",
    "build_adaptation_plan",
    "canonical_keys",
    "export_checkpoint",
    "inspect_transfer",
    "load_pretrained",
    "nnssl_arch_kwargs",
    "plan_transfer",
    "read_pretrained",
    "transfer_scope",
]
