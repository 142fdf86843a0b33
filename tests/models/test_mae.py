"""The MAE model built from a config, and the segmentation model for fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from toolkit.config import load_config
from toolkit.errors import ConfigError
from toolkit.masking import cumulative_strides, mask_at_resolution, sample_block_mask
from toolkit.models import (
    MAEModel,
    build_mae,
    build_segmentation_model,
    create_model,
    mae_geometry_warnings,
)
from toolkit.models.mae import InputMaskToken
from toolkit.models.resenc import encoder_strides
from toolkit.models.sparse import S3DExtras

PATCH = 32


def _cfg(*overrides: str):  # noqa: ANN202 - Config
    return load_config("tiny", [f"data.patch_size=[{PATCH}, {PATCH}, {PATCH}]", *overrides])


def _batch(model: MAEModel, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, PATCH, PATCH, PATCH, generator=g)
    return x, model.sample_mask(2, generator=g)


def test_s3d_model_reconstructs_and_keeps_plain_network_keys() -> None:
    model = build_mae(_cfg())
    assert model.variant == "s3d"
    assert isinstance(model.extras, S3DExtras)
    x, mask = _batch(model)
    out = model(x, mask)
    assert out.shape == x.shape
    out.square().mean().backward()
    # Stages coarser than the mask blocks are all visible (the paper's dense bottleneck), so only
    # their mask token takes no part; every other extra parameter gets a gradient.
    block = model.block_size
    totals = [t[0] for t in cumulative_strides(encoder_strides(model.network))]
    assert model.extras.mask_tokens is not None and max(totals) > block
    for token, total in zip(model.extras.mask_tokens, totals, strict=True):
        assert (token.grad is not None) == (total <= block)
    tokens = {id(t) for t in model.extras.mask_tokens}
    assert all(p.grad is not None for p in model.extras.parameters() if id(p) not in tokens)
    assert list(model.network.state_dict()) == list(create_model("resenc_tiny", 1, 1).state_dict())
    assert set(model.extra_state_dict()) == set(model.extras.state_dict())
    assert set(model.state_dict()) == {
        *(f"network.{k}" for k in model.network.state_dict()),
        *(f"extras.{k}" for k in model.extra_state_dict()),
    }


def test_extra_state_round_trip() -> None:
    a, b = build_mae(_cfg()), build_mae(_cfg())
    b.network.load_state_dict(a.network.state_dict(), strict=True)
    b.load_extra_state_dict(a.extra_state_dict())
    x, mask = _batch(a)
    assert torch.allclose(a(x, mask), b(x, mask), atol=1e-6)
    with pytest.raises(ConfigError, match="mask.variant"):
        build_mae(_cfg("mask.variant=dense")).load_extra_state_dict(a.extra_state_dict())


def test_sample_mask_uses_the_config() -> None:
    model = build_mae(_cfg("mask.ratio=0.5", "mask.block_size=16"))
    mask = model.sample_mask(3, generator=torch.Generator().manual_seed(4))
    expected = sample_block_mask(
        3, (PATCH,) * 3, 16, ratio=0.5, generator=torch.Generator().manual_seed(4)
    )
    assert torch.equal(mask, expected)


def _network_input(model: MAEModel, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = model.network.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(x, mask)
    handle.remove()
    return seen[0]


def test_dense_variant_feeds_the_masked_input() -> None:
    model = build_mae(_cfg("mask.variant=dense"))
    assert model.extras is None and model.extra_state_dict() == {}
    x, mask = _batch(model)
    full = mask_at_resolution(mask, x.shape[2:])
    assert torch.equal(_network_input(model, x, mask), x * full)


def test_dense_variant_with_input_mask_token() -> None:
    model = build_mae(_cfg("mask.variant=dense", "mask.input_mask_token=true"))
    assert isinstance(model.extras, InputMaskToken)
    with torch.no_grad():
        model.extras.token.fill_(3.0)
    x, mask = _batch(model)
    full = mask_at_resolution(mask, x.shape[2:]).bool()
    seen = _network_input(model, x, mask)
    assert torch.all(seen[~full] == 3.0)
    assert torch.equal(seen[full], x[full])
    assert list(model.extra_state_dict()) == ["token"]


def test_dense_mae_on_a_monai_network() -> None:
    model = build_mae(_cfg("mask.variant=dense", "model.name=unet_monai"))
    x, mask = _batch(model)
    assert model(x, mask).shape == x.shape


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mask.block_size=12"], r"mask\.block_size: 12 does not divide"),
        (["mask.block_size=32", "data.patch_size=[96, 96, 96]"], None),
        (["model.name=segresnet"], r"mask\.variant: s3d needs a ResEnc"),
        (
            ["mask.variant=dense", "model.name=swinunetr", "data.patch_size=[48, 48, 48]"],
            r"data\.patch_size: .* multiple of 32",
        ),
        (["model.name=resenc_tinny"], r"model\.name"),
    ],
)
def test_build_mae_checks_the_config(overrides: list[str], message: str | None) -> None:
    if message is None:  # a fitting geometry builds
        assert build_mae(_cfg(*overrides)).block_size == 32
        return
    with pytest.raises(ConfigError, match=message):
        build_mae(_cfg(*overrides))


def test_s3d_geometry_is_checked_against_the_network_strides() -> None:
    # 24^3 blocks tile 48^3 and are a multiple of every tiny stage's stride (24 = 3 x 8).
    build_mae(_cfg("data.patch_size=[48, 48, 48]", "mask.block_size=24"))
    # 6^3 blocks: not a multiple of the stage with total stride 4.
    with pytest.raises(ConfigError, match=r"mask\.block_size: 6 is not a multiple .*\(4, 4, 4\)"):
        build_mae(_cfg("data.patch_size=[48, 48, 48]", "mask.block_size=6"))
    # The dense variant only needs the blocks to tile the patch.
    build_mae(_cfg("data.patch_size=[48, 48, 48]", "mask.block_size=6", "mask.variant=dense"))


def test_forward_refuses_mismatched_masks() -> None:
    model = build_mae(_cfg())
    x, mask = _batch(model)
    with pytest.raises(ValueError, match="mask must be"):
        model(x, mask[:1])
    with pytest.raises(ValueError, match="not a multiple of the mask grid"):
        model(x[..., :30], mask)


def test_segmentation_model_from_config() -> None:
    net = build_segmentation_model(_cfg("model.in_channels=2"), num_classes=3)
    assert isinstance(net, nn.Module)
    out = net(torch.randn(1, 2, PATCH, PATCH, PATCH))
    assert out.shape == (1, 3, PATCH, PATCH, PATCH)
    ds = build_segmentation_model(_cfg("model.deep_supervision=true"), num_classes=2)
    outs = ds(torch.randn(1, 1, PATCH, PATCH, PATCH))
    assert isinstance(outs, list) and outs[0].shape == (1, 2, PATCH, PATCH, PATCH)
    with pytest.raises(ConfigError, match="num_classes"):
        build_segmentation_model(_cfg(), num_classes=1)
    with pytest.raises(ConfigError, match=r"model\.deep_supervision"):
        build_segmentation_model(
            _cfg("model.name=segresnet", "model.deep_supervision=true"), num_classes=2
        )


def test_config_geometry_warnings_use_the_registered_network() -> None:
    assert mae_geometry_warnings(load_config("tiny")) == []
    assert mae_geometry_warnings(load_config("paper")) == []
    old_tiny = load_config("tiny", ["data.patch_size=[48, 48, 48]", "mask.block_size=8"])
    assert len(mae_geometry_warnings(old_tiny)) == 2
