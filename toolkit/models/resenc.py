"""Residual Encoder U-Net presets built with dynamic-network-architectures.

Every preset is a ``ResidualEncoderUNet`` with nnU-Net's settings (3^3 kernels, InstanceNorm3d
with affine and eps 1e-5, LeakyReLU 0.01 in place, conv bias, one conv per decoder stage, ResNet-D
blocks, transposed-conv upsampling, 1^3 heads), so state dicts load into nnU-Net / nnssl unchanged.
The factories build with PyTorch's default initialisation; :func:`toolkit.models.create_model`
then applies ``model.init`` (see :mod:`toolkit.models.initialization`: nnU-Net's He normal with the
last norm of every residual block zeroed, or PyTorch's defaults as nnssl pretrains).

Presets (parameter counts with 1 input / 1 output channel, see ``scripts/count_params.py``):

=================  ===================================  ======================  ========
name               features                             blocks per stage        params
=================  ===================================  ======================  ========
resenc_l           32, 64, 128, 256, 320, 320           1, 3, 4, 6, 6, 6        ~102 M
resenc_m / _xl     same network as resenc_l (see below)
resenc_l_w1.5      48, 96, 192, 384, 480, 480           1, 3, 4, 6, 6, 6        ~230 M
resenc_l_w2        64, 128, 256, 512, 640, 640          1, 3, 4, 6, 6, 6        ~409 M
resenc_l_d134      32, 64, 128, 256, 320, 320           1, 4, 6, 8, 8, 8        ~134 M
resenc_l_d174      32, 64, 128, 256, 320, 320           2, 5, 6, 10, 10, 12     ~174 M
resenc_tiny        4, 8, 16, 32                         1, 1, 1, 1              ~0.08 M
=================  ===================================  ======================  ========

nnU-Net's ResEnc M, L and XL planners (``nnUNetPlannerResEncM/L/XL``) build the same topology (base
32 features doubling to at most 320, blocks (1, 3, 4, 6, 6, 6, ...)) and only differ in the GPU
memory target (8 / 24 / 40 GB), which in nnU-Net changes the patch and batch size. With the fixed
160^3 patch of the paper the three are one network; the names are registered so configs that
say ``resenc_m`` or ``resenc_xl`` work and mean what nnU-Net means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from toolkit.models.registry import register_model

__all__ = [
    "RESENC_L",
    "RESENC_TINY",
    "ResEncSpec",
    "arch_kwargs",
    "build_resenc",
    "unused_parameter_names",
]

ARCH_CLASS_NAME = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


@dataclass(frozen=True)
class ResEncSpec:
    """Topology of one Residual Encoder U-Net.

    Attributes:
        features: channels per stage.
        strides: per-stage stride (isotropic); the first stage usually has stride 1.
        n_blocks_per_stage: residual blocks per encoder stage.
        n_conv_per_stage_decoder: convs per decoder stage (one fewer entries than stages).
        kernel_size: isotropic conv kernel size.
    """

    features: tuple[int, ...]
    strides: tuple[int, ...]
    n_blocks_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]
    kernel_size: int = 3

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.strides) == len(self.n_blocks_per_stage) == n):
            raise ValueError("features, strides and n_blocks_per_stage need one entry per stage")
        if len(self.n_conv_per_stage_decoder) != n - 1:
            raise ValueError("n_conv_per_stage_decoder needs one entry fewer than stages")


def _widen(spec: ResEncSpec, factor: float) -> ResEncSpec:
    return ResEncSpec(
        features=tuple(int(round(f * factor)) for f in spec.features),
        strides=spec.strides,
        n_blocks_per_stage=spec.n_blocks_per_stage,
        n_conv_per_stage_decoder=spec.n_conv_per_stage_decoder,
    )


def _deepen(spec: ResEncSpec, blocks: tuple[int, ...]) -> ResEncSpec:
    return ResEncSpec(spec.features, spec.strides, blocks, spec.n_conv_per_stage_decoder)


RESENC_L = ResEncSpec(
    features=(32, 64, 128, 256, 320, 320),
    strides=(1, 2, 2, 2, 2, 2),
    n_blocks_per_stage=(1, 3, 4, 6, 6, 6),
    n_conv_per_stage_decoder=(1, 1, 1, 1, 1),
)
RESENC_L_W15 = _widen(RESENC_L, 1.5)
RESENC_L_W2 = _widen(RESENC_L, 2.0)
RESENC_L_D134 = _deepen(RESENC_L, (1, 4, 6, 8, 8, 8))
RESENC_L_D174 = _deepen(RESENC_L, (2, 5, 6, 10, 10, 12))
# Every part of the real network (stem, stride-1 first stage, strided ResNet-D blocks with
# projection skips, transposed-conv decoder) at a width where an S3D pretraining step (batch 2,
# 48^3, forward + backward) takes about 0.4 s of one CPU core; 8 features at full resolution
# doubled that, because 3D conv backward on CPU dominates.
RESENC_TINY = ResEncSpec(
    features=(4, 8, 16, 32),
    strides=(1, 2, 2, 2),
    n_blocks_per_stage=(1, 1, 1, 1),
    n_conv_per_stage_decoder=(1, 1, 1),
)

# The science benchmark's network: the same four-stage topology as tiny at twice the width and two
# blocks in every strided stage (0.61 M parameters). In probes, this size beat the parameter-free
# in-fill where tiny (0.08 M) did not; an S3D step (batch 4, 40^3) takes ~0.5 s of one CPU core.
RESENC_SMALL = ResEncSpec(
    features=(8, 16, 32, 64),
    strides=(1, 2, 2, 2),
    n_blocks_per_stage=(1, 2, 2, 2),
    n_conv_per_stage_decoder=(1, 1, 1),
)


def arch_kwargs(spec: ResEncSpec) -> dict[str, Any]:
    """``ResidualEncoderUNet`` keyword arguments in nnU-Net plans format (JSON-friendly).

    Class-valued entries are dotted import paths, listed in the ``arch_kwargs_requiring_import``
    of :func:`toolkit.models.model_info`; ``input_channels`` and ``num_classes`` are left out, as
    in nnU-Net.
    """
    n = len(spec.features)
    k = spec.kernel_size
    return {
        "n_stages": n,
        "features_per_stage": list(spec.features),
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[k, k, k] for _ in range(n)],
        "strides": [[s, s, s] for s in spec.strides],
        "n_blocks_per_stage": list(spec.n_blocks_per_stage),
        "n_conv_per_stage_decoder": list(spec.n_conv_per_stage_decoder),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def build_resenc(
    spec: ResEncSpec, in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """Build a ``ResidualEncoderUNet`` like nnU-Net does, with PyTorch's default initialisation.

    nnU-Net's own initialisation is ``init_weights(net, "nnunet")``
    (:mod:`toolkit.models.initialization`); :func:`toolkit.models.create_model` applies it.

    Args:
        spec: the topology.
        in_channels: input channels C of (B, C, D, H, W).
        out_channels: output channels of the 1x1x1 head(s).
        deep_supervision: return one output per decoder stage, full resolution first.

    Returns:
        The network; ``network(x)`` maps (B, C, D, H, W) to (B, out_channels, D, H, W) when every
        patch edge is a multiple of ``prod(spec.strides)``.
    """
    n = len(spec.features)
    net = ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=n,
        features_per_stage=list(spec.features),
        conv_op=nn.Conv3d,
        kernel_sizes=[[spec.kernel_size] * 3 for _ in range(n)],
        strides=[[s] * 3 for s in spec.strides],
        n_blocks_per_stage=list(spec.n_blocks_per_stage),
        num_classes=out_channels,
        n_conv_per_stage_decoder=list(spec.n_conv_per_stage_decoder),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=deep_supervision,
    )
    # No net.initialize here: nnssl's MAE trainers skip it, nnU-Net applies it; create_model
    # initialises per model.init.
    return net


def _meta(spec: ResEncSpec) -> dict[str, Any]:
    return {
        "family": "resenc",
        "strides": spec.strides,
        "features": spec.features,
        "supports_s3d": True,
        "supports_deep_supervision": True,
        "extra": {
            "n_blocks_per_stage": spec.n_blocks_per_stage,
            "arch_class_name": ARCH_CLASS_NAME,
            "arch_kwargs": arch_kwargs(spec),
            "arch_kwargs_requiring_import": ("conv_op", "norm_op", "dropout_op", "nonlin"),
        },
    }


@register_model("resenc_l", **_meta(RESENC_L))
def resenc_l(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """ResEnc-L of Wald et al. (CVPR 2025): 6 stages, 32-320 features, ~102 M parameters."""
    return build_resenc(RESENC_L, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_m", **_meta(RESENC_L))
def resenc_m(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """nnU-Net ResEnc M: the ResEnc-L network (M/L/XL differ only in nnU-Net's memory target)."""
    return build_resenc(RESENC_L, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_xl", **_meta(RESENC_L))
def resenc_xl(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """nnU-Net ResEnc XL: the ResEnc-L network (M/L/XL differ only in nnU-Net's memory target)."""
    return build_resenc(RESENC_L, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_l_w1.5", **_meta(RESENC_L_W15))
def resenc_l_w15(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """ResEnc-L with 1.5x the features per stage (48-480), ~230 M parameters."""
    return build_resenc(RESENC_L_W15, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_l_w2", **_meta(RESENC_L_W2))
def resenc_l_w2(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """ResEnc-L with 2x the features per stage (64-640), ~409 M parameters."""
    return build_resenc(RESENC_L_W2, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_l_d134", **_meta(RESENC_L_D134))
def resenc_l_d134(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """ResEnc-L with blocks (1, 4, 6, 8, 8, 8), ~134 M parameters."""
    return build_resenc(RESENC_L_D134, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_l_d174", **_meta(RESENC_L_D174))
def resenc_l_d174(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """ResEnc-L with blocks (2, 5, 6, 10, 10, 12), ~174 M parameters."""
    return build_resenc(RESENC_L_D174, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_tiny", **_meta(RESENC_TINY))
def resenc_tiny(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """A 4-stage ResEnc (4-32 features, one block per stage) for CPU tests and demos."""
    return build_resenc(RESENC_TINY, in_channels, out_channels, deep_supervision=deep_supervision)


@register_model("resenc_small", **_meta(RESENC_SMALL))
def resenc_small(
    in_channels: int, out_channels: int, *, deep_supervision: bool = False
) -> ResidualEncoderUNet:
    """A 4-stage ResEnc (8-64 features, 2 blocks per strided stage), ~0.6 M parameters."""
    return build_resenc(RESENC_SMALL, in_channels, out_channels, deep_supervision=deep_supervision)


def encoder_strides(network: nn.Module) -> list[tuple[int, int, int]]:
    """Per-stage (D, H, W) strides of a built ``ResidualEncoderUNet``'s encoder."""
    strides: Any = network.encoder.strides  # type: ignore[union-attr]
    return [tuple(int(v) for v in s) for s in strides]  # type: ignore[misc]


def unused_parameter_names(model: nn.Module) -> list[str]:
    """Names of parameters that a forward pass of ``model`` never uses.

    A dynamic-network-architectures ``UNetDecoder`` builds a 1^3 head per decoder stage but, without
    deep supervision, only runs the last one; the other heads stay in the state dict (nnU-Net and
    nnssl expect their keys) and never get a gradient. DDP must be told to leave them out, or it
    waits for their gradients and fails at the second step.

    Args:
        model: any module, e.g. an :class:`~toolkit.models.mae.MAEModel` or a segmentation network.

    Returns:
        Fully qualified parameter names, as in ``model.named_parameters()`` (empty when every
        parameter is used).
    """
    unused: list[str] = []
    for prefix, module in model.named_modules():
        heads = getattr(module, "seg_layers", None)
        if not isinstance(heads, nn.ModuleList) or getattr(module, "deep_supervision", True):
            continue
        for i, head in enumerate(heads[:-1]):
            base = f"{prefix}.seg_layers.{i}" if prefix else f"seg_layers.{i}"
            unused += [f"{base}.{name}" for name, _ in head.named_parameters()]
    return unused
