"""model.init: PyTorch's defaults for pretraining (as nnssl), nnU-Net's for fine-tuning networks."""

from __future__ import annotations

import math

import pytest
import torch
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from torch import nn

from toolkit.config import load_config
from toolkit.engine.runtime import seed_everything
from toolkit.errors import ConfigError
from toolkit.models import (
    build_initial_mae,
    build_mae,
    build_segmentation_model,
    create_model,
    resolve_init,
)
from toolkit.models.sparse import S3DExtras

HE_GAIN = math.sqrt(2.0 / (1.0 + 1e-2**2))  # kaiming_normal_ with a = 1e-2 (nnU-Net)


def _last_norm_weights(net: nn.Module) -> list[torch.Tensor]:
    blocks = [m for m in net.modules() if isinstance(m, BasicBlockD)]
    assert blocks, "the network has no residual blocks"
    return [b.conv2.norm.weight.detach() for b in blocks]


def _big_convs(module: nn.Module) -> list[nn.Conv3d]:
    # Enough weights for the sample std to be within a few percent of the true one.
    return [m for m in module.modules() if isinstance(m, nn.Conv3d) and m.weight.numel() >= 2000]


def _fan_in(conv: nn.Conv3d) -> int:
    return conv.weight.shape[1] * math.prod(conv.weight.shape[2:])


def _assert_he_normal(convs: list[nn.Conv3d]) -> None:
    assert convs
    for conv in convs:
        expected = HE_GAIN / math.sqrt(_fan_in(conv))
        assert float(conv.weight.detach().std()) == pytest.approx(expected, rel=0.1)
        assert conv.bias is None or float(conv.bias.detach().abs().max()) == 0.0


def _assert_torch_default(convs: list[nn.Conv3d]) -> None:
    assert convs
    for conv in convs:
        bound = 1.0 / math.sqrt(_fan_in(conv))  # kaiming_uniform_(a=sqrt(5))
        w = conv.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3.0), rel=0.1)
        assert conv.bias is not None and float(conv.bias.detach().abs().max()) > 0.0


def test_nnunet_init_zeroes_last_block_norms_and_draws_he_normal() -> None:
    torch.manual_seed(0)
    net = create_model("resenc_tiny", 1, 1, init="nnunet")
    assert all(float(w.abs().max()) == 0.0 for w in _last_norm_weights(net))
    _assert_he_normal(_big_convs(net))


def test_torch_init_keeps_pytorch_defaults() -> None:
    torch.manual_seed(0)
    net = create_model("resenc_tiny", 1, 1, init="torch")
    assert all(torch.equal(w, torch.ones_like(w)) for w in _last_norm_weights(net))
    _assert_torch_default(_big_convs(net))


def test_pretraining_defaults_to_torch_and_finetuning_to_nnunet() -> None:
    cfg = load_config("tiny")
    assert cfg.model.init == "auto"
    torch.manual_seed(0)
    mae = build_mae(cfg)
    assert all(torch.equal(w, torch.ones_like(w)) for w in _last_norm_weights(mae.network))
    _assert_torch_default(_big_convs(mae.network))
    seg = build_segmentation_model(cfg, num_classes=2)
    assert all(float(w.abs().max()) == 0.0 for w in _last_norm_weights(seg))
    _assert_he_normal(_big_convs(seg))
    # Explicit choices override the stage default.
    nn_mae = build_mae(cfg.replace(["model.init=nnunet"]))
    assert all(float(w.abs().max()) == 0.0 for w in _last_norm_weights(nn_mae.network))
    torch_seg = build_segmentation_model(cfg.replace(["model.init=torch"]), num_classes=2)
    assert all(torch.equal(w, torch.ones_like(w)) for w in _last_norm_weights(torch_seg))


@pytest.mark.parametrize("scheme", ["torch", "nnunet"])
def test_s3d_extras_follow_the_scheme(scheme: str) -> None:
    torch.manual_seed(0)
    mae = build_mae(load_config("tiny", [f"model.init={scheme}", "mask.variant=s3d"]))
    assert isinstance(mae.extras, S3DExtras)
    convs = _big_convs(mae.extras)
    (_assert_torch_default if scheme == "torch" else _assert_he_normal)(convs)
    assert mae.extras.mask_tokens is not None
    for token in mae.extras.mask_tokens:  # SparK's truncated normal under every scheme
        assert 0.0 < float(token.detach().abs().max()) <= 0.02


def test_build_initial_mae_is_what_a_pretraining_run_starts_from() -> None:
    cfg = load_config("tiny")
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_initial_mae(cfg, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)  # global state untouched
    seed_everything(5)  # what the engine does before Task.build_model
    b = build_mae(cfg)
    c = build_initial_mae(cfg, seed=6)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)
    pairs = list(zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert not all(torch.equal(x, y) for x, y in pairs)


def test_bad_init_names() -> None:
    with pytest.raises(ConfigError, match="model.init: must be one of auto, torch, nnunet"):
        load_config("tiny", ["model.init=he"])
    with pytest.raises(ConfigError, match="model.init"):
        resolve_init("xavier", "pretrain")
    with pytest.raises(ConfigError, match="model.init"):
        create_model("resenc_tiny", 1, 1, init="auto")
