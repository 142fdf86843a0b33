"""nnssl's adaptation plan and checkpoint export (``mae3d export --format nnssl|nnunet``).

The format follows nnssl's own code (``nnssl.adaptation_planning.adaptation_plan`` and the
trainers' ``save_checkpoint``): ``AdaptationPlan.serialize()`` is a dict of
``architecture_plans`` (``arch_class_name``, ``arch_kwargs`` as ``DynamicArchitecturePlans`` fields
with classes as ``module.Class`` strings, ``arch_kwargs_requiring_import``), ``pretrain_plan`` (a
``Plan``: dataset and plans name, reader, transposes, planner and ``configurations`` of
``ConfigurationPlan`` fields — exactly those fields, as ``Plan.from_dict`` rebuilds them with
``ConfigurationPlan(**v)``), ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``,
``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` and ``key_to_lpe``. Spacing and patch
sizes are in nnssl's (z, y, x) array order; the cache grid is nibabel's (x, y, z).

Example:
    >>> export_checkpoint("run/checkpoints/final.pt", "mae3d_nnssl.pth")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pydoc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit.config import Config, from_dict
from toolkit.errors import ConfigError, ToolkitError
from toolkit.transfer.architecture import normalise_arch_kwargs
from toolkit.transfer.read import KEY_TO_ENCODER, KEY_TO_STEM, KEYS_TO_IN_PROJ, read_pretrained

PathLike = str | os.PathLike[str]

#: nnssl trains 250 iterations per epoch; exported ``current_epoch`` counts in those units.
NNSSL_STEPS_PER_EPOCH = 250
#: Name of the single configuration written into an exported adaptation plan's pretrain plan
#: (nnssl's 1 mm isotropic configuration is called ``onemmiso``; ours is the run's own plan).
EXPORT_CONFIGURATION = "mae3d"
EXPORT_FORMATS = ("nnssl", "nnunet")


def nnssl_arch_kwargs(arch_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``arch_kwargs`` and ``arch_kwargs_requiring_import`` exactly as nnssl serialises them.

    nnssl's ``DynamicArchitecturePlans.serialize`` writes classes as ``module.Class`` of their
    defining module (``torch.nn.modules.conv.Conv3d``) and lists as requiring import the keys
    whose value is such a string (``None`` entries such as ``dropout_op`` are not listed).
    """
    resolved = normalise_arch_kwargs(arch_kwargs) or {}
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
    # Exactly nnssl's ConfigurationPlan fields: Plan.from_dict calls ConfigurationPlan(**v).
    configuration = {
        "data_identifier": f"{plan.get('dataset', 'mae3d')}_{EXPORT_CONFIGURATION}",
        "preprocessor_name": "mae3d.preprocess (crop non-zero, z-score region, resample)",
        # nnssl's styles: onemmiso, median, noresample; a fixed target spacing other than 1 mm is
        # closest to "median" (resampled to the one spacing stored below).
        "spacing_style": "onemmiso" if all(abs(s - 1.0) < 1e-6 for s in spacing) else "median",
        "normalization_schemes": ["ZScoreNormalization" for _ in channels],
        "use_mask_for_norm": [True for _ in channels],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": int(cfg.data.image_order),
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {
            "is_seg": True,
            "order": 0,
            "order_z": 0,
            "force_separate_z": None,
        },
        "spacing": _nnunet_order(spacing),
        "patch_size": _nnunet_order(patch),
    }
    return {
        "architecture_plans": {
            # nnssl's spelling: verify_adaptation_plans builds from arch_kwargs only when the name
            # is one of its DYN_ARCHITECTURE_PRESETS ("ResidualEncoderUNet", "PlainConvUNet");
            # a dotted path would be looked up as a named preset and refused.
            "arch_class_name": str(info["arch_class_name"]).rsplit(".", 1)[-1],
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
    from toolkit.engine.checkpoint import load_checkpoint, save_checkpoint

    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(EXPORT_FORMATS)}; got {fmt!r}")
    src = read_pretrained(ckpt)
    if src.source_format != "mae3d":
        raise ToolkitError(
            f"{ckpt}: already an {src.source_format}-format checkpoint; export reads toolkit "
            "pretraining checkpoints"
        )
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
            # nnssl's trainers store their __init__ arguments; ours name the same configuration.
            "init_args": {
                "configuration_name": EXPORT_CONFIGURATION,
                "fold": "all",
                "config": cfg.to_dict(),
            },
            "nnssl_adaptation_plan": adaptation_plan,
            "mae3d": meta,
        }
    return save_checkpoint(out, payload)


__all__ = [
    "EXPORT_FORMATS",
    "build_adaptation_plan",
    "export_checkpoint",
    "nnssl_arch_kwargs",
]
