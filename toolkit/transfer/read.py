"""Reading pretraining checkpoints: toolkit, nnssl and bare nnU-Net ``network_weights`` files.

Three source formats are read, each with :func:`toolkit.engine.checkpoint.load_checkpoint`
(``weights_only=True``: a file that carries pickled code is refused before anything runs):

* a toolkit checkpoint (``RUN_DIR/checkpoints/*.pt`` of ``mae3d pretrain``): ``config``, ``plan``
  and ``network_weights`` (the plain network's state dict, nnU-Net keys; the S3D extras in
  ``extra_weights`` are never transferred) — or ``model`` of a fine-tuning run;
* an nnssl checkpoint, as nnssl's trainers write it (``network_weights``, ``optimizer_state``,
  ``grad_scaler_state``, ``logging``, ``_best_ema``, ``current_epoch``, ``init_args``,
  ``trainer_name`` and ``nnssl_adaptation_plan``) or as the OpenMind checkpoints are published
  (the same without optimiser and logging), or as :func:`toolkit.transfer.export_checkpoint`
  writes it. The adaptation plan says which network was pretrained
  (``architecture_plans``: a preset name such as ``ResEncL``, or ``ResidualEncoderUNet`` with its
  kwargs), the pretraining plan (spacing and patch size of its one configuration), the stem's
  input channels and where stem, encoder and input projection live in the state dict;
* a bare ``{"network_weights": ...}`` file as nnU-Net's ``-pretrained_weights`` takes.

Example:
    >>> src = read_pretrained("openmind_resenc_l/checkpoint_final.pth")  # doctest: +SKIP
    >>> src.source_format, src.model_candidates[0]  # doctest: +SKIP
    ('nnssl', 'resenc_l')
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit.config import from_dict
from toolkit.errors import ConfigError, DataError
from toolkit.transfer.architecture import plan_sequence, resolve_architecture

PathLike = str | os.PathLike[str]

#: Where nnssl / dynamic-network-architectures keep the parts of a ResidualEncoderUNet.
KEY_TO_ENCODER = "encoder.stages"
KEY_TO_STEM = "encoder.stem"
KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")


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
        arch_class_name: the adaptation plan's ``arch_class_name`` (nnssl format), else None.
        model_candidates: registered models that build the pretrained network, preferred first
            (nnssl format: resolved from the adaptation plan; toolkit format: its ``model.name``).
        recommended_patch_size: (3,) the plan's ``recommended_downstream_patchsize`` (cache axis
            order), if given.
        trainer_name: the checkpoint's ``trainer_name`` (nnssl format), if given.
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
    arch_class_name: str | None = None
    model_candidates: tuple[str, ...] = ()
    recommended_patch_size: tuple[int, int, int] | None = None
    trainer_name: str | None = None


def read_pretrained(path: PathLike) -> PretrainedWeights:
    """Read a toolkit or nnssl pretraining checkpoint (``weights_only=True``).

    Args:
        path: ``RUN_DIR/checkpoints/{best,final,latest}.pt`` of ``mae3d pretrain``, or an nnssl /
            exported checkpoint with ``network_weights`` and ``nnssl_adaptation_plan``.

    Raises:
        DataError: missing or corrupt file, or neither format.
    """
    from toolkit.engine.checkpoint import load_checkpoint

    path = Path(path)
    state = load_checkpoint(path)
    if "nnssl_adaptation_plan" in state:
        if "network_weights" not in state:
            raise DataError(f"{path}: nnssl_adaptation_plan without network_weights")
        return _read_nnssl(path, state, _weights(path, state, "network_weights"))
    if "config" in state:
        # Pretraining stores the plain network as network_weights (S3D extras apart, never
        # transferred); a fine-tuning checkpoint stores its network as model.
        for key in ("network_weights", "model"):
            if key in state:
                return _read_toolkit(path, state, _weights(path, state, key))
    if "network_weights" in state:
        return _read_bare(path, _weights(path, state, "network_weights"))
    raise DataError(
        f"{path}: neither a toolkit checkpoint (config + network_weights) nor an nnssl / nnU-Net "
        f"one (network_weights); keys: {', '.join(sorted(state)[:8])}"
    )


def _weights(path: Path, state: Mapping[str, Any], key: str) -> dict[str, torch.Tensor]:
    """``state[key]`` as a plain state dict (wrapper prefixes stripped), or a DataError."""
    from toolkit.engine.checkpoint import clean_state_dict

    weights = state[key]
    if not isinstance(weights, Mapping) or not weights:
        raise DataError(f"{path}: {key} is not a state dict (got {type(weights).__name__})")
    bad = [k for k, v in weights.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise DataError(f"{path}: {key}[{bad[0]!r}] is not a tensor")
    return clean_state_dict(weights)


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
        model_candidates=(cfg.model.name,),
        in_channels=_stem_in_channels(weights, KEYS_TO_IN_PROJ, cfg.model.in_channels),
        patch_size=_int3(cfg.data.patch_size),
        spacing_mm=_float3(spacing),
        step=int(state["step"]) if "step" in state else None,
    )


def _read_nnssl(
    path: Path, state: Mapping[str, Any], weights: dict[str, torch.Tensor]
) -> PretrainedWeights:
    field = "nnssl_adaptation_plan"
    plan = state.get(field)
    if not isinstance(plan, Mapping):
        raise DataError(f"{path}: {field} is a {type(plan).__name__}, expected a dict")
    arch = plan.get("architecture_plans")
    if not isinstance(arch, Mapping) or not arch.get("arch_class_name"):
        raise DataError(f"{path}: {field}.architecture_plans.arch_class_name is missing")
    arch_class_name = str(arch["arch_class_name"])
    raw_kwargs = arch.get("arch_kwargs")
    if raw_kwargs is not None and not isinstance(raw_kwargs, Mapping):
        raise DataError(f"{path}: {field}.architecture_plans.arch_kwargs is not a dict")
    candidates, arch_kwargs = resolve_architecture(arch_class_name, raw_kwargs, source=str(path))
    configuration = _pretrain_configuration(path, plan, state.get("init_args"))
    # nnssl / nnU-Net list spacing and patch size in their (z, y, x) array order; the cache grid
    # is (x, y, z) (see toolkit.transfer.nnssl), so both are reversed on the way in.
    patch = plan_sequence(configuration.get("patch_size"))
    spacing = plan_sequence(configuration.get("spacing"))
    recommended = plan_sequence(plan.get("recommended_downstream_patchsize"))
    in_proj = tuple(str(k) for k in (plan.get("keys_to_in_proj") or KEYS_TO_IN_PROJ))
    meta = state.get("mae3d")
    toolkit_meta: Mapping[str, Any] = meta if isinstance(meta, Mapping) else {}
    model_name = toolkit_meta.get("model_name")
    if model_name not in candidates:
        model_name = candidates[0]
    try:
        in_channels = int(plan.get("pretrain_num_input_channels", 1))
    except (TypeError, ValueError):
        raise DataError(f"{path}: {field}.pretrain_num_input_channels is not a number") from None
    step = toolkit_meta.get("step")
    return PretrainedWeights(
        path=path,
        source_format="nnssl",
        state_dict=weights,
        model_name=str(model_name),
        arch_kwargs=arch_kwargs,
        in_channels=_stem_in_channels(weights, in_proj, in_channels),
        patch_size=_int3(patch[::-1]) if patch and len(patch) == 3 else None,
        spacing_mm=_float3(spacing[::-1]) if spacing and len(spacing) == 3 else None,
        key_to_encoder=str(plan.get("key_to_encoder") or KEY_TO_ENCODER),
        key_to_stem=str(plan.get("key_to_stem") or KEY_TO_STEM),
        keys_to_in_proj=in_proj,
        step=int(step) if isinstance(step, int) else None,
        arch_class_name=arch_class_name,
        model_candidates=candidates,
        recommended_patch_size=(
            _int3(recommended[::-1]) if recommended and len(recommended) == 3 else None
        ),
        trainer_name=str(state["trainer_name"]) if state.get("trainer_name") else None,
    )


def _pretrain_configuration(
    path: Path, plan: Mapping[str, Any], init_args: Any
) -> Mapping[str, Any]:
    """The configuration pretraining used: nnssl's trainers keep only that one in the plan; when
    several are listed, ``init_args.configuration_name`` (or ``configuration``) picks it."""
    pretrain_plan = plan.get("pretrain_plan")
    configurations = (
        pretrain_plan.get("configurations") if isinstance(pretrain_plan, Mapping) else None
    )
    if not isinstance(configurations, Mapping) or not configurations:
        return {}
    args = init_args if isinstance(init_args, Mapping) else {}
    for key in ("configuration_name", "configuration"):
        name = args.get(key)
        if isinstance(name, str) and isinstance(configurations.get(name), Mapping):
            return configurations[name]
    if len(configurations) > 1:
        raise DataError(
            f"{path}: nnssl_adaptation_plan.pretrain_plan lists {len(configurations)} "
            f"configurations ({', '.join(map(str, configurations))}) and init_args does not say "
            "which one pretraining used"
        )
    first = next(iter(configurations.values()))
    return first if isinstance(first, Mapping) else {}


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


__all__ = [
    "KEYS_TO_IN_PROJ",
    "KEY_TO_ENCODER",
    "KEY_TO_STEM",
    "PretrainedWeights",
    "read_pretrained",
]
