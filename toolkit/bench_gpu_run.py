"""The ``short_run`` stage of ``mae3d bench gpu``: the real commands, end to end, for a few minutes.

Step timings say how fast one step is; they do not say that a run works. This stage runs what a
user runs, through the same library functions as ``mae3d pretrain``, ``finetune`` and ``predict``:

1. synthetic brains (1 mm on a GPU) written, checked and preprocessed into a cache;
2. MAE pretraining with the preset for about ``pretrain_s`` seconds (the step count comes from the
   step time measured by the ``steps`` stage) — the loss must fall;
3. the ``final`` checkpoint reloaded as fine-tuning reads it, and ``finetune_steps`` fine-tuning
   steps from it;
4. sliding-window segmentation of the MNI152 case (1 mm on a GPU), timed with and without mirror
   test-time augmentation.

On a CPU the same stage runs at the tiny preset's size in seconds, so the test suite keeps it alive.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ShortRunSizes:
    """How much the short run does.

    Attributes:
        subjects: unlabelled synthetic pretraining subjects.
        labelled: labelled synthetic subjects (fine-tuning).
        spacing_mm: voxel size of the written subjects.
        pretrain_s: target wall time of pretraining.
        min_steps, max_steps: bounds on the pretraining steps.
        finetune_steps: fine-tuning steps from the pretrained checkpoint.
        reserve_s: budget the stage needs to start.
    """

    subjects: int
    labelled: int
    spacing_mm: float
    pretrain_s: float
    min_steps: int
    max_steps: int
    finetune_steps: int
    reserve_s: float

    @classmethod
    def for_device(cls, cuda: bool) -> ShortRunSizes:
        """~2 minutes of paper-preset pretraining on 1 mm brains on a GPU; seconds on a CPU."""
        if cuda:
            return cls(8, 4, 1.0, 120.0, 50, 5000, 100, 240.0)
        return cls(2, 3, 4.0, 4.0, 12, 24, 4, 5.0)


def run_short(
    out: Path,
    overrides: dict[str, Any],
    *,
    preset: str,
    cuda: bool,
    sec_per_step: float | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Pretrain, reload, fine-tune and segment MNI152 for real; return what was measured.

    Args:
        out: working folder (data, cache and runs go below it).
        overrides: config overrides of the measured configuration (model, patch, device,
            precision).
        preset: ``paper`` or ``tiny``.
        cuda: GPU sizes.
        sec_per_step: the measured pretraining step time (None: use ``min_steps``).
        log: progress lines.

    Returns:
        A JSON-ready dict: data and preprocessing seconds, pretraining steps / seconds / first and
        last loss and whether it fell, the reload check, fine-tuning seconds and transfer counts,
        and MNI152 segmentation seconds with and without mirror TTA.
    """
    from toolkit.config import load_config
    from toolkit.data.manifest import load_manifest
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
    from toolkit.engine.logging import read_history
    from toolkit.finetune import finetune
    from toolkit.predict import load_predictor
    from toolkit.pretrain import pretrain
    from toolkit.study import preprocess_all, write_study_data
    from toolkit.transfer import read_pretrained

    sizes = ShortRunSizes.for_device(cuda)
    result: dict[str, Any] = {"sizes": asdict(sizes)}
    started = time.perf_counter()
    data = write_study_data(
        out / "data",
        num_pretrain_subjects=sizes.subjects,
        num_labelled=sizes.labelled,
        data_seed=0,
        spacing_mm=sizes.spacing_mm,
        test_fraction=0.34,
        name="bench",
    )
    result["data_s"] = time.perf_counter() - started

    steps = sizes.min_steps
    if sec_per_step is not None and sec_per_step > 0:
        steps = int(min(max(sizes.pretrain_s / sec_per_step, sizes.min_steps), sizes.max_steps))
    log_every = max(1, steps // 20)
    cfg = load_config(
        preset,
        {
            **overrides,
            "data.target_spacing_mm": [sizes.spacing_mm] * 3,
            "data.cache_dir": str(out / "cache" / load_manifest(data["pretrain"]).name),
            "data.finetune_manifest": str(data["labelled"]),
            "pretrain.steps": steps,
            "pretrain.log_every": log_every,
            "pretrain.val_every": steps,
            "pretrain.checkpoint_every": steps,
            "pretrain.snapshot_every": steps,
            "finetune.steps": sizes.finetune_steps,
            "finetune.log_every": max(1, sizes.finetune_steps // 10),
            "finetune.val_every": sizes.finetune_steps,
            "finetune.checkpoint_every": sizes.finetune_steps,
        },
    )
    started = time.perf_counter()
    preprocess_all({"pretrain": data["pretrain"]}, out / "cache", cfg)
    result["preprocess_s"] = time.perf_counter() - started

    started = time.perf_counter()
    pre_run = pretrain(cfg, out / "pretrain", progress=False)
    seconds = time.perf_counter() - started
    losses = [float(r["loss"]) for r in read_history(pre_run) if "loss" in r]
    k = max(1, len(losses) // 4)
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    result["pretrain"] = {
        "steps": steps,
        "seconds": seconds,
        "sec_per_step": seconds / steps,
        "first_loss": first,
        "last_loss": last,
        "loss_fell": bool(math.isfinite(last) and last < first),
    }
    log(f"short run: pretrained {steps} steps in {seconds:.1f} s, loss {first:.4f} -> {last:.4f}")

    final = checkpoint_path(pre_run, "final")
    state = load_checkpoint(final)
    weights = read_pretrained(final)
    result["reload"] = {
        "checkpoint_mb": final.stat().st_size / 1e6,
        "step": int(state["step"]),
        "tensors": len(weights.state_dict),
        "ok": int(state["step"]) == steps and len(weights.state_dict) > 0,
    }

    started = time.perf_counter()
    ft_run = finetune(cfg, out / "finetune", pretrained=final, progress=False)
    seconds = time.perf_counter() - started
    report_path = ft_run / "transfer_report.json"
    transfer = json.loads(report_path.read_text()) if report_path.is_file() else {}
    result["finetune"] = {
        "steps": sizes.finetune_steps,
        "seconds": seconds,
        "transferred": len(transfer.get("loaded", [])) if transfer else None,
    }
    log(f"short run: fine-tuned {sizes.finetune_steps} steps in {seconds:.1f} s")

    mni = load_manifest(data["mni152"])
    (case,) = mni.cases
    segment: dict[str, Any] = {}
    for tta in (False, True):
        predictor = load_predictor([ft_run], checkpoint="final", mirror_tta=tta)
        image, _ = predictor.preprocess(mni.image_paths(case))
        started = time.perf_counter()
        predictor.segment(image)
        segment["tta" if tta else "plain"] = time.perf_counter() - started
        segment["grid"] = list(image.shape[1:])
    result["mni152_segment_s"] = segment
    log(
        f"short run: MNI152 {segment['grid']} in {segment['plain']:.1f} s "
        f"({segment['tta']:.1f} s with mirror TTA)"
    )
    return result


__all__ = ["ShortRunSizes", "run_short"]
