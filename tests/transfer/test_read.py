"""Reading pretraining checkpoints: formats, fields, clear errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.transfer.factories import (
    nnssl_arch_kwargs,
    nnssl_checkpoint,
    nnssl_network,
    pretrain_checkpoint,
    tiny_cfg,
)
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.errors import ConfigError, DataError
from toolkit.models import model_info
from toolkit.models.resenc import RESENC_L, RESENC_SMALL, RESENC_TINY
from toolkit.transfer import export_checkpoint, read_pretrained, resolve_architecture


def test_bad_sources_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_pretrained(tmp_path / "nope.pt")
    other = save_checkpoint(tmp_path / "other.pt", {"weights": torch.ones(2)})
    with pytest.raises(DataError, match="neither a toolkit checkpoint"):
        read_pretrained(other)
    ckpt = pretrain_checkpoint(tmp_path, tiny_cfg())
    with pytest.raises(ConfigError, match="--format"):
        export_checkpoint(ckpt, tmp_path / "x.pt", fmt="onnx")


@pytest.mark.parametrize("convert_numpy", [True, False], ids=["nnssl", "numpy-in-plan"])
def test_nnssl_trainer_checkpoint_is_read_with_its_plan(
    tmp_path: Path, convert_numpy: bool
) -> None:
    network = nnssl_network(RESENC_SMALL)
    ckpt = nnssl_checkpoint(
        tmp_path / "checkpoint_final.pth",
        RESENC_SMALL,
        network=network,
        spacing_zyx=(1.5, 1.0, 0.5),
        convert_numpy=convert_numpy,
    )
    src = read_pretrained(ckpt)
    assert src.source_format == "nnssl" and src.trainer_name == "BaseMAETrainer_BS8"
    assert src.arch_class_name == "ResidualEncoderUNet"
    assert src.model_candidates == ("resenc_small",) and src.model_name == "resenc_small"
    # nnssl's (z, y, x) order reversed onto the cache grid.
    assert src.patch_size == (48, 40, 32) and src.spacing_mm == (0.5, 1.0, 1.5)
    assert src.recommended_patch_size == (160, 160, 160)
    assert src.in_channels == 1 and src.key_to_encoder == "encoder.stages"
    assert list(src.state_dict) == list(network.state_dict())
    for key, value in network.state_dict().items():
        assert torch.equal(src.state_dict[key], value), key


def test_published_resencl_preset_is_resenc_l() -> None:
    # nnssl's BaseMAETrainer writes ArchitecturePlans("ResEncL"): a name, no kwargs.
    candidates, kwargs = resolve_architecture("ResEncL", None, source="ckpt.pth")
    assert candidates[0] == "resenc_l" and set(candidates) == {"resenc_l", "resenc_m", "resenc_xl"}
    assert kwargs == model_info("resenc_l")["arch_kwargs"]
    # The same network spelled as nnssl serialises DynamicArchitecturePlans resolves the same way.
    spelled = nnssl_arch_kwargs(RESENC_L)
    for key in ("conv_op", "norm_op", "nonlin"):
        spelled[key] = f"{spelled[key].__module__}.{spelled[key].__name__}"
    assert resolve_architecture("ResidualEncoderUNet", spelled, source="c")[0][0] == "resenc_l"
    dotted = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    assert resolve_architecture(dotted, spelled, source="c")[0][0] == "resenc_l"


def test_bad_nnssl_fields_name_the_field(tmp_path: Path) -> None:
    ckpt = nnssl_checkpoint(tmp_path / "c.pth", RESENC_TINY)
    state = torch.load(ckpt, weights_only=True)

    def write(name: str, change: Callable[[dict[str, Any]], None]) -> Path:
        bad = copy.deepcopy(state)
        change(bad)
        return save_checkpoint(tmp_path / name, bad)

    no_arch = write("a.pth", lambda s: s["nnssl_adaptation_plan"].pop("architecture_plans"))
    with pytest.raises(DataError, match=r"a.pth: .*architecture_plans.arch_class_name is missing"):
        read_pretrained(no_arch)
    weights = write("w.pth", lambda s: s.update(network_weights=[1, 2]))
    with pytest.raises(DataError, match=r"w.pth: network_weights is not a state dict"):
        read_pretrained(weights)

    def two_configurations(s: dict[str, Any]) -> None:
        configs = s["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]
        configs["3d_fullres"] = dict(configs["onemmiso"])
        s["init_args"].pop("configuration_name")

    with pytest.raises(DataError, match="lists 2 configurations .* init_args does not say"):
        read_pretrained(write("two.pth", two_configurations))
