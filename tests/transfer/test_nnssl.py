"""nnssl format: checkpoints as nnssl writes them, our export, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from tests.transfer.factories import (
    NNSSL_ADAPTATION_FIELDS,
    NNSSL_ARCH_FIELDS,
    NNSSL_CONFIGURATION_FIELDS,
    NNSSL_PLAN_FIELDS,
    nnssl_checkpoint,
    nnssl_network,
    pretrain_checkpoint,
    tiny_cfg,
)
from toolkit.cli import app, main
from toolkit.config import Config
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
from toolkit.errors import ToolkitError
from toolkit.models import build_segmentation_model
from toolkit.models.resenc import RESENC_SMALL, RESENC_TINY, ResEncSpec, build_resenc
from toolkit.transfer import canonical_keys, export_checkpoint, load_pretrained, read_pretrained


def test_round_trip_ours_to_nnssl_to_network(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    ckpt = pretrain_checkpoint(tmp_path, cfg)
    ours = read_pretrained(ckpt)
    out = export_checkpoint(ckpt, tmp_path / "nnssl.pt", fmt="nnssl")

    raw = torch.load(out, weights_only=True)  # must not need pickled classes
    plan = raw["nnssl_adaptation_plan"]
    assert plan["key_to_encoder"] == "encoder.stages" and plan["key_to_stem"] == "encoder.stem"
    # nnssl's DYN_ARCHITECTURE_PRESETS spelling, which its verify_adaptation_plans requires.
    assert plan["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
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
    cfg = tiny_cfg()
    ckpt = pretrain_checkpoint(tmp_path, cfg)
    out = export_checkpoint(ckpt, tmp_path / "nnunet.pt", fmt="nnunet")
    raw = torch.load(out, weights_only=True)
    assert "nnssl_adaptation_plan" not in raw
    net = build_resenc(RESENC_TINY, 1, 1)
    net.load_state_dict(raw["network_weights"])  # every key of the plain network, no prefixes


def test_export_refuses_monai_networks(tmp_path: Path) -> None:
    cfg = tiny_cfg("model.name=unet_monai", "mask.variant=dense")
    ckpt = pretrain_checkpoint(tmp_path, cfg)
    with pytest.raises(ToolkitError, match="only defined for ResidualEncoderUNet"):
        export_checkpoint(ckpt, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_cli_check_transfer_and_export(tmp_path: Path) -> None:
    ckpt = pretrain_checkpoint(tmp_path, tiny_cfg())
    runner = CliRunner()
    result = runner.invoke(app, ["check-transfer", str(ckpt), "tiny", "model.in_channels=2"])
    assert result.exit_code == 0, result.output
    assert "status: OK" in result.output and "divided by 2" in result.output
    out = tmp_path / "exported.pt"
    result = runner.invoke(app, ["export", str(ckpt), "--format", "nnssl", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "nnssl_adaptation_plan" in torch.load(out, weights_only=True)


# --------------------------------------------------------------------------------------------------
# Checkpoints written the way nnssl writes them, through the real command line


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize("convert_numpy", [True, False], ids=["nnssl", "numpy-in-plan"])
def test_check_transfer_builds_the_network_the_nnssl_plan_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], convert_numpy: bool
) -> None:
    # The plan describes resenc_small; the config says resenc_tiny: the plan decides.
    ckpt = nnssl_checkpoint(
        tmp_path / "checkpoint_final.pth", RESENC_SMALL, convert_numpy=convert_numpy
    )
    code, out, err = _cli(["check-transfer", str(ckpt), "tiny"], capsys)
    assert code == 0, out + err
    assert "model.name: resenc_small (built from the checkpoint's nnssl adaptation plan" in out
    assert "status: OK" in out and "architecture match: yes" in out
    seg = build_segmentation_model(tiny_cfg("model.name=resenc_small"), 2)
    encoder_tensors = {k for k in canonical_keys(seg.state_dict()) if k.startswith("encoder.")}
    encoder_params = sum(p.numel() for p in seg.encoder.parameters())
    total_params = sum(p.numel() for p in seg.parameters())
    assert (
        f"loaded: {len(encoder_tensors)} tensors, {encoder_params:,} of the network's "
        f"{total_params:,} parameters" in out
    )
    # nnssl's (z, y, x) patch (32, 40, 48) is (48, 40, 32) on the cache grid.
    assert "patch size: pretrain 48x40x32" in out and "recommends fine-tuning patches" in out


def test_finetune_cli_from_an_nnssl_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_finetune import _write_dataset

    labelled, _ = _write_dataset(tmp_path / "data")
    network = nnssl_network(RESENC_SMALL)
    ckpt = nnssl_checkpoint(tmp_path / "checkpoint_final.pth", RESENC_SMALL, network=network)
    pretrained = {k: v.clone() for k, v in torch.load(ckpt)["network_weights"].items()}
    run = tmp_path / "ft"
    args = [
        "finetune",
        "tiny",
        f"data.finetune_manifest={labelled}",
        "data.patch_size=[16,16,16]",
        "data.target_spacing_mm=[2,2,2]",
        "finetune.steps=3",
        "finetune.val_every=3",
        "finetune.augment=false",
        "finetune.schedule=frozen_encoder",
        "--pretrained",
        str(ckpt),
        "--out",
        str(run),
    ]
    code, out, err = _cli(args, capsys)
    assert code == 0, out + err
    assert "model.name: resenc_small" in out + err
    report = json.loads((run / "transfer_report.json").read_text())
    assert report["ok"] and report["source_format"] == "nnssl"
    state = load_checkpoint(checkpoint_path(run, "final"))
    assert state["config"]["model"]["name"] == "resenc_small"
    # Encoder frozen: after training it is still the pretrained one, key for key.
    encoder = [k for k in state["model"] if k.startswith("encoder.")]
    assert encoder and set(encoder) <= set(pretrained)
    for key in encoder:
        assert torch.equal(state["model"][key], pretrained[key]), key


@pytest.mark.parametrize(
    ("arch_class_name", "with_kwargs", "spec", "message"),
    [
        ("PrimusM", False, RESENC_TINY, "arch_class_name is 'PrimusM', which the toolkit cannot"),
        ("NoSkipResEncL", False, RESENC_TINY, "'NoSkipResEncL', which the toolkit cannot build"),
        ("ResidualEncoderUNet", False, RESENC_TINY, "but arch_kwargs is empty"),
        (
            "ResidualEncoderUNet",
            True,
            ResEncSpec((4, 8, 16, 24), (1, 2, 2, 2), (1, 1, 1, 1), (1, 1, 1)),
            "matches no registered model (closest: resenc_tiny, differing in features_per_stage",
        ),
    ],
)
def test_a_plan_we_cannot_build_is_one_clear_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arch_class_name: str,
    with_kwargs: bool,
    spec: ResEncSpec,
    message: str,
) -> None:
    ckpt = nnssl_checkpoint(
        tmp_path / "c.pth", spec, arch_class_name=arch_class_name, with_arch_kwargs=with_kwargs
    )
    code, out, err = _cli(["check-transfer", str(ckpt), "tiny"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {ckpt}: nnssl_adaptation_plan.architecture_plans")
    assert message in lines[0]


def test_export_nnssl_round_trip_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = pretrain_checkpoint(tmp_path, tiny_cfg())
    out = tmp_path / "mae3d_nnssl.pth"
    code, text, err = _cli(["export", str(ckpt), "--format", "nnssl", "--out", str(out)], capsys)
    assert code == 0, text + err
    raw = torch.load(out, weights_only=True)
    plan = raw["nnssl_adaptation_plan"]
    # Exactly the fields nnssl's from_dict / dataclasses take, or nnssl could not rebuild it.
    assert set(plan) == NNSSL_ADAPTATION_FIELDS
    assert set(plan["pretrain_plan"]) == NNSSL_PLAN_FIELDS
    (configuration,) = plan["pretrain_plan"]["configurations"].values()
    assert set(configuration) == NNSSL_CONFIGURATION_FIELDS
    assert set(plan["architecture_plans"]["arch_kwargs"]) == NNSSL_ARCH_FIELDS
    assert raw["init_args"]["configuration_name"] in plan["pretrain_plan"]["configurations"]

    code, text, err = _cli(["check-transfer", str(out), "tiny", "model.in_channels=2"], capsys)
    assert code == 0, text + err
    assert "Transfer report:" in text and "(nnssl)" in text and "status: OK" in text
    assert "architecture match: yes" in text and "divided by 2" in text
    assert "model.name:" not in text  # the config's own network is the plan's


@pytest.mark.slow
def test_published_size_resenc_l_checkpoint_through_check_transfer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OpenMind-style ResEnc-L checkpoint ("ResEncL", no kwargs; ~102 M parameters)."""
    from toolkit.models.resenc import RESENC_L

    ckpt = nnssl_checkpoint(
        tmp_path / "checkpoint_final.pth",
        RESENC_L,
        arch_class_name="ResEncL",
        with_arch_kwargs=False,
        patch_size_zyx=(160, 160, 160),
    )
    code, out, err = _cli(
        ["check-transfer", str(ckpt), "tiny", "model.in_channels=2", "data.patch_size=[64,64,64]"],
        capsys,
    )
    assert code == 0, out + err
    assert "model.name: resenc_l (built from the checkpoint's nnssl adaptation plan, ResEncL" in out
    assert "status: OK" in out and "divided by 2" in out


def test_label_efficiency_trains_both_arms_on_the_plans_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pandas as pd

    import toolkit.label_efficiency as le

    seen: list[str] = []

    def fake(cfg: Config, pretrained: Path, **kwargs: object) -> pd.DataFrame:
        seen.append(cfg.model.name)
        return pd.DataFrame({"k": [1], "arm": ["scratch"], "dice": [0.5]})

    monkeypatch.setattr(le, "run_label_efficiency", fake)
    ckpt = nnssl_checkpoint(tmp_path / "c.pth", RESENC_SMALL)
    argv = ["label-efficiency", "tiny", "--pretrained", str(ckpt), "-o", str(tmp_path / "le")]
    code, out, err = _cli(argv, capsys)
    assert code == 0, out + err
    assert seen == ["resenc_small"] and "model.name: resenc_small" in out
