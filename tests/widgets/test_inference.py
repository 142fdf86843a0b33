"""Running checkpoints on one volume: MAE reconstruction and segmentation (random weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.widgets.conftest import (
    LABELS,
    SHAPE,
    SPACING,
    phantom,
    write_finetune_checkpoint,
    write_pretrain_checkpoint,
)
from toolkit.errors import ConfigError, DataError
from widgets.inference import load_mae, load_segmenter, prepare_image, reconstruct, segment


@pytest.fixture
def mae_checkpoint(tmp_path: Path) -> Path:
    return write_pretrain_checkpoint(tmp_path / "mae" / "final.pt")


@pytest.fixture
def seg_checkpoint(tmp_path: Path) -> Path:
    return write_finetune_checkpoint(tmp_path / "ft" / "final.pt")


def test_reconstruct_masks_exactly_and_places_the_patch(mae_checkpoint: Path) -> None:
    model, cfg = load_mae(mae_checkpoint)
    prepared = prepare_image(phantom(), SPACING, cfg, origin_mm=(10.0, 0.0, -4.0))
    assert prepared.spacing_mm == pytest.approx(SPACING)
    result = reconstruct(model, cfg, prepared, ratio=0.5, block_size=8, seed=3)
    assert result.input.shape == result.reconstruction.shape == result.mask.shape == (32, 32, 32)
    assert result.masked_fraction == 32 / 64
    assert np.allclose(result.error, np.abs(result.reconstruction - result.input))
    # The phantom (24 x 28 x 32 at 2 mm) is smaller than the patch: the patch starts before it.
    assert result.origin_mm[0] < prepared.origin_mm[0]
    again = reconstruct(model, cfg, prepared, ratio=0.5, block_size=8, seed=3)
    assert np.array_equal(again.mask, result.mask)  # same seed, same mask


def test_reconstruct_rejects_blocks_the_sparse_encoder_cannot_use(mae_checkpoint: Path) -> None:
    model, cfg = load_mae(mae_checkpoint)
    prepared = prepare_image(phantom(), SPACING, cfg)
    with pytest.raises(ConfigError, match="mask.block_size"):
        reconstruct(model, cfg, prepared, block_size=3)


def test_wrong_checkpoint_kinds(mae_checkpoint: Path, seg_checkpoint: Path) -> None:
    with pytest.raises(DataError, match="not a pretraining checkpoint"):
        load_mae(seg_checkpoint)
    with pytest.raises(DataError, match="not a .*checkpoint"):
        load_segmenter(mae_checkpoint)


def test_segment_returns_labels_on_the_input_grid(seg_checkpoint: Path) -> None:
    predictor = load_segmenter(seg_checkpoint)
    assert predictor.labels == LABELS
    labels = segment(predictor, phantom(), SPACING)
    assert labels.shape == SHAPE and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(LABELS)
