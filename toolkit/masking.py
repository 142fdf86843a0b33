"""Random block masks for MAE pretraining, sampled from an explicit :class:`torch.Generator`.

A mask lives on a coarse grid: one cell per ``block_size``^3 block of the patch, so a 160^3
patch with 16^3 blocks has a 10^3 grid. Masks are float tensors (B, 1, gd, gh, gw) with
**1 = visible, 0 = masked**; every sample has exactly ``round(ratio * cells)`` masked cells.

Everything here is a pure function: the same generator state gives the same mask. Sampling always
happens on the generator's own device and the result is then moved to ``device``, so a seeded CPU
generator gives bit-identical masks whether training runs on a CPU or a GPU.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = sample_block_mask(2, (48, 48, 48), 8, ratio=0.75, generator=g)
    >>> mask.shape, int((mask == 0).sum())
    (torch.Size([2, 1, 6, 6, 6]), 324)
    >>> mask_at_resolution(mask, (24, 24, 24)).shape
    torch.Size([2, 1, 24, 24, 24])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError

__all__ = [
    "MIN_BLOCKS_PER_AXIS",
    "check_mask_geometry",
    "cumulative_strides",
    "mask_at_resolution",
    "mask_geometry_warnings",
    "mask_grid_shape",
    "sample_block_mask",
    "upsample_mask",
    "valid_block_sizes",
]

StrideSpec = Sequence[int | Sequence[int]]

#: Fewer mask blocks than this per patch axis leaves too few visible blocks to reconstruct from
#: (the paper has 10: a 160^3 patch of 16^3 blocks).
MIN_BLOCKS_PER_AXIS = 8


def _triple(size: Sequence[int], name: str) -> tuple[int, int, int]:
    if len(size) != 3:
        raise ConfigError(f"{name}: expected 3 entries (D, H, W), got {tuple(size)!r}")
    return (int(size[0]), int(size[1]), int(size[2]))


def cumulative_strides(strides: StrideSpec) -> list[tuple[int, int, int]]:
    """Total downsampling factor (D, H, W) after each encoder stage.

    Args:
        strides: per-stage strides as in ``ResidualEncoderUNet`` (ints or (D, H, W) triples), e.g.
            ``(1, 2, 2, 2, 2, 2)``.

    Returns:
        One (D, H, W) factor per stage, e.g. ``[(1, 1, 1), (2, 2, 2), ..., (32, 32, 32)]``.
    """
    total = (1, 1, 1)
    out: list[tuple[int, int, int]] = []
    for s in strides:
        s3 = (s, s, s) if isinstance(s, int) else _triple(s, "strides")
        total = (total[0] * s3[0], total[1] * s3[1], total[2] * s3[2])
        out.append(total)
    return out


def mask_grid_shape(patch_size: Sequence[int], block_size: int) -> tuple[int, int, int]:
    """Shape (gd, gh, gw) of the mask grid for a patch.

    Args:
        patch_size: patch edge lengths (D, H, W) in voxels.
        block_size: edge of one mask block in voxels.

    Raises:
        ConfigError: ``mask.block_size`` is not positive or does not divide every patch edge.
    """
    patch = _triple(patch_size, "data.patch_size")
    if block_size < 1:
        raise ConfigError(f"mask.block_size: must be >= 1, got {block_size}")
    if any(p % block_size for p in patch):
        fits = _divisors_common(patch)
        raise ConfigError(
            f"mask.block_size: {block_size} does not divide data.patch_size {patch}, so the mask "
            f"grid would not tile the patch; block sizes that divide it: {_fmt(fits)}"
        )
    return (patch[0] // block_size, patch[1] // block_size, patch[2] // block_size)


def valid_block_sizes(patch_size: Sequence[int], strides: StrideSpec) -> list[int]:
    """Block sizes that tile ``patch_size`` and stay exact at every stage they must be exact.

    A block must be a multiple of the total downsampling of every stage whose feature voxels are no
    larger than a block; coarser stages see an all-visible mask (see :func:`mask_at_resolution`).
    """
    patch = _triple(patch_size, "data.patch_size")
    totals = cumulative_strides(strides)
    return [b for b in _divisors_common(patch) if _misaligned_stage(b, totals) is None]


def check_mask_geometry(patch_size: Sequence[int], block_size: int, strides: StrideSpec) -> None:
    """Check that block masks fit both the patch and the network's feature maps.

    Two things must hold: the blocks tile the patch, and at every encoder stage whose total
    downsampling is at most the block size the block is a whole number of feature voxels, so the
    mask is exact there (sparse convolutions and masked statistics depend on it).

    Args:
        patch_size: patch edge lengths (D, H, W) in voxels.
        block_size: edge of one mask block in voxels.
        strides: the network's per-stage strides, e.g. ``(1, 2, 2, 2, 2, 2)``.

    Raises:
        ConfigError: naming ``mask.block_size``, the reason, and the block sizes that would fit.
    """
    mask_grid_shape(patch_size, block_size)
    totals = cumulative_strides(strides)
    stage = _misaligned_stage(block_size, totals)
    if stage is not None:
        fits = valid_block_sizes(patch_size, strides)
        raise ConfigError(
            f"mask.block_size: {block_size} is not a multiple of the total downsampling "
            f"{totals[stage]} at encoder stage {stage}, so masked blocks would cut feature voxels "
            f"in half there; block sizes that fit data.patch_size {tuple(patch_size)} and this "
            f"network: {_fmt(fits)}"
        )


def mask_geometry_warnings(
    patch_size: Sequence[int],
    block_size: int,
    strides: StrideSpec,
    *,
    min_blocks_per_axis: int = MIN_BLOCKS_PER_AXIS,
) -> list[str]:
    """Ways a mask geometry departs from the paper's ratios (empty when it keeps them).

    The paper masks 16^3 blocks of a 160^3 patch (10 blocks per axis) with a network whose total
    stride is 32 = 2 x the block, so its 5^3 bottleneck is coarser than the blocks and runs dense.
    Two departures change what the MAE learns and are reported: fewer than
    ``min_blocks_per_axis`` blocks per axis (few visible blocks to reconstruct from), and a
    bottleneck that is not coarser than the blocks (the coarsest scale is masked too). Geometry
    that cannot work at all raises in :func:`check_mask_geometry` instead.

    Args:
        patch_size: patch edge lengths (D, H, W) in voxels.
        block_size: edge of one mask block in voxels.
        strides: the network's per-stage strides, e.g. ``(1, 2, 2, 2, 2, 2)``.
        min_blocks_per_axis: the least number of blocks per axis that is not reported.

    Returns:
        One line per departure, naming the config fields.

    Example:
        >>> mask_geometry_warnings((160, 160, 160), 16, (1, 2, 2, 2, 2, 2))
        []
        >>> len(mask_geometry_warnings((48, 48, 48), 8, (1, 2, 2, 2)))
        2
    """
    patch = _triple(patch_size, "data.patch_size")
    out: list[str] = []
    per_axis = tuple(p // block_size for p in patch)
    if min(per_axis) < min_blocks_per_axis:
        out.append(
            f"mask.block_size: {block_size} gives {per_axis} blocks per axis on data.patch_size "
            f"{patch}; fewer than {min_blocks_per_axis} leaves few visible blocks to reconstruct "
            "from (paper: 10, 16^3 blocks on 160^3)"
        )
    total = cumulative_strides(strides)[-1]
    if min(total) <= block_size:
        out.append(
            f"mask.block_size: {block_size} is not finer than the network's total stride "
            f"{total}, so its bottleneck is masked too; the paper's bottleneck (stride 32) is "
            "coarser than its 16^3 blocks and runs dense (use a block of at most half the stride)"
        )
    return out


def sample_block_mask(
    batch_size: int,
    patch_size: Sequence[int],
    block_size: int,
    *,
    ratio: float = 0.75,
    ratio_range: tuple[float, float] | None = None,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample random block masks with an exact number of masked cells per sample.

    Each sample masks exactly ``round(r * cells)`` grid cells (``torch.round``: halves go to the
    even number), chosen uniformly without replacement. With ``ratio_range=(lo, hi)`` every sample
    draws its own ``r ~ U[lo, hi]`` first; otherwise ``r = ratio``.

    The generator is consumed on its own device: first ``B`` uniforms for the ratios (only with
    ``ratio_range``), then ``B x cells`` uniforms for the cell order. The result is then moved to
    ``device``. A seeded CPU generator therefore gives identical masks for any target device; a CUDA
    generator gives a different (but equally reproducible) stream.

    Args:
        batch_size: number of masks B.
        patch_size: patch edge lengths (D, H, W) in voxels.
        block_size: edge of one mask block in voxels; must divide every patch edge.
        ratio: fraction of cells masked, in [0, 1].
        ratio_range: optional (lo, hi) with 0 <= lo <= hi <= 1 for per-sample ratios.
        generator: the only source of randomness.
        device: where the returned mask lives (default: the generator's device).

    Returns:
        Float tensor (B, 1, gd, gh, gw), 1 = visible, 0 = masked.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> m = sample_block_mask(3, (32, 32, 32), 16, ratio_range=(0.25, 1.0), generator=g)
        >>> (m == 0).flatten(1).sum(1).tolist()
        [2, 3, 3]
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    if not (0.0 <= ratio <= 1.0 and math.isfinite(ratio)):
        raise ConfigError(f"mask.ratio: must be in [0, 1], got {ratio!r}")
    if ratio_range is not None and (
        len(ratio_range) != 2 or not 0.0 <= ratio_range[0] <= ratio_range[1] <= 1.0
    ):
        raise ConfigError(f"mask.ratio_range: need 0 <= low <= high <= 1, got {ratio_range!r}")
    grid = mask_grid_shape(patch_size, block_size)
    cells = grid[0] * grid[1] * grid[2]
    src = generator.device
    if ratio_range is None:
        ratios = torch.full((batch_size,), float(ratio), dtype=torch.float64, device=src)
    else:
        lo, hi = float(ratio_range[0]), float(ratio_range[1])
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64, device=src)
        ratios = lo + (hi - lo) * u
    num_masked = torch.round(ratios * cells).long()
    # The rank of each cell in a random order: cells ranked below num_masked are masked, so the
    # count is exact per sample while every subset of that size is equally likely.
    scores = torch.rand(batch_size, cells, generator=generator, device=src)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    mask = (ranks >= num_masked[:, None]).to(torch.float32)
    mask = mask.view(batch_size, 1, *grid)
    return mask if device is None else mask.to(device)


def upsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of a grid mask to a feature-map size.

    For sizes that are whole multiples of the grid this repeats every cell into a block (the exact
    case); other sizes use ``nearest-exact`` sampling.

    Args:
        mask: (B, 1, gd, gh, gw) grid mask, 1 = visible.
        size: target (D, H, W).

    Returns:
        (B, 1, D, H, W) tensor of the same dtype and device as ``mask``.
    """
    target = _triple(size, "size")
    if mask.ndim != 5:
        raise ValueError(f"mask must be (B, 1, gd, gh, gw), got shape {tuple(mask.shape)}")
    grid = tuple(mask.shape[2:])
    if grid == target:
        return mask
    if all(t % g == 0 for t, g in zip(target, grid, strict=True)):
        out = mask
        for axis, (t, g) in enumerate(zip(target, grid, strict=True)):
            if t != g:
                out = out.repeat_interleave(t // g, dim=axis + 2)
        return out
    return F.interpolate(mask.float(), size=target, mode="nearest-exact").to(mask.dtype)


def mask_at_resolution(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The mask as seen by a feature map of ``size`` (the rule S3D uses at every scale).

    Where the feature map is at least as fine as the grid on every axis, the mask is upsampled by
    :func:`upsample_mask`. Where a feature voxel is larger than a block along any axis it mixes
    visible and masked blocks, and following the paper the mask is all-visible there (this is the
    bottleneck of ResEnc-L with 16^3 blocks: 5^3 features, 10^3 grid).

    Args:
        mask: (B, 1, gd, gh, gw) grid mask, 1 = visible.
        size: feature-map (D, H, W).

    Returns:
        (B, 1, D, H, W) tensor, dtype and device of ``mask``.
    """
    target = _triple(size, "size")
    grid = tuple(mask.shape[2:])
    if any(t < g for t, g in zip(target, grid, strict=True)):
        return mask.new_ones((mask.shape[0], 1, *target))
    return upsample_mask(mask, target)


def _misaligned_stage(block: int, totals: Sequence[tuple[int, int, int]]) -> int | None:
    for i, total in enumerate(totals):
        for t in total:
            if t <= block and block % t:
                return i
    return None


def _divisors_common(patch: tuple[int, int, int]) -> list[int]:
    g = math.gcd(*patch)
    return [d for d in range(1, g + 1) if g % d == 0]


def _fmt(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"
