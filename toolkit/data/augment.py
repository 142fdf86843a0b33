"""Batched spatial augmentation on the training device: rotation, isotropic scaling, mirroring.

The paper's pretraining augmentation (RECIPE.md): rotation up to ±30° about each axis with
probability 0.2, isotropic scaling in [0.7, 1.4] with probability 0.2, mirroring on all three axes;
no intensity augmentation. Done per sample on CPU with cubic interpolation (batchgenerators), that
costs ~12 cores per GPU at 160^3; here the whole batch is resampled on the device with one
``affine_grid`` + trilinear ``grid_sample``, and only the samples that were rotated or scaled are
resampled at all (mirroring is an exact ``flip``).

Randomness comes only from an explicit ``torch.Generator``: :func:`draw_transforms` takes a fixed
number of uniforms per sample (9), so the same generator state gives the same transforms on any
device and for any subset of rows (DDP ranks draw for the global batch and keep their rows).

Geometry: transforms act in voxel space about the patch centre (so non-cubic patches rotate
without shear). A scale ``s > 1`` enlarges the content (zoom in); ``s < 1`` shrinks it and the
border that comes from outside the patch is filled with 0, which is the z-scored mean and what the
cache pads with outside a volume (see :mod:`toolkit.data.sampling` for why no margin is cropped).
Labels are resampled with nearest neighbour (values stay in the label set; outside = 0).

Example:
    >>> aug = SpatialAugmentation(prob=1.0)
    >>> x = torch.randn(2, 1, 16, 16, 16)
    >>> augment_batch(x, torch.Generator().manual_seed(0), aug).shape
    torch.Size([2, 1, 16, 16, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, overload

import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError

#: Uniforms drawn per sample: rotation gate, 3 angles, scale gate, scale, 3 mirror gates.
DRAWS_PER_SAMPLE = 9


@dataclass(frozen=True)
class SpatialAugmentation:
    """Settings of :func:`augment_batch`.

    Attributes:
        enabled: False makes :func:`augment_batch` return its input unchanged.
        rotation_deg: maximum rotation about each axis, degrees (angles ~ U[-max, max]).
        scale_range: (low, high) isotropic scale factor; 1 = unchanged.
        prob: probability of a rotation and, independently, of a scaling, per sample.
        mirror: flip each axis with probability 0.5.
    """

    enabled: bool = True
    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.7, 1.4)
    prob: float = 0.2
    mirror: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range: need 0 < low <= high, got {self.scale_range}")
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"augment_prob: must be in [0, 1], got {self.prob}")
        if self.rotation_deg < 0:
            raise ConfigError(f"rotation_deg: must be >= 0, got {self.rotation_deg}")

    @classmethod
    def from_config(cls, section: Any) -> SpatialAugmentation:
        """From a config section with ``augment``, ``rotation_deg``, ``scale_range``,
        ``augment_prob`` and ``mirror`` (e.g. ``cfg.pretrain``)."""
        return cls(
            enabled=bool(section.augment),
            rotation_deg=float(section.rotation_deg),
            scale_range=(float(section.scale_range[0]), float(section.scale_range[1])),
            prob=float(section.augment_prob),
            mirror=bool(section.mirror),
        )


@dataclass(frozen=True)
class SpatialTransforms:
    """Per-sample transforms drawn by :func:`draw_transforms` (all tensors on one device).

    Attributes:
        matrices: (B, 3, 3) linear maps from output to input voxel offsets about the patch centre,
            in (D, H, W) axis order.
        resample: (B,) bool, True where the matrix is not the identity.
        flips: (B, 3) bool, mirror the D, H, W axis.
    """

    matrices: torch.Tensor
    resample: torch.Tensor
    flips: torch.Tensor

    def __len__(self) -> int:
        return int(self.matrices.shape[0])

    def select(self, rows: torch.Tensor | list[int]) -> SpatialTransforms:
        """The transforms of some rows (a DDP rank's share of the global batch)."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.matrices.device)
        return SpatialTransforms(self.matrices[idx], self.resample[idx], self.flips[idx])

    def to(self, device: torch.device | str) -> SpatialTransforms:
        """The same transforms on another device."""
        return SpatialTransforms(
            self.matrices.to(device), self.resample.to(device), self.flips.to(device)
        )


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about the D, H, W axes -> (B, 3, 3) rotations R_D @ R_H @ R_W."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def rot(i: int, axes: tuple[int, int]) -> torch.Tensor:
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], dim=1).view(-1, 3, 3)
        m = m.clone()
        a, b = axes
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return m

    return rot(0, (1, 2)) @ rot(1, (0, 2)) @ rot(2, (0, 1))


def draw_transforms(
    batch_size: int, generator: torch.Generator, aug: SpatialAugmentation
) -> SpatialTransforms:
    """Draw one transform per sample from ``generator`` (on the generator's device).

    Exactly ``batch_size x 9`` uniforms are consumed whatever the settings, so switching one
    component off does not change the others' draws.
    """
    u = torch.rand(batch_size, DRAWS_PER_SAMPLE, generator=generator, device=generator.device)
    u = u.double()
    eye = torch.eye(3, dtype=torch.float64, device=u.device).expand(batch_size, 3, 3)
    rotate = (u[:, 0] < aug.prob) & (aug.rotation_deg > 0)
    scale_on = u[:, 4] < aug.prob
    max_rad = math.radians(aug.rotation_deg)
    angles = (2.0 * u[:, 1:4] - 1.0) * max_rad * rotate[:, None]
    lo, hi = aug.scale_range
    scale = torch.where(scale_on, lo + (hi - lo) * u[:, 5], torch.ones_like(u[:, 5]))
    # Output -> input: undo the rotation and divide by the zoom factor.
    matrices = _rotation_matrices(angles).transpose(1, 2) / scale[:, None, None]
    resample = rotate | (scale_on & (scale != 1.0))
    matrices = torch.where(resample[:, None, None], matrices, eye)
    flips = (u[:, 6:9] < 0.5) & aug.mirror
    if not aug.enabled:
        matrices, resample, flips = eye.clone(), torch.zeros_like(resample), torch.zeros_like(flips)
    return SpatialTransforms(matrices.float(), resample, flips)


def _theta(matrices: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Voxel-space (D, H, W) maps -> ``affine_grid`` thetas (normalised x=W, y=H, z=D)."""
    rev = [2, 1, 0]
    m = matrices[:, rev][:, :, rev]  # to (W, H, D) order
    half = torch.tensor([size[2], size[1], size[0]], dtype=m.dtype, device=m.device) / 2.0
    lin = m * half[None, None, :] / half[None, :, None]  # diag(1/half) @ m @ diag(half)
    zeros = torch.zeros(m.shape[0], 3, 1, dtype=m.dtype, device=m.device)
    return torch.cat([lin, zeros], dim=2)


def _affine_grid(theta: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """``F.affine_grid(theta, (n, 1, *size), align_corners=False)`` in float32 under any autocast.

    Built from broadcast multiply-adds rather than a batched matmul, which autocast would run in
    bf16 (an error of ~0.3 voxels at 160^3).
    """
    theta = theta.to(torch.float32)
    d, h, w = size
    axes = [
        (2.0 * torch.arange(n, dtype=torch.float32, device=theta.device) + 1.0) / n - 1.0
        for n in (w, h, d)
    ]
    xs, ys, zs = axes[0].view(1, 1, 1, w), axes[1].view(1, 1, h, 1), axes[2].view(1, d, 1, 1)
    coords = []
    for i in range(3):
        t = theta[:, i].view(-1, 4, 1, 1, 1)
        coords.append(t[:, 0] * xs + t[:, 1] * ys + t[:, 2] * zs + t[:, 3])
    return torch.stack(coords, dim=-1)


def _resample(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    size = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
    grid = _affine_grid(theta, size)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the rows of ``x`` whose ``flips`` (B, 3) say so; the gates are read on the CPU."""
    host = flips.cpu()  # drawn on the CPU: no device synchronisation
    for axis in range(3):
        if bool(host[:, axis].any()):
            gate = flips[:, axis].to(x.device).view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(gate, x.flip(2 + axis), x)
    return x


@overload
def apply_transforms(
    x: torch.Tensor, transforms: SpatialTransforms, *, label: None = None
) -> torch.Tensor: ...


@overload
def apply_transforms(
    x: torch.Tensor, transforms: SpatialTransforms, *, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]: ...


def apply_transforms(
    x: torch.Tensor, transforms: SpatialTransforms, *, label: torch.Tensor | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Apply per-sample transforms to a batch (trilinear) and optionally its labels (nearest).

    Args:
        x: (B, C, D, H, W) floating-point images.
        transforms: B transforms (any device; moved to ``x``'s).
        label: optional (B, 1, D, H, W) integer or float label map.

    Returns:
        The transformed ``x`` (same dtype), or ``(x, label)`` with ``label`` in its input dtype.
    """
    if x.dim() != 5:
        raise ValueError(f"expected x of shape (B, C, D, H, W), got {tuple(x.shape)}")
    if len(transforms) != x.shape[0]:
        raise ValueError(f"{len(transforms)} transforms for a batch of {x.shape[0]}")
    if label is not None and (label.dim() != 5 or label.shape[0] != x.shape[0]):
        raise ValueError(f"expected label of shape (B, 1, D, H, W), got {tuple(label.shape)}")
    # Which rows move is decided where the transforms were drawn (the CPU), so a GPU step never
    # waits for the device to answer it; only the matrices and indices travel.
    size = (int(x.shape[2]), int(x.shape[3]), int(x.shape[4]))
    host_rows = torch.nonzero(transforms.resample.cpu()).flatten()
    t = transforms.to(x.device)
    if host_rows.numel():
        rows = host_rows.to(x.device)
        theta = _theta(t.matrices[rows], size)
        moved = _resample(x[rows].float(), theta, "bilinear").to(x.dtype)
        x = x.index_copy(0, rows, moved)
        if label is not None:
            lab = _resample(label[rows].float(), theta, "nearest").round().to(label.dtype)
            label = label.index_copy(0, rows, lab)
    x = _flip(x, transforms.flips)
    if label is None:
        return x
    return x, _flip(label, transforms.flips)


@overload
def augment_batch(
    x: torch.Tensor, generator: torch.Generator, aug: SpatialAugmentation, *, label: None = None
) -> torch.Tensor: ...


@overload
def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    aug: SpatialAugmentation,
    *,
    label: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]: ...


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    aug: SpatialAugmentation,
    *,
    label: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw one random transform per sample and apply it (see the module docstring).

    Args:
        x: (B, C, D, H, W) images on the training device.
        generator: the only source of randomness (a CPU generator gives device-independent draws).
        aug: settings; ``aug.enabled=False`` returns the inputs unchanged.
        label: optional (B, 1, D, H, W) label map, transformed identically with nearest neighbour.

    Returns:
        Augmented ``x``, or ``(x, label)``.
    """
    if not aug.enabled:
        return x if label is None else (x, label)
    transforms = draw_transforms(int(x.shape[0]), generator, aug)
    if label is None:
        return apply_transforms(x, transforms)
    return apply_transforms(x, transforms, label=label)


__all__ = [
    "DRAWS_PER_SAMPLE",
    "SpatialAugmentation",
    "SpatialTransforms",
    "apply_transforms",
    "augment_batch",
    "draw_transforms",
]
