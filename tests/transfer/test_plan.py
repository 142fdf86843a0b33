"""What transfers: key report, parameter counts, stem channel adaptation, decoder scope."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.transfer.factories import canonical_in, mem_source, pretrain_checkpoint, tiny_cfg
from toolkit.errors import TrainingError
from toolkit.models import build_segmentation_model
from toolkit.models.resenc import RESENC_TINY, ResEncSpec, build_resenc
from toolkit.transfer import inspect_transfer, load_pretrained, plan_transfer, read_pretrained


def test_transfer_decoder_loads_all_but_heads(tmp_path: Path) -> None:
    cfg = tiny_cfg("finetune.transfer_decoder=true")
    ckpt = pretrain_checkpoint(tmp_path, cfg)
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
    cfg = tiny_cfg()
    other = ResEncSpec(
        features=(*RESENC_TINY.features[:-1], RESENC_TINY.features[-1] + 8),
        strides=RESENC_TINY.strides,
        n_blocks_per_stage=RESENC_TINY.n_blocks_per_stage,
        n_conv_per_stage_decoder=RESENC_TINY.n_conv_per_stage_decoder,
    )
    seg = build_segmentation_model(cfg, 2)
    report, tensors = plan_transfer(seg, mem_source(other), cfg, num_classes=2)
    assert not report.ok
    assert {k for k, _, _ in report.shape_mismatched} == canonical_in(seg, "encoder.stages.3.")
    assert report.missing == () and report.unexpected == ()
    assert set(report.loaded) == canonical_in(seg, "encoder.stem.") | (
        canonical_in(seg, "encoder.stages.") - canonical_in(seg, "encoder.stages.3.")
    )
    conv = dict((k, (s, t)) for k, s, t in report.shape_mismatched)
    c2, c3 = RESENC_TINY.features[2], RESENC_TINY.features[3]
    assert conv["encoder.stages.3.blocks.0.conv1.conv.weight"] == (
        (c3 + 8, c2, 3, 3, 3),
        (c3, c2, 3, 3, 3),
    )
    assert set(tensors) == set(report.loaded)
    with pytest.raises(TrainingError, match=f"shape-mismatched: {len(report.shape_mismatched)}"):
        load_pretrained(seg, mem_source(other), cfg, num_classes=2)


def test_report_lists_missing_and_unexpected_for_other_depth() -> None:
    cfg = tiny_cfg()
    deeper = ResEncSpec(
        features=RESENC_TINY.features,
        strides=RESENC_TINY.strides,
        n_blocks_per_stage=(1, 1, 2, 1),
        n_conv_per_stage_decoder=RESENC_TINY.n_conv_per_stage_decoder,
    )
    seg = build_segmentation_model(cfg, 2)
    report, _ = plan_transfer(seg, mem_source(deeper), cfg, num_classes=2)
    deeper_net = build_resenc(deeper, 1, 1)
    assert set(report.unexpected) == canonical_in(deeper_net, "encoder.stages.2.blocks.1.")
    assert report.missing == () and report.shape_mismatched == ()

    # The other way round: the target has a block the checkpoint lacks.
    deeper_cfg_net = build_resenc(deeper, 1, 2)
    report2, _ = plan_transfer(deeper_cfg_net, mem_source(RESENC_TINY), cfg, num_classes=2)
    assert set(report2.missing) == canonical_in(deeper_cfg_net, "encoder.stages.2.blocks.1.")
    assert report2.unexpected == ()
    text = report2.format()
    assert "INCOMPATIBLE" in text and "encoder.stages.2.blocks.1.conv1.conv.weight" in text


def test_stem_channel_repetition_numerics() -> None:
    cfg = tiny_cfg("model.in_channels=2")
    src = mem_source(RESENC_TINY, in_channels=1)
    seg = build_segmentation_model(cfg, 2)
    report = load_pretrained(seg, src, cfg, num_classes=2)
    assert report.ok and report.source_in_channels == 1 and report.target_in_channels == 2
    assert report.channel_adaptation is not None and "divided by 2" in report.channel_adaptation
    # Counted from the modules themselves: stem + stages are the encoder's parameters.
    assert report.loaded_parameters == sum(p.numel() for p in seg.encoder.parameters())
    assert report.network_parameters == sum(p.numel() for p in seg.parameters())

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
    cfg = tiny_cfg("model.in_channels=3")
    seg = build_segmentation_model(cfg, 2)
    report, _ = plan_transfer(seg, mem_source(RESENC_TINY, in_channels=2), cfg, num_classes=2)
    assert [k for k, _, _ in report.shape_mismatched] == ["encoder.stem.convs.0.conv.weight"]
    assert any("2-channel stem" in n for n in report.notes)


def test_report_notes_patch_and_spacing_differences(tmp_path: Path) -> None:
    ckpt = pretrain_checkpoint(tmp_path, tiny_cfg())
    target = tiny_cfg("data.patch_size=[32,32,32]", "data.target_spacing_mm=[1,1,1]")
    report = inspect_transfer(ckpt, target, num_classes=2)
    assert report.ok
    assert report.pretrain_patch_size == (40, 40, 40) and report.finetune_patch_size == (32, 32, 32)
    assert report.pretrain_spacing_mm == (2.5, 2.5, 2.5)
    assert any("patch size differs" in n for n in report.notes)
    assert any("spacing differs" in n for n in report.notes)
