"""The MAE model: a registered U-Net that reconstructs its input from a block-masked view.

Two variants (``mask.variant``):

``dense``
    The plain network sees ``x * mask`` (zero is the mean after z-scoring) or, with
    ``mask.input_mask_token``, a learned per-channel token at masked voxels.
``s3d``
    The ResEnc encoder is made sparse in place and mask tokens / densification convs are added
    (:mod:`toolkit.models.sparse`); ``mask.sparse_conv``, ``mask.mask_token`` and ``mask.densify``
    switch the three parts.

Either way ``model.network`` is the plain U-Net whose ``state_dict()`` has nnU-Net / nnssl keys, and
``model.extra_state_dict()`` holds everything else.

Example:
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny")
    >>> model = build_mae(cfg)
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = model.sample_mask(2, generator=g)
    >>> model(torch.randn(2, 1, 48, 48, 48), mask).shape
    torch.Size([2, 1, 48, 48, 48])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from toolkit.config import Config
from toolkit.errors import ConfigError
from toolkit.masking import (
    check_mask_geometry,
    mask_at_resolution,
    mask_geometry_warnings,
    mask_grid_shape,
    sample_block_mask,
)
from toolkit.models.initialization import init_weights, resolve_init
from toolkit.models.registry import ModelEntry, create_model, get_entry, list_models
from toolkit.models.resenc import encoder_strides
from toolkit.models.sparse import MaskContext, S3DExtras, SparseEncoder, build_s3d_extras
from toolkit.models.sparse import sparse_forward as _sparse_forward

__all__ = [
    "InputMaskToken",
    "MAEModel",
    "build_initial_mae",
    "build_mae",
    "build_segmentation_model",
    "mae_geometry_warnings",
]


class InputMaskToken(nn.Module):
    """A learned value per input channel for masked voxels of the dense MAE (starts at zero).

    Args:
        channels: input channels C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, channels, 1, 1, 1))

    def forward(self, x: torch.Tensor, mask_full: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, D, H, W) where ``mask_full`` (B, 1, D, H, W) is 1, the token elsewhere."""
        return x * mask_full + self.token.to(x.dtype) * (1.0 - mask_full)


class MAEModel(nn.Module):
    """A U-Net that reconstructs (B, C, D, H, W) images from a block mask.

    Build it with :func:`build_mae`. Sub-modules are ``network`` (plain, nnU-Net keys) and
    ``extras`` (S3D extras, the dense input token, or ``None``).

    Args:
        network: the U-Net with C input and C output channels.
        variant: ``"dense"`` or ``"s3d"``.
        patch_size: training patch (D, H, W), for :meth:`sample_mask`.
        block_size: mask block edge in voxels.
        ratio: mask ratio, or the fallback when ``ratio_range`` is set.
        ratio_range: optional per-sample ratio range.
        sparse_conv, mask_token, densify: the S3D switches (ignored for ``dense``).
        input_mask_token: dense only, learn the masked-voxel value.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        variant: str,
        patch_size: Sequence[int],
        block_size: int,
        ratio: float = 0.75,
        ratio_range: tuple[float, float] | None = None,
        sparse_conv: bool = True,
        mask_token: bool = True,
        densify: bool = True,
        input_mask_token: bool = False,
    ) -> None:
        super().__init__()
        if variant not in ("dense", "s3d"):
            raise ConfigError(f"mask.variant: must be dense or s3d, got {variant!r}")
        self.variant = variant
        self.patch_size = tuple(int(p) for p in patch_size)
        self.block_size = int(block_size)
        self.ratio = float(ratio)
        self.ratio_range = ratio_range
        self.network = network
        self.extras: nn.Module | None = None
        self._context = MaskContext()
        self._sparse: SparseEncoder | None = None
        if variant == "s3d":
            if sparse_conv:
                self._sparse = SparseEncoder(network, self._context)
            # Registered even when both switches are off (then it is an empty no-op), so the
            # forward pass has one code path for every ablation.
            self.extras = build_s3d_extras(network, mask_token=mask_token, densify=densify)
        elif input_mask_token:
            self.extras = InputMaskToken(_in_channels(network))

    def sample_mask(
        self,
        batch_size: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Masks (B, 1, gd, gh, gw) for this model's patch, block size and ratio settings."""
        return sample_block_mask(
            batch_size,
            self.patch_size,
            self.block_size,
            ratio=self.ratio,
            ratio_range=self.ratio_range,
            generator=generator,
            device=device,
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``x``.

        Args:
            x: z-scored images (B, C, D, H, W), D, H, W multiples of the mask grid.
            mask: grid mask (B, 1, gd, gh, gw), 1 = visible.

        Returns:
            Reconstruction (B, C, D, H, W) for every voxel (the loss picks the masked ones).
        """
        _check_pair(x, mask)
        if self.variant == "s3d":
            extras = cast(S3DExtras, self.extras)
            return _sparse_forward(self.network, extras, self._context, x, mask)
        full = mask_at_resolution(mask.to(device=x.device, dtype=x.dtype), x.shape[2:])
        if isinstance(self.extras, InputMaskToken):
            return self.network(self.extras(x, full))  # type: ignore[no-any-return]
        return self.network(x * full)  # type: ignore[no-any-return]

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters outside ``network``: S3D tokens/convs or the dense input token (or none)."""
        return {} if self.extras is None else self.extras.state_dict()

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`extra_state_dict` (strict)."""
        if self.extras is None:
            if state:
                raise ConfigError(
                    f"mask.variant: this {self.variant} model has no extra parameters but the "
                    f"checkpoint has {sorted(state)[:3]}"
                )
            return
        self.extras.load_state_dict(state, strict=True)


def _in_channels(network: nn.Module) -> int:
    for module in network.modules():
        if isinstance(module, nn.Conv3d):
            return int(module.in_channels)
    raise TypeError(f"cannot find the input conv of {type(network).__name__}")


def _check_pair(x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"x must be (B, C, D, H, W), got shape {tuple(x.shape)}")
    if mask.ndim != 5 or mask.shape[1] != 1 or mask.shape[0] != x.shape[0]:
        raise ValueError(
            f"mask must be (B, 1, gd, gh, gw) with B = {x.shape[0]}, got {tuple(mask.shape)}"
        )
    if any(s % g for s, g in zip(x.shape[2:], mask.shape[2:], strict=True)):
        raise ValueError(
            f"image size {tuple(x.shape[2:])} is not a multiple of the mask grid "
            f"{tuple(mask.shape[2:])}"
        )


def _check_patch(patch_size: Sequence[int], entry: ModelEntry) -> None:
    total = entry.total_stride
    if any(p % total for p in patch_size):
        raise ConfigError(
            f"data.patch_size: {tuple(patch_size)} must be a multiple of {total} on every axis "
            f"for {entry.name} (its total downsampling)"
        )


def build_mae(cfg: Config) -> MAEModel:
    """Build the MAE model described by ``cfg`` (``model``, ``mask`` and ``data.patch_size``).

    Weights follow ``model.init`` for the pretraining stage (``auto``: PyTorch's defaults, as
    nnssl); they are drawn from torch's global generator (see :func:`build_initial_mae`).

    The network gets ``model.in_channels`` inputs and as many outputs. For ``s3d`` the mask must
    be exact at every stage finer than a block (:func:`toolkit.masking.check_mask_geometry` with the
    network's strides); for ``dense`` the blocks only need to tile the patch.

    Raises:
        ConfigError: unknown network, s3d on a network without it, a patch the network cannot
            take, or a block size that does not fit.
    """
    entry = get_entry(cfg.model.name)
    if cfg.mask.variant == "s3d" and not entry.supports_s3d:
        s3d_ok = ", ".join(n for n in list_models() if get_entry(n).supports_s3d)
        raise ConfigError(
            f"mask.variant: s3d needs a ResEnc network but model.name={entry.name} is dense-only; "
            f"use mask.variant=dense or one of {s3d_ok}"
        )
    _check_patch(cfg.data.patch_size, entry)
    channels = cfg.model.in_channels
    scheme = resolve_init(cfg.model.init, "pretrain")
    network = create_model(entry.name, channels, channels, deep_supervision=False, init=scheme)
    if cfg.mask.variant == "s3d":
        check_mask_geometry(cfg.data.patch_size, cfg.mask.block_size, encoder_strides(network))
    else:
        mask_grid_shape(cfg.data.patch_size, cfg.mask.block_size)
    model = MAEModel(
        network,
        variant=cfg.mask.variant,
        patch_size=cfg.data.patch_size,
        block_size=cfg.mask.block_size,
        ratio=cfg.mask.ratio,
        ratio_range=cfg.mask.ratio_range,
        sparse_conv=cfg.mask.sparse_conv,
        mask_token=cfg.mask.mask_token,
        densify=cfg.mask.densify,
        input_mask_token=cfg.mask.input_mask_token,
    )
    if isinstance(model.extras, S3DExtras):
        # Densification convs follow the network's scheme; the tokens (parameters, not modules)
        # keep SparK's truncated normal.
        init_weights(model.extras, scheme)
    return model


def mae_geometry_warnings(cfg: Config) -> list[str]:
    """:func:`toolkit.masking.mask_geometry_warnings` for ``cfg``'s patch, block and network.

    Example:
        >>> from toolkit.config import load_config
        >>> mae_geometry_warnings(load_config("tiny"))
        []
    """
    entry = get_entry(cfg.model.name)
    return mask_geometry_warnings(cfg.data.patch_size, cfg.mask.block_size, entry.strides)


def build_initial_mae(cfg: Config, seed: int) -> MAEModel:
    """The pretraining network of ``cfg`` exactly as a pretraining run with ``seed`` starts it.

    Same architecture, ``model.init`` scheme and random draws as step 0 of
    :func:`toolkit.pretrain.pretrain` with ``runtime.seed = seed`` (the engine seeds torch with
    it before building the model); torch's global random state is left as it was. Use it for
    "random encoders of the same architecture and init" (e.g. as a probe baseline).

    Args:
        cfg: the config (``model``, ``mask``, ``data.patch_size``).
        seed: the seed the weights are drawn with.

    Example:
        >>> from toolkit.config import load_config
        >>> a = build_initial_mae(load_config("tiny"), seed=0)
        >>> b = build_initial_mae(load_config("tiny"), seed=0)
        >>> all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_mae(cfg)


def build_segmentation_model(cfg: Config, num_classes: int) -> nn.Module:
    """The plain network of ``cfg.model`` with ``num_classes`` outputs, for fine-tuning.

    Args:
        cfg: uses ``model.name``, ``model.in_channels``, ``model.deep_supervision``,
            ``model.init`` (``auto``: nnU-Net's initialisation) and ``data.patch_size``.
        num_classes: output channels including background (at least 2: the loss is a softmax).

    Raises:
        ConfigError: fewer than 2 classes, a patch the network cannot take, or deep supervision on
            a network without it.
    """
    if num_classes < 2:
        raise ConfigError(
            f"num_classes: segmentation needs background plus at least one class, got {num_classes}"
        )
    entry = get_entry(cfg.model.name)
    _check_patch(cfg.data.patch_size, entry)
    return create_model(
        entry.name,
        cfg.model.in_channels,
        num_classes,
        deep_supervision=cfg.model.deep_supervision,
        init=resolve_init(cfg.model.init, "finetune"),
    )


def describe_mae(model: MAEModel) -> dict[str, Any]:
    """Parameter counts of an MAE model: ``network``, ``extras`` and ``total``."""
    net = sum(p.numel() for p in model.network.parameters())
    extra = 0 if model.extras is None else sum(p.numel() for p in model.extras.parameters())
    return {"variant": model.variant, "network": net, "extras": extra, "total": net + extra}
