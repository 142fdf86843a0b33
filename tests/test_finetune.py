"""Fine-tuning: schedules, frozen encoder, augmentation, case selection, a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.config import Config, load_config
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
from toolkit.engine.loop import build_training_state
from toolkit.engine.runtime import setup_runtime
from toolkit.engine.schedules import finetune_lr_lambdas, finetune_phases
from toolkit.engine.step import run_step
from toolkit.errors import ConfigError
from toolkit.evaluate import evaluate
from toolkit.finetune import (
    FinetuneTask,
    dice_per_label,
    finetune,
    finetune_or_reuse,
    intensity_augment,
    select_training_cases,
)
from toolkit.pretrain import pretrain
from toolkit.transfer import PretrainedWeights

LABELS = {0: "background", 1: "inner", 2: "outer"}


def _phantom(
    seed: int, shape: tuple[int, int, int] = (24, 24, 24)
) -> tuple[np.ndarray, np.ndarray]:
    """Two nested ellipsoids with label-dependent intensity and noise."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radii = rng.uniform(0.6, 0.85, size=3)
    r = np.sqrt(((grid / radii[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[r < 1.0] = 2
    label[r < 0.55] = 1
    image = np.choose(label, [0.0, 2.0, 1.0]) + 0.1 * rng.standard_normal(shape)
    image[label == 0] = 0.0
    return image.astype(np.float32), label


# --------------------------------------------------------------------------------------------------
# Schedules


def test_sawtooth_phases_and_values() -> None:
    enc, dec = finetune_lr_lambdas(
        "sawtooth", 200, warmup_fraction=0.1, decoder_warmup_fraction=0.05
    )
    assert finetune_phases("sawtooth", 200, warmup_fraction=0.1, decoder_warmup_fraction=0.05) == {
        "decoder_warmup_end": 10,
        "decoder_decay_end": 20,
        "warmup_end": 40,
    }
    assert [dec(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # decoder warm-up
    assert [dec(s) for s in (10, 14, 19)] == pytest.approx([0.9, 0.5, 0.0])  # decoder decay
    assert all(enc(s) == 0.0 for s in range(20))  # encoder frozen meanwhile
    assert [enc(s) for s in (20, 29, 39)] == pytest.approx([0.05, 0.5, 1.0])  # whole-net warm-up
    assert enc(40) == dec(40) == 1.0
    assert enc(120) == pytest.approx((1 - 80 / 160) ** 0.9)  # poly to the end
    assert enc(199) > 0 and enc(199) < 0.02


def test_other_schedules() -> None:
    kw = {"warmup_fraction": 0.1, "decoder_warmup_fraction": 0.05}
    enc, dec = finetune_lr_lambdas("warmup_poly", 100, **kw)
    assert [enc(s) for s in (0, 9, 10)] == pytest.approx([0.1, 1.0, 1.0])
    assert enc(55) == dec(55) == pytest.approx(0.5**0.9)
    enc, dec = finetune_lr_lambdas("frozen_encoder", 100, **kw)
    assert all(enc(s) == 0.0 for s in range(100)) and dec(9) == 1.0
    enc, dec = finetune_lr_lambdas("none", 100, **kw)
    assert enc(0) == dec(0) == 1.0 and enc(50) == pytest.approx(0.5**0.9)
    with pytest.raises(ConfigError, match="leave no steps"):
        finetune_lr_lambdas("sawtooth", 10, warmup_fraction=0.6, decoder_warmup_fraction=0.25)
    with pytest.raises(ConfigError, match="finetune.schedule"):
        finetune_lr_lambdas("cosine", 10, **kw)


# --------------------------------------------------------------------------------------------------
# Small pieces


def test_dice_per_label() -> None:
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1
    pred = np.zeros_like(ref)
    pred[:1] = 1
    assert dice_per_label(pred, ref, [1, 2]) == {1: pytest.approx(2 * 16 / (16 + 32)), 2: 1.0}


def test_intensity_augmentation_is_per_row_of_the_global_batch() -> None:
    x = torch.randn(4, 1, 8, 8, 8)
    full = intensity_augment(x, torch.Generator().manual_seed(3), torch.arange(4), 4, prob=1.0)
    assert not torch.equal(full, x)
    rows = torch.tensor([1, 3])
    part = intensity_augment(x[rows], torch.Generator().manual_seed(3), rows, 4, prob=1.0)
    torch.testing.assert_close(part, full[rows])
    same = intensity_augment(x, torch.Generator().manual_seed(3), torch.arange(4), 4, prob=0.0)
    torch.testing.assert_close(same, x)


def test_select_training_cases() -> None:
    ids = [f"c{i}" for i in range(6)]
    subject = {c: f"s{int(c[1:]) // 2}" for c in ids}.__getitem__  # two sessions per subject
    assert select_training_cases(ids, subject, 0, -1) == ids
    assert select_training_cases(ids, subject, 3, -1) == ["c0", "c1", "c2"]
    picked = select_training_cases(ids, subject, 2, 5)
    assert len(picked) == 2 and subject(picked[0]) == subject(picked[1])
    assert picked == select_training_cases(ids, subject, 2, 5)
    others = {tuple(select_training_cases(ids, subject, 2, s)) for s in range(6)}
    assert len(others) > 1


def _task_cfg(**overrides: object) -> Config:
    base = {
        "data.patch_size": [16, 16, 16],
        "finetune.batch_size": 2,
        "finetune.augment": False,
        "finetune.foreground_fraction": 0.5,
        "runtime.device": "cpu",
        "runtime.precision": "fp32",
    }
    base.update(overrides)
    return load_config("tiny", base)


def test_encoder_gets_no_update_while_frozen() -> None:
    cfg = _task_cfg(
        **{
            "finetune.steps": 10,
            "finetune.decoder_warmup_fraction": 0.2,
            "finetune.warmup_fraction": 0.1,
        }
    )
    images, labels = zip(*[_phantom(i, (20, 20, 20)) for i in range(2)], strict=True)
    source = ArrayPatchSource(
        {f"c{i}": im[None] for i, im in enumerate(images)},
        {f"c{i}": lab for i, lab in enumerate(labels)},
        LABELS,
    )
    from toolkit.models.resenc import RESENC_TINY, build_resenc

    torch.manual_seed(5)
    weights = build_resenc(RESENC_TINY, 1, 1).state_dict()
    pretrained = PretrainedWeights(path=Path("mem.pt"), source_format="mae3d", state_dict=weights)
    task = FinetuneTask(cfg, source, ["c0", "c1"], num_classes=3, pretrained=pretrained)
    rt = setup_runtime(cfg.runtime, init_distributed=False)
    state = build_training_state(task, cfg, rt)
    encoder = {n: p for n, p in state.module.named_parameters() if n.startswith("encoder.")}
    decoder_w = state.module.decoder.stages[0].convs[0].conv.weight
    before = {n: p.detach().clone() for n, p in encoder.items()}
    decoder_before = decoder_w.detach().clone()
    batches = task.train_batches(0, rt)
    for step in range(4):  # 2 decoder warm-up + 2 decay steps
        run_step(task, state, next(batches), step, rt, grad_clip=12.0)
    for n, p in encoder.items():
        assert torch.equal(p, before[n]), n
        assert p not in state.optimizer.state or not state.optimizer.state[p], n
    assert not torch.equal(decoder_w, decoder_before)
    run_step(task, state, next(batches), 4, rt, grad_clip=12.0)
    stem = encoder["encoder.stem.convs.0.conv.weight"]
    assert not torch.equal(stem, before["encoder.stem.convs.0.conv.weight"])
    task.close()


# --------------------------------------------------------------------------------------------------
# End to end: pretrain -> checkpoint -> fine-tune -> evaluate


def _write_dataset(root: Path) -> tuple[Path, Path]:
    cases, pre_cases = [], []
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(5):
        image, label = _phantom(i)
        save_volume(image, affine, root / f"img{i}.nii.gz")
        save_volume(label, affine, root / f"lab{i}.nii.gz")
        images = {"image": Path(f"img{i}.nii.gz")}
        cases.append(
            Case(
                case_id=f"c{i}",
                subject=f"s{i}",
                images=images,
                label=Path(f"lab{i}.nii.gz"),
                split="test" if i == 4 else "train",
            )
        )
        pre_cases.append(Case(case_id=f"c{i}", subject=f"s{i}", images=images))
    labelled = Manifest(
        name="toy",
        root=root,
        root_spec=".",
        channels=("image",),
        labels=LABELS,
        cases=tuple(cases),
    )
    unlabelled = Manifest(
        name="toy_pre", root=root, root_spec=".", channels=("image",), cases=tuple(pre_cases)
    )
    return save_manifest(labelled, root / "toy.yaml"), save_manifest(
        unlabelled, root / "toy_pre.yaml"
    )


def test_tiny_finetune_from_tiny_pretraining(tmp_path: Path) -> None:
    labelled, unlabelled = _write_dataset(tmp_path / "data")
    cfg = load_config(
        "tiny",
        {
            "data.pretrain_manifest": str(unlabelled),
            "data.finetune_manifest": str(labelled),
            "data.patch_size": [16, 16, 16],
            "data.target_spacing_mm": [2.0, 2.0, 2.0],
            "data.val_fraction": 0.25,
            "pretrain.steps": 4,
            "pretrain.val_every": 4,
            "pretrain.snapshot_every": 100,
            "finetune.steps": 24,
            "finetune.val_every": 12,
            "finetune.log_every": 4,
            "finetune.schedule": "warmup_poly",
            "finetune.optim.lr": 0.01,
            "finetune.augment": False,
        },
    )
    mae_run = pretrain(cfg, tmp_path / "runs" / "mae", progress=False)
    ckpt = checkpoint_path(mae_run, "final")
    run = finetune(cfg, tmp_path / "runs" / "ft", pretrained=ckpt, progress=False)

    for which in ("best", "final"):
        assert checkpoint_path(run, which).is_file()
    report = json.loads((run / "transfer_report.json").read_text())
    assert report["ok"] and report["source"] == str(ckpt)
    state = load_checkpoint(checkpoint_path(run, "final"))
    assert state["task_state"]["num_classes"] == 3
    assert state["task_state"]["schedule"] == "warmup_poly"
    assert len(state["task_state"]["train_ids"]) == 3 and len(state["task_state"]["val_ids"]) == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0], losses
    assert any("val_dice" in r for r in records)

    df = evaluate(run, labelled, split="test", progress=False)
    assert set(df["case"]) == {"c4"} and len(df) == 2

    # Resuming a finished run does nothing and keeps the result.
    assert finetune(cfg, run, pretrained=ckpt, resume=True, progress=False) == run
    # finetune_or_reuse leaves a finished run untouched.
    final = checkpoint_path(run, "final")
    stamp = final.read_bytes()
    assert finetune_or_reuse(cfg, run, pretrained=ckpt, progress=False) == run
    assert final.read_bytes() == stamp


@pytest.mark.parametrize(
    ("module", "runner", "helper"),
    [
        ("toolkit.finetune", "finetune", "finetune_or_reuse"),
        ("toolkit.pretrain", "pretrain", "pretrain_or_reuse"),
    ],
)
def test_or_reuse_resumes_only_unfinished_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, runner: str, helper: str
) -> None:
    import importlib

    mod = importlib.import_module(module)
    calls: list[tuple[str, bool]] = []

    def fake_run(cfg: Config, out: Path, **kwargs: object) -> Path:
        calls.append((Path(out).name, bool(kwargs["resume"])))
        return Path(out)

    monkeypatch.setattr(mod, runner, fake_run)
    cfg = load_config("tiny")
    extra = {"pretrained": None} if runner == "finetune" else {}
    for name, files in (("new", ()), ("interrupted", ("latest",)), ("done", ("latest", "final"))):
        for which in files:
            path = checkpoint_path(tmp_path / name, which)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
        assert getattr(mod, helper)(cfg, tmp_path / name, **extra) == tmp_path / name
    assert calls == [("new", False), ("interrupted", True)]


def test_finetune_cli_needs_exactly_one_start() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", "tiny", "--out", "x"])
    assert result.exit_code != 0
    assert "exactly one of --pretrained CKPT or --scratch" in str(result.exception)
