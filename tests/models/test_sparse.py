"""S3D: sparse encoder invariants, masked norm numerics, state-dict compatibility, switches."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.masking import mask_at_resolution, sample_block_mask
from toolkit.models import create_model
from toolkit.models.sparse import (
    MaskContext,
    MaskedInstanceNorm3d,
    SparseResEncUNet,
    masked_instance_norm,
)

PATCH = (32, 32, 32)
BLOCK = 8  # resenc_tiny totals 1, 2, 4, 8: every stage is exact


def _tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = create_model("resenc_tiny", 1, 1)
    # nnU-Net zeroes the last norm of each residual branch; give every norm random affine values
    # so residual branches and shifts actually matter in these tests.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.normal_(1.0, 0.5)
                m.bias.normal_(0.0, 0.5)
    return net


def _mask(batch: int = 2, seed: int = 0, block: int = BLOCK, ratio: float = 0.6) -> torch.Tensor:
    return sample_block_mask(
        batch, PATCH, block, ratio=ratio, generator=torch.Generator().manual_seed(seed)
    )


def _x(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, *PATCH, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# Masked instance norm


def test_masked_norm_statistics_are_those_of_the_visible_voxels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, 4, generator=g) * 3 + 1
    mask = (torch.rand(2, 1, 4, 4, 4, generator=g) > 0.4).float()
    weight, bias = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 0.5, 3.0])
    out = masked_instance_norm(x, mask, weight, bias, eps=1e-5)

    xn, mn = x.numpy(), mask.numpy()[:, 0].astype(bool)
    for b in range(2):
        for c in range(3):
            visible = xn[b, c][mn[b]]
            expected = (visible - visible.mean()) / np.sqrt(visible.var() + 1e-5)
            expected = expected * weight[c].item() + bias[c].item()
            np.testing.assert_allclose(out[b, c].numpy()[mn[b]], expected, rtol=1e-5, atol=1e-5)
            assert np.all(out[b, c].numpy()[~mn[b]] == 0)


def test_masked_norm_with_everything_visible_is_instance_norm() -> None:
    x = torch.randn(2, 3, 4, 4, 4)
    ones = torch.ones(2, 1, 4, 4, 4)
    assert torch.allclose(masked_instance_norm(x, ones), F.instance_norm(x), atol=1e-5)


def test_masked_norm_of_a_fully_masked_sample_is_zero_not_nan() -> None:
    x = torch.randn(1, 2, 4, 4, 4)
    out = masked_instance_norm(x, torch.zeros(1, 1, 4, 4, 4), torch.ones(2), torch.ones(2))
    assert torch.equal(out, torch.zeros_like(out))


def test_masked_norm_module_is_instance_norm_without_a_mask() -> None:
    dense = nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        dense.weight.normal_()
        dense.bias.normal_()
    context = MaskContext()
    masked = MaskedInstanceNorm3d.from_dense(dense, context)
    assert masked.weight is dense.weight and masked.bias is dense.bias
    assert list(masked.state_dict()) == list(dense.state_dict())
    x = torch.randn(2, 3, 8, 8, 8)
    assert torch.equal(masked(x), dense(x))
    mask = torch.ones(2, 1, 2, 2, 2)
    mask[0, 0, 0, 0, 0] = 0
    with context.using(mask):
        full = mask_at_resolution(mask, (8, 8, 8))
        expected = masked_instance_norm(x, full, dense.weight, dense.bias, dense.eps)
        assert torch.equal(masked(x), expected)


# --------------------------------------------------------------------------------------------------
# State dict and patching


def test_state_dict_keys_are_the_dense_ones_and_load_strictly() -> None:
    net = _tiny()
    dense_keys = list(net.state_dict())
    s3d = SparseResEncUNet(net)
    assert list(s3d.network.state_dict()) == dense_keys
    # A training step must not change that.
    s3d(_x(), _mask()).square().mean().backward()
    fresh = create_model("resenc_tiny", 1, 1)
    fresh.load_state_dict(s3d.network.state_dict(), strict=True)
    x = _x()
    # Outside a masked forward the patched network is the dense network.
    assert torch.allclose(fresh(x), s3d.network(x), atol=1e-6)
    assert set(s3d.s3d_state_dict()) == {
        *(f"mask_tokens.{i}" for i in range(4)),
        *(f"densify_convs.{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")),
    }


def test_every_encoder_norm_is_masked_once_and_shared_by_both_names() -> None:
    net = _tiny()
    before = {name: m.weight for name, m in net.encoder.named_modules() if hasattr(m, "weight")}
    s3d = SparseResEncUNet(net)
    norms = [m for m in s3d.network.encoder.modules() if isinstance(m, nn.InstanceNorm3d)]
    assert norms and all(isinstance(m, MaskedInstanceNorm3d) for m in norms)
    # dynamic-network-architectures keeps each norm as `.norm` and inside `.all_modules`.
    stem = s3d.network.encoder.stem.convs[0]
    assert stem.norm is stem.all_modules[1]
    after = {name: m.weight for name, m in net.encoder.named_modules() if hasattr(m, "weight")}
    assert all(after[k] is before[k] for k in before)
    assert not any(isinstance(m, MaskedInstanceNorm3d) for m in s3d.network.decoder.stages)


def test_remove_restores_the_dense_network() -> None:
    s3d = SparseResEncUNet(_tiny())
    net = s3d.remove()
    assert not any(isinstance(m, MaskedInstanceNorm3d) for m in net.modules())
    assert all(not m._forward_hooks for m in net.modules() if isinstance(m, nn.Conv3d))
    reference = _tiny()
    assert torch.allclose(net(_x()), reference(_x()), atol=1e-6)


def test_deepcopy_binds_hooks_and_norms_to_the_copy() -> None:
    s3d = SparseResEncUNet(_tiny())
    twin = copy.deepcopy(s3d)
    x, mask = _x(), _mask()
    assert torch.allclose(twin(x, mask), s3d(x, mask), atol=1e-6)
    # The copy's sparse encoder really masks: its features are zero at masked positions.
    feats = twin.encode(x, mask)
    hidden = mask_at_resolution(mask, feats[1].shape[2:]) == 0
    assert torch.all(feats[1].masked_select(hidden.expand_as(feats[1])) == 0)


# --------------------------------------------------------------------------------------------------
# Sparsity invariants


def _encoder_outputs_at_masked_positions(s3d: SparseResEncUNet, x, mask) -> list[float]:
    """Largest |activation| at masked positions of every conv, norm and block output."""
    worst: list[float] = []

    def record(module: nn.Module, args: object, out: torch.Tensor) -> None:
        m = mask_at_resolution(mask, out.shape[2:])
        worst.append(float((out.detach() * (1 - m)).abs().max()))

    watched = [
        m
        for m in s3d.network.encoder.modules()
        if isinstance(m, nn.Conv3d | nn.InstanceNorm3d | nn.LeakyReLU)
    ]
    handles = [m.register_forward_hook(record) for m in watched]
    s3d.encode(x, mask)
    for h in handles:
        h.remove()
    return worst


def test_masked_positions_stay_zero_through_the_sparse_encoder() -> None:
    x, mask = _x(), _mask()
    sparse = _encoder_outputs_at_masked_positions(SparseResEncUNet(_tiny()), x, mask)
    assert sparse and max(sparse) == 0.0
    # The same check fails for the dense encoder on a masked input (conv bias, norm shift).
    dense = _encoder_outputs_at_masked_positions(
        SparseResEncUNet(_tiny(), sparse_conv=False), x, mask
    )
    assert max(dense) > 0.1


@torch.no_grad()
def _visible_features_with_noise_at_masked_positions(sparse_conv: bool) -> tuple[float, float]:
    """Max change of visible encoder features when conv outputs are perturbed where masked."""
    x, mask = _x(), _mask()
    s3d = SparseResEncUNet(_tiny(), sparse_conv=sparse_conv, mask_token=False, densify=False)
    clean = s3d.encode(x, mask)
    noise = torch.Generator().manual_seed(9)

    def perturb(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        m = mask_at_resolution(mask, out.shape[2:])
        return out + 5 * torch.randn(out.shape, generator=noise) * (1 - m)

    # Registered after the sparse hooks, so the noise lands on the already-masked conv outputs.
    convs = [m for m in s3d.network.encoder.modules() if isinstance(m, nn.Conv3d)]
    handles = [c.register_forward_hook(perturb) for c in convs]
    noisy = s3d.encode(x, mask)
    for h in handles:
        h.remove()
    changes = []
    for a, b in zip(clean, noisy, strict=True):
        m = mask_at_resolution(mask, a.shape[2:])
        changes.append(float(((a - b) * m).abs().max()))
    input_noise = s3d.encode(
        x + 5 * torch.randn_like(x) * (1 - mask_at_resolution(mask, PATCH)), mask
    )
    input_change = max(float((a - b).abs().max()) for a, b in zip(clean, input_noise, strict=True))
    return max(changes), input_change


def test_masked_content_does_not_reach_visible_features() -> None:
    """Perturbing masked voxels (input or any conv output) leaves visible features unchanged."""
    conv_noise, input_noise = _visible_features_with_noise_at_masked_positions(sparse_conv=True)
    assert conv_noise < 1e-5
    assert input_noise < 1e-5


def test_without_sparse_conv_masked_content_leaks() -> None:
    """The invariant above is a property of sparse conv + masked norm, not of the test."""
    conv_noise, _ = _visible_features_with_noise_at_masked_positions(sparse_conv=False)
    assert conv_noise > 1e-2


def test_scales_coarser_than_the_grid_are_dense() -> None:
    # 4^3 blocks: the last tiny stage (total stride 8) is coarser than a block.
    mask = _mask(block=4)
    s3d = SparseResEncUNet(_tiny())
    feats = s3d.encode(_x(), mask)
    with s3d.context.using(mask):
        assert s3d.context.at(feats[3].shape[2:], feats[3].dtype) is None
        assert s3d.context.at(feats[2].shape[2:], feats[2].dtype) is not None
    hidden2 = mask_at_resolution(mask, feats[2].shape[2:]) == 0
    assert torch.all(feats[2].masked_select(hidden2.expand_as(feats[2])) == 0)
    assert bool((feats[3] != 0).float().mean() > 0.5)


@pytest.mark.parametrize(
    ("sparse_conv", "mask_token", "densify"), list(itertools.product([False, True], repeat=3))
)
def test_every_switch_combination_trains(
    sparse_conv: bool, mask_token: bool, densify: bool
) -> None:
    s3d = SparseResEncUNet(_tiny(), sparse_conv=sparse_conv, mask_token=mask_token, densify=densify)
    x, mask = _x(), _mask()
    out = s3d(x, mask)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    for name, p in s3d.extras.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    n_tokens = len(s3d.extras.mask_tokens) if s3d.extras.mask_tokens is not None else 0
    n_convs = sum(isinstance(m, nn.Conv3d) for m in s3d.extras.modules())
    assert n_tokens == (4 if mask_token else 0)
    assert n_convs == (3 if densify else 0)  # no densify conv at full resolution


def test_mask_token_fills_masked_positions_of_the_skips() -> None:
    s3d = SparseResEncUNet(_tiny(), mask_token=True, densify=False)
    with torch.no_grad():
        for i, token in enumerate(s3d.extras.mask_tokens):  # type: ignore[arg-type]
            token.fill_(float(i + 1))
    x, mask = _x(), _mask()
    feats = s3d.encode(x, mask)
    with s3d.context.using(mask):
        filled = s3d.extras(feats, s3d.context)
    for i, (raw, out) in enumerate(zip(feats, filled, strict=True)):
        m = mask_at_resolution(mask, raw.shape[2:]).expand_as(raw).bool()
        assert torch.all(out[~m] == i + 1)
        assert torch.equal(out[m], raw[m])


@pytest.mark.slow
def test_resenc_l_s3d_weights_load_into_the_dense_network() -> None:
    s3d = SparseResEncUNet(create_model("resenc_l", 1, 1))
    dense = create_model("resenc_l", 1, 1)
    dense.load_state_dict(s3d.network.state_dict(), strict=True)
    assert list(dense.state_dict()) == list(s3d.network.state_dict())
