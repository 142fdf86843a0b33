"""Loss numerics against hand-computed values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError
from toolkit.losses import NNUNetDeepSupervisionLoss, reconstruction_loss, segmentation_loss

# Two channels, two voxels; the second voxel is masked.
PRED = torch.zeros(1, 2, 1, 1, 2)
TARGET = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 2, 1, 1, 2)
MASK = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)


def test_masked_mse_by_hand() -> None:
    # Masked voxel: errors 2^2 and 4^2 over 1 masked voxel x 2 channels.
    assert reconstruction_loss(PRED, TARGET, MASK).item() == pytest.approx((4 + 16) / 2)


def test_masked_l1_and_plain_mse_by_hand() -> None:
    assert reconstruction_loss(PRED, TARGET, MASK, "l1_masked").item() == pytest.approx(6 / 2)
    assert reconstruction_loss(PRED, TARGET, MASK, "mse_all").item() == pytest.approx(30 / 4)


def test_masked_loss_matches_the_formula_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 4, 4, generator=g), torch.randn(2, 3, 4, 4, 4, generator=g)
    mask = (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.3).float()
    hidden = (1 - mask).expand_as(pred).bool()
    expected = (pred - target)[hidden].square().mean()
    assert torch.allclose(reconstruction_loss(pred, target, mask), expected)


def test_only_masked_voxels_get_gradient() -> None:
    pred = PRED.clone().requires_grad_(True)
    reconstruction_loss(pred, TARGET, MASK).backward()
    assert pred.grad is not None
    assert torch.all(pred.grad[..., 0] == 0)
    assert torch.all(pred.grad[..., 1] != 0)


def test_computed_in_float32_for_half_precision_inputs() -> None:
    pred, target = PRED.to(torch.bfloat16), TARGET.to(torch.bfloat16)
    loss = reconstruction_loss(pred, target, MASK.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(10.0)


@pytest.mark.parametrize("kind", ["mse_masked", "l1_masked"])
def test_nothing_masked_gives_zero_not_nan(kind: str) -> None:
    pred = torch.randn(2, 1, 4, 4, 4, requires_grad=True)
    loss = reconstruction_loss(pred, torch.randn(2, 1, 4, 4, 4), torch.ones(2, 1, 4, 4, 4), kind)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.all(pred.grad == 0)


def test_bad_kind_and_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"pretrain\.loss"):
        reconstruction_loss(PRED, TARGET, MASK, "mse")
    with pytest.raises(ValueError, match="mask_full"):
        reconstruction_loss(PRED, TARGET, MASK[..., :1])
    with pytest.raises(ValueError, match="pred and target"):
        reconstruction_loss(PRED, TARGET[..., :1], MASK)


# --------------------------------------------------------------------------------------------------
# Segmentation


def _dice_ce_by_hand(logits: torch.Tensor, labels: torch.Tensor, batch: bool) -> torch.Tensor:
    """nnU-Net's Dice (no background, smooth 1e-5) + CE, written out."""
    probs = logits.softmax(1)
    onehot = F.one_hot(labels[:, 0].long(), logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4) if batch else (2, 3, 4)
    inter = (probs * onehot)[:, 1:].sum(dims)
    denom = (probs[:, 1:] + onehot[:, 1:]).sum(dims)
    dice_loss = (1 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
    return dice_loss + F.cross_entropy(logits, labels[:, 0].long())


@pytest.mark.parametrize("batch_dice", [False, True])
def test_segmentation_loss_is_dice_without_background_plus_ce(batch_dice: bool) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, 4, generator=g)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    loss = segmentation_loss(3, batch_dice=batch_dice)(logits, labels)
    assert torch.allclose(loss, _dice_ce_by_hand(logits, labels, batch_dice), atol=1e-6)


def test_segmentation_loss_is_near_zero_for_a_confident_correct_prediction() -> None:
    labels = torch.randint(0, 3, (1, 1, 4, 4, 4), generator=torch.Generator().manual_seed(2))
    logits = 50.0 * F.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    assert segmentation_loss(3)(logits, labels).item() < 1e-4


def test_deep_supervision_uses_nnunet_weights() -> None:
    assert NNUNetDeepSupervisionLoss(torch.nn.MSELoss()).get_weights(3) == pytest.approx(
        [1 / 1.5, 0.5 / 1.5, 0.0]
    )
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (2, 1, 8, 8, 8), generator=g)
    outputs = [torch.randn(2, 2, s, s, s, generator=g) for s in (8, 4, 2)]
    loss = segmentation_loss(2)(outputs, labels)
    low = F.interpolate(labels.float(), size=(4, 4, 4), mode="nearest-exact")
    expected = (
        _dice_ce_by_hand(outputs[0], labels, False) + 0.5 * _dice_ce_by_hand(outputs[1], low, False)
    ) / 1.5
    assert torch.allclose(loss, expected, atol=1e-6)


def test_segmentation_loss_needs_two_classes() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        segmentation_loss(1)
