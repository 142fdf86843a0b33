"""``torchrun`` over the real ``mae3d pretrain`` / ``finetune`` commands with 2 gloo processes.

Two processes with half the batch each must train exactly like one process with the whole batch:
same losses, same weights. Before DDP was told about the decoder heads that a network without deep
supervision never runs, both tasks failed at their second step ("Expected to have finished
reduction in the prior iteration").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_finetune import _write_dataset
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
from toolkit.engine.logging import read_history

COMMON = [
    "runtime.device=cpu",
    "data.patch_size=[16,16,16]",
    "data.target_spacing_mm=[2.0,2.0,2.0]",
    "data.num_workers=0",
    "data.val_fraction=0.25",
]
PRETRAIN = ["pretrain.batch_size=2", "pretrain.steps=3", "pretrain.val_every=100"]
# 5 sawtooth steps: encoder frozen for 2 (lr 0), whole-net warm-up 1, decay 2.
FINETUNE = [
    "finetune.batch_size=2",
    "finetune.steps=5",
    "finetune.schedule=sawtooth",
    "finetune.val_every=100",
    "finetune.log_every=1",
    "finetune.augment=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mae3d(args: list[str], *, processes: int, cwd: Path, nodes: int = 1) -> None:
    """Run ``mae3d ARGS`` in this process (1) or under ``torchrun`` (gloo, on this machine).

    With ``nodes > 1`` this starts one ``torchrun`` per "node", all on localhost, meeting through
    c10d rendezvous as on a cluster (``--nnodes N --rdzv-backend=c10d``); they share the run folder
    as nodes share a file system.
    """
    if processes == 1 and nodes == 1:
        from toolkit.cli import main

        previous = Path.cwd()
        os.chdir(cwd)
        try:
            with pytest.raises(SystemExit) as done_one:
                main(args)
            assert done_one.value.code in (0, None)
        finally:
            os.chdir(previous)
        return
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch"
    if nodes == 1:
        rendezvous = ["--master_addr=127.0.0.1", f"--master_port={_free_port()}"]
    else:
        rendezvous = [
            f"--nnodes={nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
            "--rdzv-id=mae3d-test",
        ]
    launch = [torchrun, f"--nproc_per_node={processes}", *rendezvous, "--no-python"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [*launch, sys.executable, "-m", "toolkit.cli", *args]
    started = [
        subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(nodes)
    ]
    for node, proc in enumerate(started):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"node {node}: " + out[-2000:] + err[-4000:]


def _weights(run: Path, key: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint(checkpoint_path(run, "final"))
    assert state["world_size"] in (1, 2)
    return dict(state[key])


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_history(run) if "loss" in r]


def _assert_same_run(single: Path, ddp: Path, key: str) -> None:
    assert load_checkpoint(checkpoint_path(ddp, "final"))["world_size"] == 2
    assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-5, abs=1e-6)
    a, b = _weights(single, key), _weights(ddp, key)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def _pretrain_twice(tmp_path: Path, variant: str, *, nodes: int = 1) -> tuple[Path, Path, Path]:
    """One process, then 2 processes in total (1 node x 2, or ``nodes`` x 1 when nodes = 2)."""
    labelled, unlabelled = _write_dataset(tmp_path / "data")
    cfg = [*COMMON, *PRETRAIN, f"data.pretrain_manifest={unlabelled}", f"mask.variant={variant}"]
    runs = tmp_path / "runs"
    runs.mkdir()
    for processes, name in ((1, "one"), (2 // nodes, "two")):
        _mae3d(
            ["pretrain", "tiny", *cfg, "--out", str(runs / name), "--no-progress"],
            processes=processes,
            cwd=tmp_path,
            nodes=nodes if name == "two" else 1,
        )
    return runs / "one", runs / "two", labelled


def test_torchrun_pretrain_equals_one_process(tmp_path: Path) -> None:
    one, two, _ = _pretrain_twice(tmp_path, "dense")
    _assert_same_run(one, two, "network_weights")


def test_torchrun_two_nodes_equal_one_process(tmp_path: Path) -> None:
    """2 "nodes" x 1 process through c10d rendezvous, as ``torchrun --nnodes 2`` on a cluster."""
    one, two, _ = _pretrain_twice(tmp_path, "dense", nodes=2)
    _assert_same_run(one, two, "network_weights")


@pytest.mark.slow
def test_torchrun_finetune_equals_one_process(tmp_path: Path) -> None:
    one, _, labelled = _pretrain_twice(tmp_path, "dense")
    ckpt = checkpoint_path(one, "final")
    cfg = [*COMMON, *FINETUNE, f"data.finetune_manifest={labelled}"]
    for processes, name in ((1, "ft_one"), (2, "ft_two")):
        _mae3d(
            ["finetune", "tiny", *cfg, "--pretrained", str(ckpt), "--out", str(one.parent / name)],
            processes=processes,
            cwd=tmp_path,
        )
    _assert_same_run(one.parent / "ft_one", one.parent / "ft_two", "model")


@pytest.mark.slow
def test_torchrun_s3d_pretrain_equals_one_process(tmp_path: Path) -> None:
    one, two, _ = _pretrain_twice(tmp_path, "s3d")
    _assert_same_run(one, two, "network_weights")
    _assert_same_run(one, two, "extra_weights")
