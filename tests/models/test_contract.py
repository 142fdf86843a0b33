"""One contract over every registered architecture, plus registry facts and parameter counts."""

from __future__ import annotations

import pydoc
from typing import Any

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from toolkit.errors import ConfigError
from toolkit.models import create_model, list_models, model_info
from toolkit.models.sparse import SparseResEncUNet

# Small enough for the full forward/backward contract on 2 CPU cores in a few seconds each.
FAST = {
    "resenc_tiny": (32, 32, 32),
    "resenc_small": (16, 16, 16),
    "segresnet": (32, 32, 32),
    "unet_monai": (32, 32, 32),
}
# Heavy ones (ResEnc-L family, SwinUNETR) run the same contract under the slow marker, at the
# smallest input their total downsampling allows with more than one bottleneck voxel (instance
# norm needs two), batch 1.
SLOW_SIZE = {"swinunetr": (64, 64, 64)}
# Registered names for the ResEnc-L network itself (test_m_l_xl_are_one_network checks that);
# running the contract on them again would only repeat resenc_l's.
SAME_AS_RESENC_L = {"resenc_m", "resenc_xl"}


def _contract_params() -> list[Any]:
    params = []
    for name in list_models():
        if name in SAME_AS_RESENC_L:
            continue
        if name in FAST:
            params.append(pytest.param(name, FAST[name], id=name))
        else:
            total = model_info(name)["total_stride"]
            size = SLOW_SIZE.get(name, (2 * total, total, total))
            params.append(pytest.param(name, size, id=name, marks=pytest.mark.slow))
    return params


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_issue_s_architectures_are_registered() -> None:
    expected = {
        "resenc_l", "resenc_m", "resenc_xl", "resenc_l_w1.5", "resenc_l_w2", "resenc_l_d134",
        "resenc_l_d174", "resenc_tiny", "resenc_small", "segresnet", "unet_monai", "swinunetr",
    }  # fmt: skip
    assert expected <= set(list_models())
    assert set(list_models("monai")) == {"segresnet", "unet_monai", "swinunetr"}


@pytest.mark.parametrize("name", list_models())
def test_model_info_is_consistent(name: str) -> None:
    info = model_info(name)
    assert info["family"] in ("resenc", "monai")
    assert info["supports_s3d"] == (info["family"] == "resenc")
    assert len(info["strides"]) == len(info["features"])
    assert info["description"]
    if info["family"] == "resenc":
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            net = create_model(name, 1, 1)
        assert isinstance(net, ResidualEncoderUNet)
        assert list(net.encoder.output_channels) == list(info["features"])
        assert [s[0] for s in net.encoder.strides] == list(info["strides"])


@pytest.mark.parametrize(("name", "size"), _contract_params())
def test_contract(name: str, size: tuple[int, int, int]) -> None:
    """Forward, output shape, backward: every parameter gets a finite gradient.

    ResEnc decoders always hold one head per decoder stage (nnU-Net builds them so checkpoints
    load either way) but only use them all with deep supervision, so ResEnc runs with it on.
    """
    torch.manual_seed(0)
    ds = model_info(name)["supports_deep_supervision"]
    net = create_model(name, in_channels=2, out_channels=3, deep_supervision=ds)
    batch = 2 if name in FAST else 1
    x = torch.randn(batch, 2, *size)
    outs = net(x) if ds else [net(x)]
    assert outs[0].shape == (batch, 3, *size)
    assert all(torch.isfinite(o).all() for o in outs)
    # A random projection, so no gradient is zero by symmetry of the loss.
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()  # type: ignore[union-attr]
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    bad = [n for n, p in net.named_parameters() if not torch.isfinite(p.grad).all()]  # type: ignore[arg-type]
    assert not bad, f"{name}: non-finite gradient for {bad[:5]}"
    assert any(bool(p.grad.abs().sum() > 0) for p in net.parameters())  # type: ignore[union-attr]


def test_resenc_deep_supervision_outputs_full_resolution_first() -> None:
    net = create_model("resenc_tiny", 1, 2, deep_supervision=True)
    outs = net(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32,) * 3, (16,) * 3, (8,) * 3]


def test_resenc_l_has_the_paper_s_parameter_count() -> None:
    # RECIPE: ~102 M with 1 in / 1 out, encoder + stem ~90.3 M, decoder ~12.0 M.
    with torch.device("meta"):
        net = create_model("resenc_l", 1, 1)
    total, encoder = _count(net), _count(net.encoder)
    assert 101.5e6 < total < 102.5e6
    assert 90.2e6 < encoder < 90.4e6
    assert 11.9e6 < total - encoder < 12.1e6


@pytest.mark.parametrize(
    ("name", "millions"),
    [("resenc_l_w1.5", 230), ("resenc_l_w2", 409), ("resenc_l_d134", 134), ("resenc_l_d174", 174)],
)
def test_variants_match_the_paper_s_sizes(name: str, millions: float) -> None:
    with torch.device("meta"):
        net = create_model(name, 1, 1)
    assert abs(_count(net) / 1e6 - millions) < 1.0


def test_m_l_xl_are_one_network() -> None:
    with torch.device("meta"):
        shapes = [
            {k: v.shape for k, v in create_model(n, 1, 1).state_dict().items()}
            for n in ("resenc_m", "resenc_l", "resenc_xl")
        ]
    assert shapes[0] == shapes[1] == shapes[2]


def test_s3d_extras_of_resenc_l_match_the_paper() -> None:
    # RECIPE: ~7.85 M extra parameters (3^3 densification convs) on ResEnc-L.
    with torch.device("meta"):
        s3d = SparseResEncUNet(create_model("resenc_l", 1, 1))
    assert 7.80e6 < _count(s3d.extras) < 7.90e6


def test_arch_kwargs_rebuild_the_same_network() -> None:
    """model_info's nnU-Net-style arch_kwargs are what nnU-Net / nnssl would instantiate."""
    info = model_info("resenc_l")
    kwargs = dict(info["arch_kwargs"])
    for key in info["arch_kwargs_requiring_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    assert pydoc.locate(info["arch_class_name"]) is ResidualEncoderUNet
    with torch.device("meta"):
        rebuilt = ResidualEncoderUNet(input_channels=1, num_classes=1, **kwargs)
        ours = create_model("resenc_l", 1, 1)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }


def test_nnunet_initialisation_is_applied() -> None:
    net = create_model("resenc_tiny", 1, 1)
    block = net.encoder.stages[1].blocks[0]
    # init_last_bn_before_add_to_0: residual branches start as identity.
    assert torch.all(block.conv2.norm.weight == 0)
    assert torch.all(net.encoder.stem.convs[0].conv.bias == 0)


def test_registry_errors_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"model\.name: .*did you mean 'resenc_tiny'"):
        create_model("resenc_tinny", 1, 1)
    with pytest.raises(ConfigError, match=r"model\.deep_supervision: segresnet"):
        create_model("segresnet", 1, 2, deep_supervision=True)
    with pytest.raises(ConfigError, match=r"model\.in_channels"):
        create_model("resenc_tiny", 0, 2)
    with pytest.raises(ConfigError, match=r"model\.name"):
        model_info("nope")
