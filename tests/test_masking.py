"""Block masks: exact counts, reproducibility, per-sample ratios, geometry checks, upsampling."""

from __future__ import annotations

import pytest
import torch

from toolkit.errors import ConfigError
from toolkit.masking import (
    check_mask_geometry,
    cumulative_strides,
    mask_at_resolution,
    mask_geometry_warnings,
    mask_grid_shape,
    sample_block_mask,
    upsample_mask,
    valid_block_sizes,
)

RESENC_L_STRIDES = (1, 2, 2, 2, 2, 2)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _masked_counts(mask: torch.Tensor) -> list[int]:
    return (mask == 0).flatten(1).sum(1).tolist()


# --------------------------------------------------------------------------------------------------
# Geometry


def test_grid_shape_of_the_paper_patch() -> None:
    assert mask_grid_shape((160, 160, 160), 16) == (10, 10, 10)
    assert mask_grid_shape((48, 32, 64), 8) == (6, 4, 8)


def test_block_that_does_not_tile_the_patch_names_the_field_and_what_fits() -> None:
    with pytest.raises(ConfigError, match=r"mask\.block_size: 12 does not divide") as err:
        mask_grid_shape((48, 48, 40), 12)
    assert "1, 2, 4, 8" in str(err.value)


def test_cumulative_strides_multiply_per_axis() -> None:
    assert cumulative_strides((1, 2, (1, 2, 2))) == [(1, 1, 1), (2, 2, 2), (2, 4, 4)]


def test_paper_geometry_passes_and_coarser_stages_do_not_constrain() -> None:
    check_mask_geometry((160, 160, 160), 16, RESENC_L_STRIDES)
    # 32^3 blocks: the bottleneck (total stride 32) is exact too.
    check_mask_geometry((160, 160, 160), 32, RESENC_L_STRIDES)
    # 8^3 blocks: stages at 16 and 32 are coarser than a block, so they are all-visible, not wrong.
    check_mask_geometry((160, 160, 160), 8, RESENC_L_STRIDES)


def test_block_not_a_multiple_of_a_finer_stage_is_refused_with_valid_sizes() -> None:
    # 40 tiles 160 and is a multiple of 8, but a 16-voxel feature cell would straddle two blocks.
    with pytest.raises(ConfigError, match=r"mask\.block_size: 40 is not a multiple") as err:
        check_mask_geometry((160, 160, 160), 40, RESENC_L_STRIDES)
    message = str(err.value)
    assert "(16, 16, 16)" in message and "stage 4" in message
    assert message.endswith("1, 2, 4, 8, 16, 32, 160")


def test_valid_block_sizes_for_the_tiny_network() -> None:
    assert valid_block_sizes((48, 48, 48), (1, 2, 2, 2)) == [1, 2, 4, 8, 16, 24, 48]


# --------------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize(
    ("ratio", "expected"), [(0.0, 0), (0.75, 20), (0.6, 16), (0.9, 24), (1.0, 27)]
)
def test_masked_count_is_exact_per_sample(ratio: float, expected: int) -> None:
    mask = sample_block_mask(8, (24, 24, 24), 8, ratio=ratio, generator=_gen())
    assert mask.shape == (8, 1, 3, 3, 3)
    assert mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert _masked_counts(mask) == [expected] * 8  # round(ratio * 27)


def test_same_seed_same_mask_other_seed_other_mask() -> None:
    a = sample_block_mask(4, (64, 64, 64), 8, generator=_gen(3))
    b = sample_block_mask(4, (64, 64, 64), 8, generator=_gen(3))
    c = sample_block_mask(4, (64, 64, 64), 8, generator=_gen(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_samples_of_a_batch_differ() -> None:
    mask = sample_block_mask(4, (64, 64, 64), 8, generator=_gen())
    assert len({tuple(m.flatten().tolist()) for m in mask}) == 4


def test_cpu_generator_gives_the_same_mask_for_any_target_device() -> None:
    on_gen = sample_block_mask(2, (32, 32, 32), 8, generator=_gen(5))
    moved = sample_block_mask(2, (32, 32, 32), 8, generator=_gen(5), device="cpu")
    on_meta = sample_block_mask(2, (32, 32, 32), 8, generator=_gen(5), device="meta")
    assert torch.equal(on_gen, moved)
    assert on_meta.device.type == "meta" and on_meta.shape == on_gen.shape


def test_ratio_range_draws_one_ratio_per_sample_from_the_generator() -> None:
    lo, hi, batch, cells = 0.6, 0.9, 32, 512
    mask = sample_block_mask(batch, (64, 64, 64), 8, ratio_range=(lo, hi), generator=_gen(11))
    # The generator's first B uniforms are the ratios: replay them to know each sample's count.
    u = torch.rand(batch, generator=_gen(11), dtype=torch.float64)
    expected = torch.round((lo + (hi - lo) * u) * cells).long().tolist()
    counts = _masked_counts(mask)
    assert counts == expected
    assert all(round(lo * cells) <= c <= round(hi * cells) for c in counts)
    assert len(set(counts)) > batch // 2  # it varies per sample


def test_every_cell_is_equally_likely_to_be_masked() -> None:
    mask = sample_block_mask(4000, (16, 16, 16), 8, ratio=0.5, generator=_gen(2))
    frequency = (mask == 0).float().mean(dim=0).flatten()
    assert frequency.shape == (8,)
    # 4000 draws of a fair coin per cell: 4 standard deviations is 0.032.
    assert torch.all((frequency - 0.5).abs() < 0.032)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 1.5}, "mask.ratio"),
        ({"ratio": float("nan")}, "mask.ratio"),
        ({"ratio_range": (0.9, 0.6)}, "mask.ratio_range"),
        ({"ratio_range": (0.5, 1.2)}, "mask.ratio_range"),
    ],
)
def test_bad_ratios_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        sample_block_mask(2, (32, 32, 32), 8, generator=_gen(), **kwargs)


# --------------------------------------------------------------------------------------------------
# Resolution


def test_upsampling_repeats_each_cell_into_a_block() -> None:
    mask = sample_block_mask(2, (16, 24, 32), 8, generator=_gen(1))  # grid (2, 3, 4)
    full = upsample_mask(mask, (16, 24, 32))
    assert full.shape == (2, 1, 16, 24, 32)
    idx = torch.arange
    expected = mask[:, :, idx(16) // 8][:, :, :, idx(24) // 8][:, :, :, :, idx(32) // 8]
    assert torch.equal(full, expected)
    # Anisotropic factors (feature map of a stage with strides (1, 2, 2)).
    half = upsample_mask(mask, (16, 12, 16))
    expected_half = mask[:, :, idx(16) // 8][:, :, :, idx(12) // 4][:, :, :, :, idx(16) // 4]
    assert torch.equal(half, expected_half)


def test_upsampling_to_a_non_multiple_is_nearest() -> None:
    mask = torch.tensor([0.0, 1.0]).view(1, 1, 1, 1, 2)
    out = upsample_mask(mask, (1, 1, 5))
    assert out.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_mask_is_all_visible_at_scales_coarser_than_the_grid() -> None:
    mask = sample_block_mask(2, (160, 160, 160), 16, generator=_gen())  # grid 10^3
    assert torch.equal(mask_at_resolution(mask, (10, 10, 10)), mask)
    assert torch.equal(mask_at_resolution(mask, (20, 20, 20)), upsample_mask(mask, (20, 20, 20)))
    bottleneck = mask_at_resolution(mask, (5, 5, 5))
    assert bottleneck.shape == (2, 1, 5, 5, 5) and bool(torch.all(bottleneck == 1))
    # Coarser along one axis only: a feature voxel still spans several blocks there.
    assert bool(torch.all(mask_at_resolution(mask, (20, 20, 5)) == 1))


def test_geometry_warnings_follow_the_papers_ratios() -> None:
    paper = (1, 2, 2, 2, 2, 2)
    assert mask_geometry_warnings((160, 160, 160), 16, paper) == []
    # The tiny preset: the paper's geometry at a quarter of its size.
    assert mask_geometry_warnings((40, 40, 40), 4, (1, 2, 2, 2)) == []
    # The old tiny preset: 6 blocks per axis and a bottleneck (stride 8) masked like the blocks.
    few, masked = mask_geometry_warnings((48, 48, 48), 8, (1, 2, 2, 2))
    assert "gives (6, 6, 6) blocks per axis" in few and "mask.block_size" in few
    assert "total stride (8, 8, 8)" in masked and "bottleneck is masked" in masked
    # Each condition on its own.
    (only_few,) = mask_geometry_warnings((96, 96, 96), 16, paper)
    assert "(6, 6, 6) blocks per axis" in only_few
    (only_masked,) = mask_geometry_warnings((320, 320, 320), 32, paper)
    assert "bottleneck is masked" in only_masked
    assert mask_geometry_warnings((64, 64, 64), 8, paper, min_blocks_per_axis=8) == []
