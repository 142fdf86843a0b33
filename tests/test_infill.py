"""The in-fill baseline: hand-computed values, invariants, the score the pretraining loss uses."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.errors import ConfigError
from toolkit.infill import gaussian_kernel_1d, infill, infill_loss
from toolkit.losses import reconstruction_loss


def test_kernel_is_a_sampled_truncated_normalised_gaussian() -> None:
    k = gaussian_kernel_1d(0.5)  # radius ceil(4 * 0.5) = 2
    raw = [math.exp(-4 / (2 * 0.25)), math.exp(-1 / 0.5), 1.0, math.exp(-2.0), math.exp(-8.0)]
    total = sum(raw)
    assert k.tolist() == pytest.approx([r / total for r in raw], abs=1e-15)
    assert gaussian_kernel_1d(1.5).numel() == 2 * 6 + 1
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel_1d(0.0)


def test_hand_computed_fill_on_a_line() -> None:
    # 1 x 1 x 8 line 0..7 with voxels 3 and 4 masked; sigma 0.5 reaches 2 voxels each side.
    x = torch.arange(8.0, dtype=torch.float64).reshape(1, 1, 1, 1, 8)
    m = torch.ones(1, 1, 1, 1, 8)
    m[..., 3:5] = 0
    w1, w2 = math.exp(-2.0), math.exp(-8.0)  # offsets 1 and 2 (the centre weight cancels)
    # voxel 3 sees 1 (offset -2), 2 (offset -1) and 5 (offset +2); voxel 4 mirrors it.
    fill3 = (1 * w2 + 2 * w1 + 5 * w2) / (w2 + w1 + w2)
    fill4 = (2 * w2 + 5 * w1 + 6 * w2) / (w2 + w1 + w2)
    out = infill(x, m, sigma=0.5)
    expected = [0.0, 1.0, 2.0, fill3, fill4, 5.0, 6.0, 7.0]
    assert out[0, 0, 0, 0].tolist() == pytest.approx(expected, abs=1e-12)
    # the score is the masked MSE exactly as the pretraining loss computes it
    mse = ((fill3 - 3) ** 2 + (fill4 - 4) ** 2) / 2
    assert float(infill_loss(x.float(), m, sigma=0.5)) == pytest.approx(mse, rel=1e-6)


def test_far_masked_voxels_fall_back_to_the_sample_mean_of_visible_voxels() -> None:
    # 12 voxels, only the first two visible: voxels beyond radius 2 of them see nothing.
    x = torch.zeros(2, 1, 1, 1, 12)
    x[0, 0, 0, 0, :2] = torch.tensor([1.0, 3.0])
    x[1] = 7.0
    m = torch.zeros(2, 1, 1, 1, 12)
    m[0, ..., :2] = 1  # sample 1 has nothing visible at all
    out = infill(x, m, sigma=0.5)
    assert out[0, 0, 0, 0, 4:].tolist() == [2.0] * 8  # mean of 1 and 3
    assert out[1].abs().max() == 0  # nothing visible: the z-score mean
    w1, w2 = math.exp(-2.0), math.exp(-8.0)
    assert float(out[0, 0, 0, 0, 2]) == pytest.approx((1 * w2 + 3 * w1) / (w1 + w2))


def test_invariants_visible_voxels_constant_images_channels_and_grid_masks() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 8, 8, 8, generator=g)
    grid = (torch.rand(2, 1, 2, 2, 2, generator=g) > 0.5).float()
    grid[:, :, 0, 0, 0] = 1  # something visible in every sample
    full = grid.repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    out = infill(x, grid)
    assert torch.equal(out, infill(x, full))  # a block grid is upsampled like the loss does
    visible = full.expand_as(x) > 0
    assert torch.equal(out[visible], x[visible])  # visible voxels reproduce the input
    # masked values are never read
    assert torch.equal(infill(torch.where(visible, x, torch.full_like(x, 1e6)), full), out)
    # each channel is filled on its own
    assert torch.allclose(out[:, 1:], infill(x[:, 1:], full))

    const = torch.full_like(x, -1.25)
    assert torch.allclose(infill(const, full), const, atol=1e-6)
    assert float(infill_loss(const, full)) == pytest.approx(0.0, abs=1e-12)
    # the score is reconstruction_loss of the fill, whatever the loss kind
    for kind in ("mse_masked", "l1_masked", "mse_all"):
        assert float(infill_loss(x, grid, kind=kind)) == pytest.approx(
            float(reconstruction_loss(out, x, full, kind))
        )


def test_bad_arguments() -> None:
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"x must be \(B, C, D, H, W\)"):
        infill(x[0], torch.ones(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        infill(x, torch.ones(2, 1, 4, 4, 4))
    with pytest.raises(ConfigError, match="pretrain.loss"):
        infill_loss(x, torch.ones(1, 1, 4, 4, 4), kind="huber")
