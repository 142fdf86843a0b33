"""Transfer of pretrained weights: key report, stem channel adaptation, nnssl/nnU-Net export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.config import Config, load_config
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.errors import ConfigError, DataError, ToolkitError, TrainingError
from toolkit.models import build_mae, build_segmentation_model
from toolkit.models.resenc import RESENC_TINY, ResEncSpec, build_resenc
from toolkit.pretrain import PretrainTask
from toolkit.transfer import (
    PretrainedWeights,
    canonical_keys,
    export_checkpoint,
    inspect_transfer,
    load_pretrained,
    plan_transfer,
    read_pretrained,
)

PLAN = {"dataset": "demo", "channels": ["image"], "target_spacing_mm": [2.5, 2.5, 2.5]}


def _cfg(*overrides: str) -> Config:
    return load_config("tiny", list(overrides))


def _pretrain_checkpoint(tmp_path: Path, cfg: Config, name: str = "final.pt") -> Path:
    """A pretraining checkpoint with the entries the engine writes for PretrainTask."""
    torch.manual_seed(0)
    mae = build_mae(cfg)
    source = ArrayPatchSource({"a": np.zeros((cfg.model.in_channels, 8, 8, 8), np.float32)})
    task = PretrainTask(cfg, source, ["a"])
    state: dict[str, Any] = {
        "config": cfg.to_dict(),
        "plan": PLAN,
        **task.model_state(mae),
        "step": 40,
        "toolkit_version": "test",
    }
    return save_checkpoint(tmp_path / "checkpoints" / name, state)


def _source(spec: ResEncSpec, in_channels: int = 1) -> PretrainedWeights:
    torch.manual_seed(1)
    net = build_resenc(spec, in_channels, in_channels)
    return PretrainedWeights(
        path=Path("mem.pt"),
        source_format="mae3d",
        state_dict=net.state_dict(),
        in_channels=in_channels,
    )


def _canonical_in(net: torch.nn.Module, prefix: str) -> set[str]:
    return {k for k in canonical_keys(net.state_dict()) if k.startswith(prefix)}


def test_round_trip_ours_to_nnssl_to_network(tmp_path: Path) -> None:
    cfg = _cfg()
    ckpt = _pretrain_checkpoint(tmp_path, cfg)
    ours = read_pretrained(ckpt)
    out = export_checkpoint(ckpt, tmp_path / "nnssl.pt", fmt="nnssl")

    raw = torch.load(out, weights_only=True)  # must not need pickled classes
    plan = raw["nnssl_adaptation_plan"]
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stem"
    assert plan["architecture_plans"]["arch_class_name"].endswith("unet.ResidualEncoderUNet")
    assert plan["architecture_plans"]["arch_kwargs_requiring_import"] == [
        "conv_op",
        "norm_op",
        "nonlin",
    ]
    assert plan["pretrain_plan"]["configurations"]["mae3d"]["spacing"] == [2.5, 2.5, 2.5]
    assert plan["recommended_downstream_patchsize"] == [40, 40, 40]  # the tiny preset's patch
    for key in ("optimizer_state", "current_epoch", "trainer_name", "init_args"):
        assert key in raw

    back = read_pretrained(out)
    assert back.source_format == "nnssl"
    assert list(back.state_dict) == list(ours.state_dict)
    for key, value in ours.state_dict.items():
        assert torch.equal(back.state_dict[key], value), key
    assert back.patch_size == (40, 40, 40) and back.spacing_mm == (2.5, 2.5, 2.5)

    # And into a segmentation network: the encoder equals the pretrained one exactly.
    seg = build_segmentation_model(cfg, 4)
    report = load_pretrained(seg, out, cfg, num_classes=4)
    assert report.ok and report.architecture_match is True
    for key, value in seg.state_dict().items():
        if key.startswith(("encoder.", "decoder.encoder.")):
            assert torch.equal(value, ours.state_dict[key]), key
    assert not torch.equal(
        seg.state_dict()["decoder.stages.0.convs.0.conv.weight"],
        ours.state_dict["decoder.stages.0.convs.0.conv.weight"],
    )


def test_export_nnunet_has_plain_network_weights(tmp_path: Path) -> None:
    cfg = _cfg()
    ckpt = _pretrain_checkpoint(tmp_path, cfg)
    out = export_checkpoint(ckpt, tmp_path / "nnunet.pt", fmt="nnunet")
    raw = torch.load(out, weights_only=True)
    assert "nnssl_adaptation_plan" not in raw
    net = build_resenc(RESENC_TINY, 1, 1)
    net.load_state_dict(raw["network_weights"])  # every key of the plain network, no prefixes


def test_transfer_decoder_loads_all_but_heads(tmp_path: Path) -> None:
    cfg = _cfg("finetune.transfer_decoder=true")
    ckpt = _pretrain_checkpoint(tmp_path, cfg)
    src = read_pretrained(ckpt)
    seg = build_segmentation_model(cfg, 3)
    head_before = seg.state_dict()["decoder.seg_layers.2.weight"].clone()
    report = load_pretrained(seg, src, cfg, num_classes=3)
    assert "decoder" in report.scope
    assert not any(".seg_layers." in k for k in report.loaded)
    assert report.not_transferred == 6  # weight + bias of the 3 reconstruction heads
    assert torch.equal(
        seg.state_dict()["decoder.stages.0.convs.0.conv.weight"],
        src.state_dict["decoder.stages.0.convs.0.conv.weight"],
    )
    assert torch.equal(seg.state_dict()["decoder.seg_layers.2.weight"], head_before)


def test_report_lists_shape_mismatches_for_other_features() -> None:
    cfg = _cfg()
    other = ResEncSpec(
        features=(*RESENC_TINY.features[:-1], RESENC_TINY.features[-1] + 8),
        strides=RESENC_TINY.strides,
        n_blocks_per_stage=RESENC_TINY.n_blocks_per_stage,
        n_conv_per_stage_decoder=RESENC_TINY.n_conv_per_stage_decoder,
    )
    seg = build_segmentation_model(cfg, 2)
    report, tensors = plan_transfer(seg, _source(other), cfg, num_classes=2)
    assert not report.ok
    assert {k for k, _, _ in report.shape_mismatched} == _canonical_in(seg, "encoder.stages.3.")
    assert report.missing == () and report.unexpected == ()
    assert set(report.loaded) == _canonical_in(seg, "encoder.stem.") | (
        _canonical_in(seg, "encoder.stages.") - _canonical_in(seg, "encoder.stages.3.")
    )
    conv = dict((k, (s, t)) for k, s, t in report.shape_mismatched)
    c2, c3 = RESENC_TINY.features[2], RESENC_TINY.features[3]
    assert conv["encoder.stages.3.blocks.0.conv1.conv.weight"] == (
        (c3 + 8, c2, 3, 3, 3),
        (c3, c2, 3, 3, 3),
    )
    assert set(tensors) == set(report.loaded)
    with pytest.raises(TrainingError, match=f"shape-mismatched: {len(report.shape_mismatched)}"):
        load_pretrained(seg, _source(other), cfg, num_classes=2)


def test_report_lists_missing_and_unexpected_for_other_depth() -> None:
    cfg = _cfg()
    deeper = ResEncSpec(
        features=RESENC_TINY.features,
        strides=RESENC_TINY.strides,
        n_blocks_per_stage=(1, 1, 2, 1),
        n_conv_per_stage_decoder=RESENC_TINY.n_conv_per_stage_decoder,
    )
    seg = build_segmentation_model(cfg, 2)
    report, _ = plan_transfer(seg, _source(deeper), cfg, num_classes=2)
    deeper_net = build_resenc(deeper, 1, 1)
    assert set(report.unexpected) == _canonical_in(deeper_net, "encoder.stages.2.blocks.1.")
    assert report.missing == () and report.shape_mismatched == ()

    # The other way round: the target has a block the checkpoint lacks.
    deeper_cfg_net = build_resenc(deeper, 1, 2)
    report2, _ = plan_transfer(deeper_cfg_net, _source(RESENC_TINY), cfg, num_classes=2)
    assert set(report2.missing) == _canonical_in(deeper_cfg_net, "encoder.stages.2.blocks.1.")
    assert report2.unexpected == ()
    text = report2.format()
    assert "INCOMPATIBLE" in text and "encoder.stages.2.blocks.1.conv1.conv.weight" in text


def test_stem_channel_repetition_numerics() -> None:
    cfg = _cfg("model.in_channels=2")
    src = _source(RESENC_TINY, in_channels=1)
    seg = build_segmentation_model(cfg, 2)
    report = load_pretrained(seg, src, cfg, num_classes=2)
    assert report.ok and report.source_in_channels == 1 and report.target_in_channels == 2
    assert report.channel_adaptation is not None and "divided by 2" in report.channel_adaptation

    w = src.state_dict["encoder.stem.convs.0.conv.weight"]
    got = seg.state_dict()["encoder.stem.convs.0.conv.weight"]
    assert got.shape == (RESENC_TINY.features[0], 2, 3, 3, 3)
    torch.testing.assert_close(got, torch.cat([w / 2, w / 2], dim=1))
    assert torch.equal(seg.state_dict()["encoder.stem.convs.0.all_modules.0.weight"], got)

    pretrained = build_resenc(RESENC_TINY, 1, 1)
    pretrained.load_state_dict(src.state_dict)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        conv_two = seg.encoder.stem.convs[0].conv(torch.cat([x, x], dim=1))
        conv_one = pretrained.encoder.stem.convs[0].conv(x)
        stem_two = seg.encoder.stem(torch.cat([x, x], dim=1))
        stem_one = pretrained.encoder.stem(x)
    torch.testing.assert_close(conv_two, conv_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stem_two, stem_one, rtol=1e-5, atol=1e-5)


def test_multichannel_stem_cannot_be_adapted() -> None:
    cfg = _cfg("model.in_channels=3")
    seg = build_segmentation_model(cfg, 2)
    report, _ = plan_transfer(seg, _source(RESENC_TINY, in_channels=2), cfg, num_classes=2)
    assert [k for k, _, _ in report.shape_mismatched] == ["encoder.stem.convs.0.conv.weight"]
    assert any("2-channel stem" in n for n in report.notes)


def test_report_notes_patch_and_spacing_differences(tmp_path: Path) -> None:
    ckpt = _pretrain_checkpoint(tmp_path, _cfg())
    report = inspect_transfer(
        ckpt, _cfg("data.patch_size=[32,32,32]", "data.target_spacing_mm=[1,1,1]"), num_classes=2
    )
    assert report.ok
    assert report.pretrain_patch_size == (40, 40, 40) and report.finetune_patch_size == (32, 32, 32)
    assert report.pretrain_spacing_mm == (2.5, 2.5, 2.5)
    assert any("patch size differs" in n for n in report.notes)
    assert any("spacing differs" in n for n in report.notes)


def test_bad_sources_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_pretrained(tmp_path / "nope.pt")
    other = save_checkpoint(tmp_path / "other.pt", {"weights": torch.ones(2)})
    with pytest.raises(DataError, match="neither a toolkit checkpoint"):
        read_pretrained(other)
    ckpt = _pretrain_checkpoint(tmp_path, _cfg())
    with pytest.raises(ConfigError, match="--format"):
        export_checkpoint(ckpt, tmp_path / "x.pt", fmt="onnx")


def test_export_refuses_monai_networks(tmp_path: Path) -> None:
    cfg = _cfg("model.name=unet_monai", "mask.variant=dense")
    ckpt = _pretrain_checkpoint(tmp_path, cfg)
    with pytest.raises(ToolkitError, match="only defined for ResidualEncoderUNet"):
        export_checkpoint(ckpt, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_cli_check_transfer_and_export(tmp_path: Path) -> None:
    ckpt = _pretrain_checkpoint(tmp_path, _cfg())
    runner = CliRunner()
    result = runner.invoke(app, ["check-transfer", str(ckpt), "tiny", "model.in_channels=2"])
    assert result.exit_code == 0, result.output
    assert "status: OK" in result.output and "divided by 2" in result.output
    out = tmp_path / "exported.pt"
    result = runner.invoke(app, ["export", str(ckpt), "--format", "nnssl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "nnssl_adaptation_plan" in torch.load(out, weights_only=True)
