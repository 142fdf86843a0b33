"""S3D: a sparse (SparK-style) ResEnc encoder for MAE pretraining, without copying the network.

Three parts, each switchable to reproduce the paper's cumulative ablation:

``sparse_conv``
    Every conv of the encoder (stem, residual blocks, 1x1x1 projection skips) has its output
    multiplied by the mask at its resolution (a forward hook), and every InstanceNorm3d of the
    encoder computes its statistics over visible voxels only. The norms are swapped for
    :class:`MaskedInstanceNorm3d`, a subclass that reuses the very same ``weight``/``bias``
    parameters, so ``network.state_dict()`` keeps exactly the dense keys.
``mask_token``
    A learned token (1, C, 1, 1, 1) per encoder scale fills masked positions of the skip features.
``densify``
    Before the decoder, each skip feature map is instance-normalised over visible voxels and, at
    every scale but full resolution, passed through a 3^3 conv (C -> C) (SparK's
    ``densify_norms`` / ``densify_projs``; ~7.85 M parameters on ResEnc-L).

The mask tokens and densification convs live in :class:`S3DExtras`, outside the network, so the
plain weights load into a dense ``create_model("resenc_l", 1, 1)`` with ``strict=True``. At scales
coarser than the mask grid the mask is all-visible (:func:`toolkit.masking.mask_at_resolution`).

Example:
    >>> from toolkit.masking import sample_block_mask
    >>> from toolkit.models import create_model
    >>> net = create_model("resenc_tiny", 1, 1)
    >>> keys = list(net.state_dict())
    >>> s3d = SparseResEncUNet(net)
    >>> list(s3d.network.state_dict()) == keys
    True
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = sample_block_mask(2, (32, 32, 32), 8, generator=g)
    >>> s3d(torch.randn(2, 1, 32, 32, 32), mask).shape
    torch.Size([2, 1, 32, 32, 32])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn
from torch.utils.hooks import RemovableHandle

from toolkit.masking import cumulative_strides, mask_at_resolution

__all__ = [
    "MaskContext",
    "MaskedInstanceNorm3d",
    "S3DExtras",
    "SparseEncoder",
    "SparseResEncUNet",
    "masked_instance_norm",
    "sparse_forward",
]


class MaskContext:
    """The grid mask of the forward pass in progress, and its views at each feature-map size.

    Patched modules ask the context for the mask at their output size; outside
    :meth:`using` there is no mask and they behave densely.
    """

    def __init__(self) -> None:
        self._mask: torch.Tensor | None = None
        self._cache: dict[tuple[Any, ...], torch.Tensor | None] = {}

    @property
    def active(self) -> bool:
        """Whether a mask is set."""
        return self._mask is not None

    @contextmanager
    def using(self, mask: torch.Tensor) -> Iterator[MaskContext]:
        """Set ``mask`` (B, 1, gd, gh, gw), 1 = visible, for the duration of the block."""
        if mask.ndim != 5 or mask.shape[1] != 1:
            raise ValueError(f"mask must be (B, 1, gd, gh, gw), got shape {tuple(mask.shape)}")
        self._mask, self._cache = mask, {}
        try:
            yield self
        finally:
            # Drop the references so the masks do not outlive the step.
            self._mask, self._cache = None, {}

    def at(self, size: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
        """The mask (B, 1, D, H, W) for a feature map of spatial ``size``.

        Returns:
            ``None`` when no mask is set or the scale is coarser than the grid (all visible), so
            callers can skip the multiplication; otherwise the mask in ``dtype``.
        """
        if self._mask is None:
            return None
        key = (tuple(int(s) for s in size), dtype)
        if key not in self._cache:
            grid = self._mask.shape[2:]
            if any(s < g for s, g in zip(key[0], grid, strict=True)):
                self._cache[key] = None
            else:
                self._cache[key] = mask_at_resolution(self._mask, key[0]).to(dtype)
        return self._cache[key]


def masked_instance_norm(
    x: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Instance normalisation with statistics over visible voxels only.

    Mean and (biased) variance per sample and channel are taken where ``mask == 1``; the result is
    zero where ``mask == 0``. Statistics are computed in float32 whatever the input dtype. A sample
    with no visible voxel gives zeros, not NaN.

    Args:
        x: features (B, C, D, H, W).
        mask: (B, 1, D, H, W) of zeros and ones.
        weight: optional affine scale (C,).
        bias: optional affine shift (C,).
        eps: added to the variance.

    Returns:
        (B, C, D, H, W) in the dtype of ``x``.
    """
    dims = (2, 3, 4)
    xf, mf = x.float(), mask.float()
    count = mf.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (xf * mf).sum(dim=dims, keepdim=True) / count
    centred = (xf - mean) * mf
    var = centred.square().sum(dim=dims, keepdim=True) / count
    # Fold the affine scale into the (B, C, 1, 1, 1) factor so the full-size work stays small;
    # ``centred`` is already zero at masked voxels, only the shift needs the mask.
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.float().view(1, -1, 1, 1, 1)
    y = centred * scale
    if bias is not None:
        y = torch.addcmul(y, mf, bias.float().view(1, -1, 1, 1, 1))
    return y.to(x.dtype)


class MaskedInstanceNorm3d(nn.InstanceNorm3d):
    """``InstanceNorm3d`` whose statistics skip masked voxels while a mask is set.

    Parameter and buffer names are those of ``nn.InstanceNorm3d``; without an active mask (or at a
    scale coarser than the mask grid) it is exactly ``nn.InstanceNorm3d``.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        *,
        context: MaskContext,
    ) -> None:
        if track_running_stats:
            raise ValueError("masked instance norm does not support running statistics")
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.context = context

    @classmethod
    def from_dense(cls, norm: nn.InstanceNorm3d, context: MaskContext) -> MaskedInstanceNorm3d:
        """A masked norm that shares ``norm``'s parameters (the same ``nn.Parameter`` objects)."""
        masked = cls(
            norm.num_features,
            eps=norm.eps,
            momentum=0.1 if norm.momentum is None else norm.momentum,
            affine=norm.affine,
            track_running_stats=norm.track_running_stats,
            context=context,
        )
        if norm.affine:
            masked.weight = norm.weight
            masked.bias = norm.bias
        masked.train(norm.training)
        return masked

    def to_dense(self) -> nn.InstanceNorm3d:
        """A plain ``nn.InstanceNorm3d`` sharing this module's parameters."""
        dense = nn.InstanceNorm3d(
            self.num_features,
            self.eps,
            0.1 if self.momentum is None else self.momentum,
            self.affine,
            self.track_running_stats,
        )
        if self.affine:
            dense.weight = self.weight
            dense.bias = self.bias
        dense.train(self.training)
        return dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.context.at(x.shape[2:], x.dtype)
        if mask is None:
            return super().forward(x)
        return masked_instance_norm(x, mask, self.weight, self.bias, self.eps)


class _MaskOutput:
    """Forward hook that multiplies a conv's output by the mask at its resolution.

    A callable object rather than a closure, so ``copy.deepcopy`` of a patched network gives hooks
    bound to the copy's context.
    """

    def __init__(self, context: MaskContext) -> None:
        self.context = context

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        mask = self.context.at(output.shape[2:], output.dtype)
        return output if mask is None else output * mask


class SparseEncoder:
    """Makes a ResEnc encoder sparse in place: conv-output hooks plus masked instance norms.

    Only modules under ``network.encoder`` (the stem and all stages, including projection skips)
    change; the decoder stays dense. Every reference to a norm (ResEnc holds each one twice, as
    ``.norm`` and ``.all_modules.N``) is replaced by the same masked module, so state-dict keys and
    parameter identity are unchanged. :meth:`remove` restores plain modules.

    Args:
        network: a dynamic-network-architectures ``ResidualEncoderUNet``.
        context: where patched modules read the current mask.
    """

    def __init__(self, network: nn.Module, context: MaskContext) -> None:
        if not isinstance(network, ResidualEncoderUNet):
            raise TypeError(f"S3D needs a ResidualEncoderUNet, got {type(network).__name__}")
        self.network = network
        self.context = context
        self._handles: list[RemovableHandle] = []
        hook = _MaskOutput(context)
        for module in network.encoder.modules():
            if isinstance(module, nn.Conv3d):
                self._handles.append(module.register_forward_hook(hook))
        _swap_norms(network.encoder, context)

    def remove(self) -> None:
        """Remove the hooks and put plain ``nn.InstanceNorm3d`` modules back."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        _swap_norms(self.network.encoder, None)


def _swap_norms(root: nn.Module, context: MaskContext | None) -> None:
    """Replace every InstanceNorm3d under ``root`` by a masked one (or back, for ``None``)."""
    replaced: dict[int, nn.Module] = {}
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if context is not None and type(child) is nn.InstanceNorm3d:
                new: nn.Module = replaced.setdefault(
                    id(child), MaskedInstanceNorm3d.from_dense(child, context)
                )
            elif context is None and isinstance(child, MaskedInstanceNorm3d):
                new = replaced.setdefault(id(child), child.to_dense())
            else:
                continue
            setattr(parent, name, new)


class S3DExtras(nn.Module):
    """Mask tokens and densification layers of S3D (the parameters that are not the network's).

    Args:
        features: channels per encoder stage.
        full_resolution: per stage, whether it runs at the input resolution (no densify conv).
        mask_token: learn one token (1, C, 1, 1, 1) per stage for masked positions.
        densify: visible-only instance norm at every stage and a 3^3 conv at every stage that is
            not full resolution.
    """

    def __init__(
        self,
        features: Sequence[int],
        full_resolution: Sequence[bool],
        *,
        mask_token: bool = True,
        densify: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(features) != len(full_resolution):
            raise ValueError("features and full_resolution need one entry per stage")
        self.use_mask_token = mask_token
        self.use_densify = densify
        self.eps = eps
        self.mask_tokens: nn.ParameterList | None = None
        self.densify_convs: nn.ModuleList | None = None
        if mask_token:
            tokens = [nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in features]
            for t in tokens:
                # SparK / nnssl initialisation: small truncated normal.
                nn.init.trunc_normal_(t, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens = nn.ParameterList(tokens)
        if densify:
            convs: list[nn.Module] = []
            for c, full in zip(features, full_resolution, strict=True):
                if full:
                    convs.append(nn.Identity())
                    continue
                conv = nn.Conv3d(c, c, kernel_size=3, padding=1, bias=True)
                nn.init.kaiming_normal_(conv.weight, a=1e-2)
                nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
                convs.append(conv)
            self.densify_convs = nn.ModuleList(convs)

    def forward(self, skips: Sequence[torch.Tensor], context: MaskContext) -> list[torch.Tensor]:
        """Turn sparse skip features into dense decoder inputs.

        Args:
            skips: encoder outputs, one (B, C_i, D_i, H_i, W_i) per stage, finest first.
            context: holds the current mask.

        Returns:
            The same number of tensors with the same shapes.
        """
        out: list[torch.Tensor] = []
        for i, feat in enumerate(skips):
            mask = context.at(feat.shape[2:], feat.dtype)
            if self.densify_convs is not None:
                if mask is None:
                    feat = F.instance_norm(feat, eps=self.eps)
                else:
                    feat = masked_instance_norm(feat, mask, eps=self.eps)
            if self.mask_tokens is not None and mask is not None:
                token = self.mask_tokens[i].to(feat.dtype)
                feat = feat * mask + token * (1.0 - mask)
            if self.densify_convs is not None:
                feat = self.densify_convs[i](feat)
            out.append(feat)
        return out


def sparse_forward(
    network: nn.Module,
    extras: S3DExtras,
    context: MaskContext,
    x: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One S3D forward pass: masked input, sparse encoder, densification, dense decoder.

    Args:
        network: a ``ResidualEncoderUNet`` (patched by :class:`SparseEncoder` for sparse convs).
        extras: the S3D mask tokens and densification layers.
        context: the context the patched modules read.
        x: input (B, C, D, H, W); D, H, W multiples of the grid.
        mask: grid mask (B, 1, gd, gh, gw), 1 = visible.

    Returns:
        The decoder output, (B, out_channels, D, H, W).
    """
    with context.using(mask.to(x.device)):
        full = context.at(x.shape[2:], x.dtype)
        skips = network.encoder(x if full is None else x * full)  # type: ignore[operator]
        skips = extras(skips, context)
    return network.decoder(skips)  # type: ignore[operator, no-any-return]


class SparseResEncUNet(nn.Module):
    """A ResEnc U-Net run as S3D: the network (dense keys) plus :class:`S3DExtras`.

    Args:
        network: a ``ResidualEncoderUNet``; patched in place (its state-dict keys do not change).
        sparse_conv: mask conv outputs and use visible-only norm statistics in the encoder.
        mask_token: fill masked positions of the skip features with learned tokens.
        densify: visible-only norm and 3^3 convs on the skip features before the decoder.

    Attributes:
        network: the patched network; ``network.state_dict()`` loads into a dense one strictly.
        extras: the S3D-only parameters.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        sparse_conv: bool = True,
        mask_token: bool = True,
        densify: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(network, ResidualEncoderUNet):
            raise TypeError(f"S3D needs a ResidualEncoderUNet, got {type(network).__name__}")
        self.network = network
        self.context = MaskContext()
        self.sparse: SparseEncoder | None = (
            SparseEncoder(network, self.context) if sparse_conv else None
        )
        self.extras = build_s3d_extras(network, mask_token=mask_token, densify=densify)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x`` (B, C, D, H, W) seen through ``mask`` (B, 1, gd, gh, gw)."""
        return sparse_forward(self.network, self.extras, self.context, x, mask)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Sparse encoder features (one per stage, finest first) before densification."""
        with self.context.using(mask.to(x.device)):
            full = self.context.at(x.shape[2:], x.dtype)
            return list(self.network.encoder(x if full is None else x * full))  # type: ignore[operator]

    def s3d_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the S3D-only parameters (mask tokens, densification convs)."""
        return self.extras.state_dict()

    def remove(self) -> nn.Module:
        """Undo the patching and return the plain dense network."""
        if self.sparse is not None:
            self.sparse.remove()
            self.sparse = None
        return self.network


def build_s3d_extras(network: nn.Module, *, mask_token: bool, densify: bool) -> S3DExtras:
    """:class:`S3DExtras` sized for a built ``ResidualEncoderUNet``."""
    encoder: Any = network.encoder
    totals = cumulative_strides([tuple(int(v) for v in s) for s in encoder.strides])
    full = [all(t == 1 for t in total) for total in totals]
    return S3DExtras(
        [int(c) for c in encoder.output_channels], full, mask_token=mask_token, densify=densify
    )
