"""MONAI networks behind the registry's factory interface (dense MAE and fine-tuning only).

These give baselines outside the ResEnc family. They have no sparse (S3D) variant: their blocks are
not built from the modules the S3D wrapper knows how to mask, so ``supports_s3d`` is False and
``build_mae`` refuses ``mask.variant=s3d`` for them with a clear message.

Patch constraints: ``segresnet`` and ``unet_monai`` need patch edges divisible by 8, ``swinunetr``
by 32 (patch embedding 2 then four 2x merges), so 64^3 works and 48^3 does not.
"""

from __future__ import annotations

from monai.networks.nets import SegResNet, SwinUNETR, UNet
from torch import nn

from toolkit.models.registry import register_model

__all__ = ["segresnet", "swinunetr", "unet_monai"]


def _no_deep_supervision(name: str, deep_supervision: bool) -> None:
    # The registry refuses deep supervision for these before calling; this guards direct calls.
    if deep_supervision:
        raise ValueError(f"{name} has no deep-supervision outputs")


@register_model("segresnet", family="monai", strides=(1, 2, 2, 2), features=(8, 16, 32, 64))
def segresnet(in_channels: int, out_channels: int, *, deep_supervision: bool = False) -> nn.Module:
    """MONAI SegResNet, 8 initial filters, blocks (1, 2, 2, 4): a small residual baseline."""
    _no_deep_supervision("segresnet", deep_supervision)
    return SegResNet(
        spatial_dims=3,
        init_filters=8,
        in_channels=in_channels,
        out_channels=out_channels,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
    )


@register_model("unet_monai", family="monai", strides=(2, 2, 2, 1), features=(16, 32, 64, 128))
def unet_monai(in_channels: int, out_channels: int, *, deep_supervision: bool = False) -> nn.Module:
    """MONAI UNet, channels (16, 32, 64, 128), two residual units per level, instance norm."""
    _no_deep_supervision("unet_monai", deep_supervision)
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=2,
        norm="INSTANCE",
    )


@register_model(
    "swinunetr", family="monai", strides=(2, 2, 2, 2, 2), features=(12, 24, 48, 96, 192)
)
def swinunetr(in_channels: int, out_channels: int, *, deep_supervision: bool = False) -> nn.Module:
    """MONAI SwinUNETR with feature size 12 (~4 M params); patch edges must be multiples of 32."""
    _no_deep_supervision("swinunetr", deep_supervision)
    return SwinUNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        feature_size=12,
        spatial_dims=3,
    )
