"""What transfers: pretrained stem + encoder (+ decoder) weights into a segmentation network.

Transfer follows the paper (RECIPE.md "Fine-tuning") and nnssl's ``load_pretrained_weights``:
the encoder stem and stages (``encoder.stem.*``, ``encoder.stages.*``, or the prefixes an nnssl
adaptation plan names) are copied by name, optionally the decoder too
(``finetune.transfer_decoder``), never the 1x1x1 segmentation heads (``decoder.seg_layers.*``: the
class count differs from the reconstruction's). Shapes must match exactly; the one adaptation is
the input projection: a stem pretrained on 1 channel fine-tunes on C channels by repeating its
weight C times along the input axis and dividing by C, so a C-channel input of identical channels
gives the pretrained stem's output.

An nnssl checkpoint says which network was pretrained; :func:`config_for_source` sets
``model.name`` to the registered model that builds it, so the fine-tuning network is the one the
adaptation plan describes (the config's own when that already is one of them).

``dynamic-network-architectures`` registers modules twice (``conv`` and ``all_modules.0``; the
encoder again under ``decoder.encoder``), so a state dict repeats tensors under alias keys. Reports
list each tensor once, under the first key ``state_dict()`` gives it.

Example:
    >>> from toolkit.config import load_config
    >>> report = inspect_transfer("run/checkpoints/final.pt", load_config("tiny"))  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from toolkit.config import Config
from toolkit.errors import ConfigError, TrainingError
from toolkit.transfer.architecture import structural_kwargs
from toolkit.transfer.read import (
    KEY_TO_ENCODER,
    KEY_TO_STEM,
    PretrainedWeights,
    _float3,
    _int3,
    read_pretrained,
)
from toolkit.transfer.report import TransferReport, _fmt

PathLike = str | os.PathLike[str]

DECODER_PREFIX = "decoder."
#: Never transferred: the 1x1x1 output heads (as nnU-Net's ``load_pretrained_weights`` skips).
SEG_HEAD_MARKER = ".seg_layers."


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


def _architecture_match(src: PretrainedWeights, cfg: Config) -> bool | None:
    from toolkit.models import model_info

    target = structural_kwargs(model_info(cfg.model.name).get("arch_kwargs"))
    source = structural_kwargs(src.arch_kwargs)
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
    if source.recommended_patch_size is not None and source.recommended_patch_size != ft_patch:
        notes.append(
            f"the checkpoint recommends fine-tuning patches of "
            f"{_fmt(source.recommended_patch_size)} voxels (data.patch_size is {_fmt(ft_patch)})"
        )
    if source.in_channels not in (1, target_in):
        notes.append(
            f"the checkpoint has a {source.in_channels}-channel stem; only a 1-channel stem can be "
            f"adapted to {target_in} channels"
        )
    network_parameters = sum(int(target_sd[k].numel()) for k in groups)
    loaded_parameters = sum(int(v.numel()) for v in loaded.values())
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
        loaded_parameters=loaded_parameters,
        network_parameters=network_parameters,
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
    cfg, note = config_for_source(cfg, src)
    if num_classes is None:
        num_classes = _num_classes_from_config(cfg)
    network = build_segmentation_model(cfg, num_classes)
    _require_transferable(network, cfg)
    report, _ = plan_transfer(network, src, cfg, num_classes=num_classes)
    if note:
        report = dataclasses.replace(report, notes=(note, *report.notes))
    return report


def config_for_source(cfg: Config, source: PretrainedWeights) -> tuple[Config, str | None]:
    """``cfg`` with ``model.name`` set to the network an nnssl adaptation plan describes.

    Only nnssl-format sources say which network they hold in a form the toolkit did not write
    itself; for them the fine-tuning network is built from the plan. The config's own model is
    kept when it is one of the plan's matches (e.g. ``resenc_m`` and ``resenc_l`` are one network).

    Args:
        cfg: the fine-tuning config.
        source: from :func:`read_pretrained`.

    Returns:
        The config to build and train with, and a one-line note when ``model.name`` changed.
    """
    if source.source_format != "nnssl" or not source.model_candidates:
        return cfg, None
    if cfg.model.name in source.model_candidates:
        return cfg, None
    chosen = source.model_candidates[0]
    model = dataclasses.replace(cfg.model, name=chosen)
    note = (
        f"model.name: {chosen} (built from the checkpoint's nnssl adaptation plan, "
        f"{source.arch_class_name}; the config said {cfg.model.name})"
    )
    return dataclasses.replace(cfg, model=model), note


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


__all__ = [
    "DECODER_PREFIX",
    "SEG_HEAD_MARKER",
    "canonical_keys",
    "config_for_source",
    "inspect_transfer",
    "load_pretrained",
    "plan_transfer",
    "transfer_scope",
]
