"""The shared training loop: run folder, exact resume, clean stops, non-finite losses, DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.engine.toy import ToyTask, toy_config
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
from toolkit.engine.logging import read_history
from toolkit.engine.loop import STOP_FILE, step_generator, train
from toolkit.errors import TrainingError


def test_fresh_run_writes_the_run_folder(tmp_path: Path) -> None:
    task = ToyTask(steps=6, log_every=2, val_every=3, checkpoint_every=2)
    result = train(task, toy_config(), tmp_path, progress=False)

    assert result.status == "completed" and result.step == 6 and len(result.losses) == 6
    for name in ("config.yaml", "run.json", "metrics.csv", "metrics.jsonl", "loss.png"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tb").iterdir())
    for which in ("latest", "best", "final"):
        assert checkpoint_path(tmp_path, which).is_file(), which
    history = read_history(tmp_path)
    assert [r["step"] for r in history if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in history if "val_loss" in r] == [3, 6]
    # window means of the per-step losses
    assert history[0]["loss"] == pytest.approx(sum(result.losses[:2]) / 2)
    assert task.validations == 2
    assert result.best_step in (3, 6)
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["device"] == "cpu" and info["precision"] == "fp32"


def test_checkpoint_is_plain_data_with_everything_to_resume(tmp_path: Path) -> None:
    train(ToyTask(steps=2, checkpoint_every=1), toy_config(), tmp_path, progress=False)
    path = checkpoint_path(tmp_path, "final")
    raw = torch.load(path, weights_only=True)  # no toolkit classes inside
    for key in (
        "config",
        "plan",
        "toolkit_version",
        "step",
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "rng",
        "task_state",
        "best",
    ):
        assert key in raw, key
    assert raw["step"] == 2
    assert raw["config"]["runtime"]["device"] == "cpu"
    assert set(raw["model"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(raw["rng"]) >= {"python", "numpy", "torch"}
    # latest mirrors final at the end of a run
    assert load_checkpoint(checkpoint_path(tmp_path, "latest"))["step"] == 2


def test_resume_continues_exactly(tmp_path: Path) -> None:
    cfg = toy_config()
    full = train(ToyTask(steps=6), cfg, tmp_path / "full", progress=False)

    run = tmp_path / "split"
    first = train(ToyTask(steps=6, stop_at=2, run_dir=run), cfg, run, progress=False)
    assert first.status == "stopped" and first.step == 3
    assert not (run / STOP_FILE).exists()
    assert load_checkpoint(checkpoint_path(run, "latest"))["step"] == 3
    second = train(ToyTask(steps=6), cfg, run, resume=True, progress=False)

    assert second.start_step == 3 and second.step == 6
    assert first.losses + second.losses == full.losses  # bit for bit on CPU
    a = load_checkpoint(checkpoint_path(tmp_path / "full", "final"))["model"]
    b = load_checkpoint(checkpoint_path(run, "final"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # no duplicated steps in the metrics after the resume
    steps = [r["step"] for r in read_history(run) if "loss" in r]
    assert steps == sorted(set(steps)) == [2, 4, 6]
    # the same logged curve: step 4 averages steps 3 (before the stop) and 4 (after the resume)
    curve = [(r["step"], r["loss"], r["grad_norm"]) for r in read_history(run) if "loss" in r]
    full_curve = [
        (r["step"], r["loss"], r["grad_norm"])
        for r in read_history(tmp_path / "full")
        if "loss" in r
    ]
    assert curve == full_curve


def test_resume_of_a_run_saved_with_the_shared_optim_section(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    # An old config could only say one momentum for both stages.
    cfg = toy_config(finetune__optim__momentum=0.9)
    first = train(ToyTask(steps=4, stop_at=2, run_dir=tmp_path), cfg, tmp_path, progress=False)
    assert first.status == "stopped"
    # Rewrite the checkpoint's config the way older versions saved it: one top-level optim.
    path = checkpoint_path(tmp_path, "latest")
    raw = load_checkpoint(path)
    old = dict(raw["config"])
    pretrain_section = dict(old["pretrain"])
    old["optim"] = pretrain_section.pop("optim")
    old["pretrain"] = pretrain_section
    finetune_section = dict(old["finetune"])
    finetune_optim = finetune_section.pop("optim")
    finetune_section["lr_pretrained"] = finetune_optim["lr"]
    finetune_section["lr_scratch"] = finetune_optim["lr_scratch"]
    old["finetune"] = finetune_section
    torch.save({**raw, "config": old}, path)
    capsys.readouterr()
    second = train(ToyTask(steps=4), cfg, tmp_path, resume=True, progress=False)
    assert second.step == 4
    # Migrated before comparing: the same settings are not reported as a changed config.
    assert "changed config" not in capsys.readouterr().out


def test_sigint_stops_cleanly_after_the_step(tmp_path: Path) -> None:
    result = train(ToyTask(steps=6, interrupt_at=2), toy_config(), tmp_path, progress=False)
    assert result.status == "stopped" and result.step == 3
    assert load_checkpoint(checkpoint_path(tmp_path, "latest"))["step"] == 3


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"non-finite loss at step 5 .*latest\.pt"):
        train(
            ToyTask(steps=6, nan_at=5, checkpoint_every=2), toy_config(), tmp_path, progress=False
        )
    ckpt = load_checkpoint(checkpoint_path(tmp_path, "latest"))
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not checkpoint_path(tmp_path, "final").exists()


def test_non_finite_gradient_is_caught_before_the_update(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"non-finite gradient norm at step 3 .*latest\.pt"):
        train(
            ToyTask(steps=6, grad_nan_at=3, checkpoint_every=2),
            toy_config(),
            tmp_path,
            progress=False,
        )
    ckpt = load_checkpoint(checkpoint_path(tmp_path, "latest"))
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_non_finite_loss_before_any_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no checkpoint was written"):
        train(ToyTask(steps=6, nan_at=1), toy_config(), tmp_path, progress=False)


def test_run_folder_guards(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(ToyTask(steps=2), toy_config(), tmp_path, resume=True, progress=False)
    train(ToyTask(steps=2), toy_config(), tmp_path, progress=False)
    with pytest.raises(TrainingError, match="already holds a run"):
        train(ToyTask(steps=2), toy_config(), tmp_path, progress=False)
    done = train(ToyTask(steps=2), toy_config(), tmp_path, resume=True, progress=False)
    assert done.status == "already_complete" and done.losses == []


def test_step_generator_depends_on_seed_step_and_stream_only() -> None:
    def draw(*args: int) -> torch.Tensor:
        return torch.rand(4, generator=step_generator(*args))

    assert torch.equal(draw(0, 5, 1), draw(0, 5, 1))
    assert not torch.equal(draw(0, 5, 1), draw(0, 6, 1))
    assert not torch.equal(draw(0, 5, 1), draw(0, 5, 2))
    assert not torch.equal(draw(0, 5, 1), draw(1, 5, 1))


# --------------------------------------------------------------------------------------------------
# DDP: 2 gloo processes with batch 1 each == 1 process with batch 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    train(ToyTask(steps=2, batch_size=2, checkpoint_every=2), toy_config(), run_dir, progress=False)


def test_ddp_gloo_update_equals_single_process(tmp_path: Path) -> None:
    single = train(
        ToyTask(steps=2, batch_size=2, checkpoint_every=2),
        toy_config(),
        tmp_path / "single",
        progress=False,
    )
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)

    a = load_checkpoint(checkpoint_path(tmp_path / "single", "final"))
    b = load_checkpoint(checkpoint_path(tmp_path / "ddp", "final"))
    assert b["world_size"] == 2
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-6, rtol=0)
    ddp_losses = [r["loss"] for r in read_history(tmp_path / "ddp") if "loss" in r]
    assert ddp_losses == pytest.approx([sum(single.losses) / 2], abs=1e-6)
