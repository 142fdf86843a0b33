"""Checkpoints for the transfer tests: a toolkit pretraining run's, and nnssl's as nnssl writes it.

The nnssl checkpoint is built the way nnssl's own code builds it (read from MIC-DKFZ/nnssl:
``AbstractBaseTrainer.save_checkpoint``, ``AdaptationPlan`` / ``ArchitecturePlans`` /
``DynamicArchitecturePlans.serialize``, ``Plan`` / ``ConfigurationPlan``, ``_convert_numpy``),
from a ``ResidualEncoderUNet`` of dynamic-network-architectures built with class-valued kwargs
as nnssl's trainers build it. Nothing of nnssl is imported: the dict layout is what is being tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from toolkit.config import Config, load_config
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.models import build_mae
from toolkit.models.resenc import ResEncSpec, build_resenc
from toolkit.pretrain import PretrainTask
from toolkit.transfer import PretrainedWeights, canonical_keys

PLAN = {"dataset": "demo", "channels": ["image"], "target_spacing_mm": [2.5, 2.5, 2.5]}

#: Field names of nnssl's dataclasses, as ``Plan.from_dict`` / ``AdaptationPlan.from_dict`` and
#: ``DynamicArchitecturePlans(**kwargs)`` require them (nnssl's adaptation_plan.py and plan.py).
NNSSL_CONFIGURATION_FIELDS = {
    "data_identifier",
    "preprocessor_name",
    "spacing_style",
    "normalization_schemes",
    "use_mask_for_norm",
    "resampling_fn_data",
    "resampling_fn_data_kwargs",
    "resampling_fn_mask",
    "resampling_fn_mask_kwargs",
    "spacing",
    "patch_size",
}
NNSSL_PLAN_FIELDS = {
    "dataset_name",
    "plans_name",
    "original_median_spacing_after_transp",
    "image_reader_writer",
    "transpose_forward",
    "transpose_backward",
    "configurations",
    "experiment_planner_used",
}
NNSSL_ADAPTATION_FIELDS = {
    "architecture_plans",
    "pretrain_plan",
    "pretrain_num_input_channels",
    "recommended_downstream_patchsize",
    "key_to_encoder",
    "key_to_stem",
    "keys_to_in_proj",
    "key_to_lpe",
}
NNSSL_ARCH_FIELDS = {
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
}


def tiny_cfg(*overrides: str) -> Config:
    return load_config("tiny", list(overrides))


def pretrain_checkpoint(tmp_path: Path, config: Config, name: str = "final.pt") -> Path:
    """A pretraining checkpoint with the entries the engine writes for PretrainTask."""
    torch.manual_seed(0)
    mae = build_mae(config)
    source = ArrayPatchSource({"a": np.zeros((config.model.in_channels, 8, 8, 8), np.float32)})
    task = PretrainTask(config, source, ["a"])
    state: dict[str, Any] = {
        "config": config.to_dict(),
        "plan": PLAN,
        **task.model_state(mae),
        "step": 40,
        "toolkit_version": "test",
    }
    return save_checkpoint(tmp_path / "checkpoints" / name, state)


def mem_source(spec: ResEncSpec, in_channels: int = 1) -> PretrainedWeights:
    torch.manual_seed(1)
    net = build_resenc(spec, in_channels, in_channels)
    return PretrainedWeights(
        path=Path("mem.pt"),
        source_format="mae3d",
        state_dict=net.state_dict(),
        in_channels=in_channels,
    )


def canonical_in(net: nn.Module, prefix: str) -> set[str]:
    return {k for k in canonical_keys(net.state_dict()) if k.startswith(prefix)}


# --------------------------------------------------------------------------------------------------
# nnssl


def nnssl_arch_kwargs(spec: ResEncSpec) -> dict[str, Any]:
    """``DynamicArchitecturePlans`` fields with classes, as an nnssl trainer fills them in."""
    n = len(spec.features)
    return {
        "n_stages": n,
        "features_per_stage": list(spec.features),
        "conv_op": nn.Conv3d,
        "kernel_sizes": [(3, 3, 3) for _ in range(n)],
        "strides": [[s, s, s] for s in spec.strides],
        "n_blocks_per_stage": list(spec.n_blocks_per_stage),
        "n_conv_per_stage_decoder": list(spec.n_conv_per_stage_decoder),
        "conv_bias": True,
        "norm_op": nn.InstanceNorm3d,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
    }


def _serialize_arch(kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    # DynamicArchitecturePlans.serialize: module classes -> "module.Name"; the keys requiring import
    # are those holding a Module class or a string (dropout_op None is not listed).
    out = dict(kwargs)
    requiring = [
        k
        for k, v in kwargs.items()
        if (isinstance(v, type) and issubclass(v, nn.Module)) or isinstance(v, str)
    ]
    for key in ("nonlin", "norm_op", "conv_op", "dropout_op"):
        v = out[key]
        if isinstance(v, type) and issubclass(v, nn.Module):
            out[key] = f"{v.__module__}.{v.__name__}"
    return out, requiring


def _convert_numpy(obj: Any) -> Any:
    # What nnssl's trainers apply before torch.save: numpy scalars -> Python, arrays -> tensors.
    if isinstance(obj, dict):
        return {k: _convert_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_convert_numpy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_convert_numpy(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    return obj


def nnssl_network(spec: ResEncSpec, in_channels: int = 1, seed: int = 3) -> ResidualEncoderUNet:
    """The pretraining network as nnssl builds it (``get_network_from_plans`` / the presets)."""
    torch.manual_seed(seed)
    return ResidualEncoderUNet(
        input_channels=in_channels,
        num_classes=in_channels,
        deep_supervision=False,
        **nnssl_arch_kwargs(spec),
    )


def nnssl_checkpoint(
    path: Path,
    spec: ResEncSpec,
    *,
    arch_class_name: str = "ResidualEncoderUNet",
    with_arch_kwargs: bool = True,
    patch_size_zyx: tuple[int, int, int] = (32, 40, 48),
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0),
    convert_numpy: bool = True,
    network: nn.Module | None = None,
) -> Path:
    """An nnssl trainer checkpoint (``checkpoint_final.pth``) after one optimiser step.

    Args:
        convert_numpy: apply nnssl's ``_convert_numpy`` (what nnssl does today); False leaves the
            numpy scalars and arrays a writer without it stores.
    """
    net = network if network is not None else nnssl_network(spec)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    for param in net.parameters():  # one step's worth of state (momentum buffers), no forward
        param.grad = torch.full_like(param, 1e-3)
    optimizer.step()

    configuration = {  # ConfigurationPlan, asdict
        "data_identifier": "nnsslPlans_onemmiso",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso",
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0},
        "spacing": np.array(spacing_zyx, dtype=np.float64),
        "patch_size": np.array(patch_size_zyx, dtype=np.int64),
    }
    plan = {  # Plan.serialize(): the trainer keeps only the configuration it trains
        "dataset_name": "Dataset745_OpenMind",
        "plans_name": "nnsslPlans",
        "original_median_spacing_after_transp": [np.float64(1.0)] * 3,
        "image_reader_writer": "NibabelReaderWriter",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {"onemmiso": configuration},
        "experiment_planner_used": "ExperimentPlanner",
    }
    if with_arch_kwargs:
        arch_kwargs, requiring = _serialize_arch(nnssl_arch_kwargs(spec))
        architecture = {
            "arch_class_name": arch_class_name,
            "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": requiring,
        }
    else:  # ArchitecturePlans("ResEncL"): a preset name, no kwargs
        architecture = {
            "arch_class_name": arch_class_name,
            "arch_kwargs": None,
            "arch_kwargs_requiring_import": None,
        }
    adaptation_plan = {
        "architecture_plans": architecture,
        "pretrain_plan": plan,
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": (160, 160, 160),
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"),
        "key_to_lpe": None,
    }
    checkpoint = {
        "network_weights": net.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "train_losses": [np.float32(1.25), np.float32(0.75)],
            "val_losses": [np.float32(0.8)],
            "lrs": [0.01, 0.0099],
            "epoch_start_timestamps": [1.7e9, 1.7e9 + 60],
        },
        "_best_ema": np.float64(0.8),
        "current_epoch": 2,
        "init_args": {  # make_serializable(the trainer's __init__ arguments)
            "plan": plan,
            "configuration_name": "onemmiso",
            "fold": 0,
            "pretrain_json": {"name": "OpenMind", "datasets": {}},
            "device": torch.device("cpu"),
        },
        "trainer_name": "BaseMAETrainer_BS8",
        "nnssl_adaptation_plan": adaptation_plan,
    }
    if convert_numpy:
        checkpoint = _convert_numpy(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path
