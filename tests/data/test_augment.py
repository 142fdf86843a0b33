"""Device-side spatial augmentation: identities, geometry, labels and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from toolkit.data.augment import (
    DRAWS_PER_SAMPLE,
    SpatialAugmentation,
    SpatialTransforms,
    apply_transforms,
    augment_batch,
    draw_transforms,
)
from toolkit.errors import ConfigError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_disabled_is_identity() -> None:
    x = torch.randn(3, 2, 8, 8, 8)
    lab = torch.randint(0, 3, (3, 1, 8, 8, 8))
    assert augment_batch(x, _gen(), SpatialAugmentation(enabled=False)) is x
    y, l2 = augment_batch(x, _gen(), SpatialAugmentation(enabled=False), label=lab)
    assert y is x and l2 is lab
    # probabilities 0 and no mirroring also leave the batch untouched
    quiet = SpatialAugmentation(prob=0.0, mirror=False)
    assert torch.equal(augment_batch(x, _gen(), quiet), x)


def test_mirroring_twice_is_identity() -> None:
    x = torch.randn(4, 1, 6, 7, 8)
    t = draw_transforms(4, _gen(1), SpatialAugmentation(prob=0.0))
    assert t.flips.any() and not t.resample.any()
    once = apply_transforms(x, t)
    assert not torch.equal(once, x)
    assert torch.equal(apply_transforms(once, t), x)
    for i in range(4):
        dims = [2 + a - 1 for a in range(3) if t.flips[i, a]]
        assert torch.equal(once[i], x[i].flip(dims) if dims else x[i])


def test_rotation_and_scale_geometry() -> None:
    # 90 degrees about the D axis on a non-cubic patch moves a voxel without shear
    x = torch.zeros(1, 1, 8, 12, 12)
    x[0, 0, 4, 2, 6] = 1.0
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    rot = torch.tensor([[[1.0, 0, 0], [0, c, -s], [0, s, c]]]).transpose(1, 2)
    t = SpatialTransforms(rot, torch.tensor([True]), torch.zeros(1, 3, dtype=torch.bool))
    moved, lab = apply_transforms(x, t, label=x.long())
    assert torch.nonzero(moved[0, 0]).tolist() == [[4, 5, 2]]
    assert float(moved[0, 0, 4, 5, 2]) == pytest.approx(1.0, abs=1e-5)
    assert torch.nonzero(lab[0, 0]).tolist() == [[4, 5, 2]] and lab.dtype == torch.long
    # zoom x2 about the centre: a ramp along W becomes twice as steep, centred on 7.5
    ramp = torch.arange(16.0).view(1, 1, 1, 1, 16).expand(1, 1, 4, 4, 16).contiguous()
    zoom = SpatialTransforms(torch.eye(3)[None] / 2, torch.tensor([True]), t.flips)
    out = apply_transforms(ramp, zoom)[0, 0, 0, 0]
    assert out.tolist() == pytest.approx([3.75 + 0.5 * i for i in range(16)])


def test_labels_stay_in_the_label_set() -> None:
    x = torch.randn(4, 1, 12, 12, 12)
    lab = torch.randint(0, 4, (4, 1, 12, 12, 12), dtype=torch.uint8) * 2  # values 0, 2, 4, 6
    y, out = augment_batch(x, _gen(3), SpatialAugmentation(prob=1.0), label=lab)
    assert out.dtype == torch.uint8 and out.shape == lab.shape and y.shape == x.shape
    assert set(out.unique().tolist()) <= {0, 2, 4, 6}
    assert not torch.equal(out, lab)


def test_same_generator_same_result_and_rows_select_consistently() -> None:
    aug = SpatialAugmentation(prob=0.5)
    x = torch.randn(4, 1, 10, 10, 10)
    assert torch.equal(augment_batch(x, _gen(5), aug), augment_batch(x, _gen(5), aug))
    g = _gen(5)
    draw_transforms(4, g, aug)
    assert torch.equal(
        torch.rand(1, generator=g), torch.rand(4 * DRAWS_PER_SAMPLE + 1, generator=_gen(5))[-1:]
    )
    full = apply_transforms(x, draw_transforms(4, _gen(6), aug))
    part = apply_transforms(x[[1, 3]], draw_transforms(4, _gen(6), aug).select([1, 3]))
    assert torch.equal(part, full[[1, 3]])


def test_probabilities_gate_the_transforms() -> None:
    t = draw_transforms(2000, _gen(0), SpatialAugmentation(prob=0.2, mirror=False))
    share = t.resample.float().mean().item()
    assert 0.3 < share < 0.42  # 1 - 0.8 * 0.8 = 0.36
    assert not t.flips.any()
    det = torch.linalg.det(t.matrices.double())
    assert float(det.min()) >= (1 / 1.4) ** 3 - 1e-4 and float(det.max()) <= (1 / 0.7) ** 3 + 1e-4


def test_bad_settings_raise() -> None:
    with pytest.raises(ConfigError, match="scale_range"):
        SpatialAugmentation(scale_range=(1.2, 0.8))
    with pytest.raises(ConfigError, match="augment_prob"):
        SpatialAugmentation(prob=1.5)
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        augment_batch(torch.zeros(2, 8, 8, 8), _gen(), SpatialAugmentation())


def test_autocast_does_not_lower_the_precision_of_the_warp() -> None:
    # the sampling grid is built without matmuls, which autocast would run in bf16
    x = torch.randn(2, 1, 12, 12, 12)
    aug = SpatialAugmentation(prob=1.0)
    plain = augment_batch(x, _gen(2), aug)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = augment_batch(x, _gen(2), aug)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, atol=1e-5, rtol=0)
