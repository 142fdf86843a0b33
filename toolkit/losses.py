"""Losses: masked reconstruction for MAE pretraining, Dice + CE (MONAI) for segmentation.

Example:
    >>> pred, target = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    >>> mask = torch.ones(1, 1, 2, 2, 2); mask[..., 0] = 0  # half the voxels masked
    >>> float(reconstruction_loss(pred, target, mask))
    1.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DeepSupervisionLoss, DiceCELoss

from toolkit.errors import ConfigError

__all__ = [
    "RECONSTRUCTION_LOSSES",
    "NNUNetDeepSupervisionLoss",
    "reconstruction_loss",
    "segmentation_loss",
]

RECONSTRUCTION_LOSSES = ("mse_masked", "mse_all", "l1_masked")


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask_full: torch.Tensor,
    kind: str = "mse_masked",
) -> torch.Tensor:
    """Reconstruction error of an MAE, in float32 whatever the input dtype.

    ``mse_masked`` (the paper's) is ``sum((pred - target)^2 * (1 - m)) / (sum(1 - m) * C)``: the
    mean squared error over masked voxels and all channels. ``l1_masked`` is the same with absolute
    errors, ``mse_all`` the plain mean over every voxel. No per-patch target normalisation.

    If nothing is masked the masked losses are 0 (the denominator is clamped to 1, and the numerator
    is 0), still attached to the graph so ``backward()`` works and gives zero gradients.

    Args:
        pred: reconstruction (B, C, D, H, W).
        target: the unmasked input (B, C, D, H, W).
        mask_full: (B, 1, D, H, W) voxel mask, 1 = visible, 0 = masked.
        kind: ``mse_masked``, ``mse_all`` or ``l1_masked``.

    Returns:
        A scalar float32 tensor.
    """
    if kind not in RECONSTRUCTION_LOSSES:
        raise ConfigError(
            f"pretrain.loss: must be one of {', '.join(RECONSTRUCTION_LOSSES)}; got {kind!r}"
        )
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(
            f"pred and target must both be (B, C, D, H, W); got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    expected = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(mask_full.shape) != expected:
        raise ValueError(f"mask_full must be {expected}, got {tuple(mask_full.shape)}")
    p, t = pred.float(), target.float()
    if kind == "mse_all":
        return F.mse_loss(p, t)
    err = (p - t).square() if kind == "mse_masked" else (p - t).abs()
    hidden = 1.0 - mask_full.float()
    denom = (hidden.sum() * pred.shape[1]).clamp_min(1.0)
    return (err * hidden).sum() / denom


class NNUNetDeepSupervisionLoss(DeepSupervisionLoss):
    """MONAI's deep-supervision wrapper with nnU-Net's weights.

    Output ``i`` (full resolution first) is weighted ``1 / 2**i``, the coarsest output gets weight
    0, and the weights are normalised to sum to 1. Targets are resized to each output with
    nearest-neighbour sampling. A single tensor passes straight through to the inner loss.
    """

    def get_weights(self, levels: int = 1) -> list[float]:
        """nnU-Net deep-supervision weights for ``levels`` outputs."""
        levels = max(1, levels)
        weights = [1.0 / 2**i for i in range(levels)]
        if levels > 1:
            weights[-1] = 0.0
        total = sum(weights)
        return [w / total for w in weights]

    def get_loss(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Integer label maps cannot be interpolated; labels survive a float round trip exactly.
        if input.shape[2:] != target.shape[2:]:
            target = F.interpolate(target.float(), size=input.shape[2:], mode=self.interp_mode)
        return self.loss(input, target)  # type: ignore[no-any-return]


def segmentation_loss(num_classes: int, *, batch_dice: bool = False) -> NNUNetDeepSupervisionLoss:
    """Dice + cross-entropy configured like nnU-Net, via MONAI.

    Softmax over ``num_classes`` channels, one-hot labels, Dice without the background channel
    (nnU-Net's ``do_bg=False``), smoothing 1e-5, CE and Dice weighted 1:1. ``batch_dice=False``
    (Dice per sample) is what nnU-Net's planner picks for ``3d_fullres`` unless a ``3d_lowres``
    stage exists, which 160^3 patches of 1 mm brains rarely trigger; set it to pool the Dice over
    the batch. The result accepts a single logits tensor or a deep-supervision list (full
    resolution first) and computes in float32.

    Args:
        num_classes: output channels including background (>= 2).
        batch_dice: compute Dice over the whole batch instead of per sample.

    Returns:
        ``loss(logits (B, K, D, H, W) | list, labels (B, 1, D, H, W) integer) -> scalar``.
    """
    if num_classes < 2:
        raise ConfigError(
            f"num_classes: Dice + CE with softmax needs at least 2 classes, got {num_classes}"
        )
    dice_ce = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=1.0,
        lambda_ce=1.0,
    )
    return NNUNetDeepSupervisionLoss(dice_ce)
