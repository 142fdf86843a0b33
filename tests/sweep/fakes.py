"""Shared fixtures of the sweep tests: small manifests and specs, and an instant fake executor."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.sweep import Run, SweepPlan

EXAMPLE = (
    Path(__file__).resolve().parents[2] / "data_manifests" / "sweeps" / "example_mask_ratio.yaml"
)


def write_manifest(path: Path, name: str, *, labelled: bool = True) -> Path:
    """A manifest of two cases (one train, one test); the files need not exist for a spec."""
    cases = tuple(
        Case(
            case_id=f"{name}-{i}",
            subject=f"{name}-{i}",
            images={"image": Path(f"images/{i}.nii.gz")},
            label=Path(f"labels/{i}.nii.gz") if labelled else None,
            split=("train", "test")[i] if labelled else None,
        )
        for i in range(2)
    )
    labels = {0: "background", 1: "csf", 2: "gm", 3: "wm"} if labelled else None
    m = Manifest(
        name=name,
        root=path.parent,
        root_spec=".",
        channels=("image",),
        labels=labels,
        cases=cases,
    )
    return save_manifest(m, path)


def spec_dict(tmp_path: Path) -> dict[str, Any]:
    """4 pretraining configs x 2 fine-tuning schedules x 2 datasets, 1 seed, with scratch."""
    write_manifest(tmp_path / "pre.yaml", "pre", labelled=False)
    write_manifest(tmp_path / "d1.yaml", "d1")
    write_manifest(tmp_path / "d2.yaml", "d2")
    return {
        "name": "toy",
        "base": "tiny",
        "overrides": ["pretrain.steps=7", "finetune.steps=5"],
        "axes": {
            "mask.ratio": [0.6, 0.75],
            "mask.variant": ["dense", "s3d"],
            "finetune.schedule": ["sawtooth", "warmup_poly"],
        },
        "pretrain_data": "pre.yaml",
        "datasets": ["d1.yaml", {"manifest": "d2.yaml"}],
        "seeds": [0],
        "scratch": True,
    }


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    data = {**spec_dict(tmp_path), **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class FakeExecutor:
    """Stands in for pretraining / fine-tuning + evaluation: instant, deterministic.

    Fine-tuning runs write ``evaluation/metrics.csv`` (2 cases x 3 labels) whose Dice depends on
    the run's config label and seed.

    Args:
        fail_once: runs that raise on their first call.
        fail_always: runs that always raise.
        interrupt: runs that raise KeyboardInterrupt on their first call (a killed sweep).
    """

    def __init__(
        self,
        fail_once: set[str] | None = None,
        fail_always: set[str] | None = None,
        interrupt: set[str] | None = None,
    ) -> None:
        self.fail_once = set(fail_once or ())
        self.fail_always = set(fail_always or ())
        self.interrupt = set(interrupt or ())
        self.calls: list[str] = []

    def __call__(self, plan: SweepPlan, run: Run) -> Mapping[str, Any]:
        self.calls.append(run.name)
        if run.name in self.interrupt:
            self.interrupt.discard(run.name)
            raise KeyboardInterrupt
        if run.name in self.fail_always:
            raise RuntimeError(f"boom in {run.name}")
        if run.name in self.fail_once:
            self.fail_once.discard(run.name)
            raise RuntimeError(f"first try of {run.name} fails")
        run_dir = plan.run_dir(run)
        if run.kind == "finetune":
            assert (
                run.pretrain_run is None or (plan.run_dir(run.pretrain_run) / "done.json").is_file()
            )
            base = (zlib.crc32(f"{run.config_label}/{run.dataset}".encode()) % 1000) / 2000
            rows = [
                {
                    "run": run.name,
                    "checkpoint": "best",
                    "dataset": run.dataset,
                    "case": f"c{c}",
                    "subject": f"s{c}",
                    "label": label,
                    "label_name": {1: "csf", 2: "gm", 3: "wm"}[label],
                    "dice": 0.4 + base + 0.01 * label + 0.001 * (run.seed or 0),
                    "hd95_mm": 3.0,
                    "ref_volume_ml": 1.0,
                    "pred_volume_ml": 1.1,
                    "ref_empty": False,
                    "pred_empty": False,
                }
                for c in range(2)
                for label in (1, 2, 3)
            ]
            (run_dir / "evaluation").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(run_dir / "evaluation" / "metrics.csv", index=False)
        return {"train_time_s": 1.5, "num_params": 1234}
