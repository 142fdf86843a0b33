"""The masking explorer: controls in, mask, masked volume and masked fraction out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.widgets.conftest import phantom
from toolkit.config import load_config
from toolkit.masking import sample_block_mask, upsample_mask, valid_block_sizes
from widgets.masking import MaskingExplorer, patch_size_options, stage_masks
from widgets.slices import MASKED_COLOUR


@pytest.fixture
def explorer() -> MaskingExplorer:
    return MaskingExplorer(
        phantom((40, 40, 40)), model="resenc_tiny", patch_size=32, block_size=8, ratio=0.75
    )


def test_starts_with_the_exact_ratio_and_says_so(explorer: MaskingExplorer) -> None:
    assert tuple(explorer.mask.shape) == (1, 1, 4, 4, 4)
    assert explorer.masked_fraction == 48 / 64  # round(0.75 * 64) cells
    assert "masked fraction 75.0 %" in explorer.summary.value
    assert "48 of 64 blocks" in explorer.summary.value


def test_ratio_slider_resamples_and_redraws(explorer: MaskingExplorer) -> None:
    before = explorer.input_view.rgb[0].copy()
    explorer.ratio.value = 0.25
    assert explorer.masked_fraction == 16 / 64
    assert "masked fraction 25.0 %" in explorer.summary.value
    assert not np.array_equal(before, explorer.input_view.rgb[0])


def test_mask_equals_the_library_mask_for_that_seed(explorer: MaskingExplorer) -> None:
    explorer.seed.value = 7
    expected = sample_block_mask(
        1, (32, 32, 32), 8, ratio=0.75, generator=torch.Generator().manual_seed(7)
    )
    assert torch.equal(explorer.mask, expected)
    full = upsample_mask(expected, (32, 32, 32))[0, 0].numpy()
    assert np.array_equal(explorer.masked_view.volume, explorer.patch_image * full)
    # Masked blocks are tinted in the input view: some pixels carry the masked colour.
    tinted = np.all(np.abs(explorer.input_view.rgb[0].astype(float) - MASKED_COLOUR) < 60, axis=-1)
    assert tinted.any()


def test_range_mode_draws_the_ratio_within_the_range(explorer: MaskingExplorer) -> None:
    explorer.mode.value = "range"
    explorer.ratio_range.value = (0.6, 0.9)
    assert explorer.ratio.disabled and not explorer.ratio_range.disabled
    fractions = set()
    for seed in range(6):
        explorer.seed.value = seed
        assert 0.6 - 1 / 64 <= explorer.masked_fraction <= 0.9 + 1 / 64
        fractions.add(explorer.masked_fraction)
    assert len(fractions) > 1  # the ratio is drawn per sample
    assert "U[0.60, 0.90]" in explorer.summary.value


def test_patch_and_variant_change_the_valid_block_sizes(explorer: MaskingExplorer) -> None:
    explorer.patch.value = 16
    assert explorer.patch_image.shape == (16, 16, 16)
    assert explorer.masked_view.volume.shape == (16, 16, 16)
    assert list(explorer.block.options) == [
        b for b in valid_block_sizes((16, 16, 16), (1, 2, 2, 2)) if b >= 2
    ]
    assert explorer.block.value == 8
    explorer.variant.value = "dense"
    assert 2 in explorer.block.options  # dense only needs blocks that tile the patch
    assert "input x mask" in explorer.stages.children[0].value


def test_dense_only_model_switches_to_dense(explorer: MaskingExplorer) -> None:
    explorer.model.value = "unet_monai"
    assert explorer.variant.value == "dense"
    explorer.variant.value = "s3d"
    assert explorer.variant.value == "dense"


def test_stage_masks_are_exact_only_where_features_are_finer_than_blocks() -> None:
    mask = sample_block_mask(1, (32, 32, 32), 4, ratio=0.5, generator=torch.Generator())
    stages = stage_masks(mask, (32, 32, 32), (1, 2, 2, 2))
    assert [s[1] for s in stages] == [(32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]
    assert [s[3] for s in stages] == [True, True, True, False]
    assert stages[-1][2].min() == 1.0  # all visible at the bottleneck
    assert stages[2][2].mean() == pytest.approx(0.5)


def test_overrides_build_a_valid_config(explorer: MaskingExplorer) -> None:
    explorer.mode.value = "range"
    cfg = load_config("tiny", explorer.overrides())
    assert cfg.mask.ratio_range == (0.6, 0.9)
    assert cfg.mask.block_size == 8 and cfg.data.patch_size == (32, 32, 32)
    explorer.mode.value = "fixed"
    assert load_config("tiny", explorer.overrides()).mask.ratio_range is None


def test_patch_size_options_are_multiples_of_the_stride() -> None:
    assert patch_size_options((70, 50, 40), 16) == [16, 32, 48, 64, 80]
    assert patch_size_options((500, 10, 10), 32)[-1] == 192


def test_from_config_on_the_synthetic_example() -> None:
    cfg = load_config("tiny", {"data.target_spacing_mm": [4.0, 4.0, 4.0]})
    explorer = MaskingExplorer.from_config(cfg, source="synthetic")
    assert explorer.patch.value == 40 and explorer.block.value == 4  # the tiny preset
    assert explorer.patch_image.std() > 0  # the brain is in the patch
    assert explorer.masked_fraction == pytest.approx(0.75, abs=1 / 1000)
