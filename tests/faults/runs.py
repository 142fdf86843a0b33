"""What the fault drills run: tiny data written in the test, configs, commands and checks.

Kept apart from :mod:`tests.test_fault_drills` so the drills read as the list of faults they try.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from tests.faults.drill import DrillLog, Reference, loss_curve, weight_differences
from tests.faults.launch import Launcher
from toolkit.engine.checkpoint import checkpoint_path

#: Settings of every drill run: tiny network, 16^3 patches, one thread, no loader workers.
COMMON = [
    "runtime.device=cpu",
    "runtime.threads=1",
    "data.patch_size=[16,16,16]",
    "data.target_spacing_mm=[1.0,1.0,1.0]",
    "mask.block_size=4",
    "data.num_workers=0",
]
#: Log every 2nd step, checkpoint every 3rd (a resume lands inside a log window), validate every
#: 3rd (a ``best`` checkpoint beside ``latest``).
PRETRAIN = [
    *COMMON,
    "pretrain.steps=6",
    "pretrain.log_every=2",
    "pretrain.checkpoint_every=3",
    "pretrain.val_every=3",
    "pretrain.snapshot_every=100",
    "data.val_fraction=0.25",
]
FINETUNE = [
    *COMMON,
    "finetune.steps=6",
    "finetune.log_every=2",
    "finetune.checkpoint_every=3",
    "finetune.val_every=3",
]


# --------------------------------------------------------------------------------------------------
# Data: small head-like blobs, written in the test


def _blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / rng.uniform(0.6, 0.9, (3, 1, 1, 1))) ** 2).sum(0))
    img = np.where(radius < 1, 100 + 50 * np.cos(4 * grid[0]) + rng.normal(0, 5, shape), 0)
    return img.astype(np.float32)


def write_manifests(root: Path, *, num_pretrain: int = 4, num_labelled: int = 5) -> None:
    """``root/pre.yaml`` (unlabelled) and ``root/lab.yaml`` (labels 0-2; 3 train, 1 val, rest
    test)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    pre: list[dict[str, object]] = []
    lab: list[dict[str, object]] = []
    for i in range(num_pretrain + num_labelled):
        image = _blob(rng, (20, 22, 18))
        name = f"img/s{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / name))
        case: dict[str, object] = {
            "id": f"s{i:02d}",
            "subject": f"s{i:02d}",
            "images": {"T1": name},
        }
        if i < num_pretrain:
            pre.append(case)
            continue
        label = np.digitize(image, [1.0, 110.0]).astype(np.uint8)  # 0 outside, 1 dark, 2 bright
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / f"img/s{i:02d}_seg.nii.gz"))
        j = len(lab)
        split = "train" if j < 3 else "val" if j == 3 else "test"
        lab.append({**case, "label": f"img/s{i:02d}_seg.nii.gz", "split": split})
    common = {"root": ".", "channels": ["T1"]}
    (root / "pre.yaml").write_text(yaml.safe_dump({"name": "pre", **common, "cases": pre}))
    labels = {0: "background", 1: "dark", 2: "bright"}
    (root / "lab.yaml").write_text(
        yaml.safe_dump({"name": "lab", **common, "labels": labels, "cases": lab})
    )


@dataclass
class Drills:
    """The module's shared folder, data, caches, fork-server launcher and reference pretraining."""

    root: Path
    launcher: Launcher
    pre_cache: Path
    lab_cache: Path
    pretrain_ref: Path
    pretrain_clean: Reference | None = None

    def launcher_for(self, kind: str) -> Launcher:
        return self.launcher if kind == "fork" else Launcher("exec", cwd=self.root)


def pretrain_argv(drills: Drills, out: Path) -> list[str]:
    return [
        "pretrain",
        "tiny",
        *PRETRAIN,
        f"data.cache_dir={drills.pre_cache}",
        "--out",
        str(out),
        "--no-progress",
    ]


def finetune_argv(drills: Drills, out: Path) -> list[str]:
    pretrained = checkpoint_path(drills.pretrain_ref, "final")
    return [
        "finetune",
        "tiny",
        *FINETUNE,
        f"data.cache_dir={drills.lab_cache}",
        "--pretrained",
        str(pretrained),
        "--out",
        str(out),
    ]


def resume_when_started(argv: list[str], run: Path) -> Callable[[], list[str]]:
    """The same command, with ``--resume`` once ``run`` holds a started run (as its error asks)."""
    return lambda: [*argv, "--resume"] if (run / "run.json").is_file() else list(argv)


def assert_same_run(ref: Path, run: Path, which: tuple[str, ...] = ("final", "best")) -> None:
    assert loss_curve(run) == loss_curve(ref)
    for name in which:
        diffs = weight_differences(checkpoint_path(ref, name), checkpoint_path(run, name))
        assert not diffs, f"{name}: {diffs[:5]}"


def report(name: str, record: DrillLog, clean: Reference) -> None:
    """Print what the drill did and cost (``pytest -s`` shows it)."""
    print(f"\n{name}: {record}; clean run {clean.seconds:.1f} s wall, {clean.cpu_s:.1f} s CPU")


def assert_drill_ok(record: DrillLog, log: Path) -> None:
    """Every launch but the last was killed (or finished), at least one kill landed, and the
    last launch finished cleanly: exit 0, no traceback, no error line."""
    assert record.exit_codes[-1] == 0, log.read_text()[-3000:]
    assert set(record.exit_codes[:-1]) <= {-9, 0}, (record, log.read_text()[-3000:])
    assert any(k is not None for k in record.kills), record
    last = log.read_text().rsplit("$ mae3d ", 1)[-1]
    assert "Traceback" not in last and "error:" not in last, last[-3000:]
