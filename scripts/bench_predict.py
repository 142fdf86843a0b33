"""Benchmark ``mae3d predict``: seconds per 1 mm brain and the share of time outside the network.

Writes the MNI152 2009a T1 (197x233x189 at 1 mm, from nilearn's wheel, ``toolkit.data.mni``) as
``--cases`` copies, builds a fine-tuning run folder holding the ``tiny`` network (random weights:
speed does not depend on them) with a 1 mm plan and 4 classes, and runs
:func:`toolkit.predict_batch.predict` with sliding-window overlap ``--overlap``, without and with
mirror TTA. Prints, per setting: seconds per case, the network's seconds per case, and the share of
wall time spent outside the network (reading + preprocessing, inversion to the original grid,
writing), measured with ``--workers 0`` so the stages do not overlap; then the wall time with
background workers. Prints figures; asserts nothing.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_predict.py            # 2 cases, overlap 0.5
    .venv/bin/python scripts/bench_predict.py --cases 3 --tta off --device cuda
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_predict.py --cases 1 --tta on --no-workers-row

Set ``OMP_NUM_THREADS`` to fix the CPU threads torch and numpy use; the script prints the count.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from toolkit.config import load_config
from toolkit.data.mni import MNI152_LABELS, write_mni152_case
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.models import build_segmentation_model
from toolkit.predict import load_predictor
from toolkit.predict_batch import predict


def make_run(root: Path, device: str) -> Path:
    """A run folder with the tiny network, a 1 mm plan and the MNI152 tissue classes."""
    cfg = load_config("tiny", {"data.target_spacing_mm": [1.0, 1.0, 1.0], "runtime.device": device})
    torch.manual_seed(0)
    net = build_segmentation_model(cfg, len(MNI152_LABELS))
    run = root / "run"
    save_checkpoint(
        run / "checkpoints" / "best.pt",
        {
            "config": cfg.to_dict(),
            "model": net.state_dict(),
            "plan": {"target_spacing_mm": [1.0, 1.0, 1.0], "image_order": 3},
            "task_state": {"num_classes": len(MNI152_LABELS), "labels": MNI152_LABELS},
        },
    )
    return run


def measure(
    run: Path, scans: Path, out: Path, *, tta: bool, overlap: float, workers: int
) -> tuple[float, dict[str, float], int]:
    """``(wall seconds, seconds per stage, cases)`` of one predict call into a fresh folder."""
    shutil.rmtree(out, ignore_errors=True)
    predictor = load_predictor([run], overlap=overlap, mirror_tta=tta)
    started = time.perf_counter()
    report = predict([], scans, out, predictor=predictor, workers=workers, progress=False)
    wall = time.perf_counter() - started
    if report.failed:
        raise SystemExit(f"bench: cases failed: {report.failed}")
    return wall, report.timings, len(report.predicted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2, help="copies of the MNI152 brain")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1, help="for the background-workers row")
    parser.add_argument(
        "--tta", choices=("off", "on", "both"), default="both", help="mirror-TTA settings to run"
    )
    parser.add_argument(
        "--no-workers-row", action="store_true", help="skip the background-workers measurement"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        root = Path(tmp)
        write_mni152_case(root / "mni")
        scans = root / "scans"
        scans.mkdir()
        for i in range(args.cases):
            shutil.copy(root / "mni" / "images" / "mni152.nii.gz", scans / f"mni{i}.nii.gz")
        run = make_run(root, args.device)
        predictor = load_predictor([run])
        print(
            f"tiny network ({sum(p.numel() for p in predictor.runs[0].network.parameters()):,} "
            f"parameters), patch {predictor.runs[0].cfg.data.patch_size}, overlap "
            f"{args.overlap}, device {args.device}, torch threads {torch.get_num_threads()}, "
            f"{args.cases} case(s) of 197x233x189 at 1 mm"
        )
        for tta in {"off": [False], "on": [True], "both": [False, True]}[args.tta]:
            wall, stages, n = measure(
                run, scans, root / "out", tta=tta, overlap=args.overlap, workers=0
            )
            network = stages.get("network", 0.0)
            outside = wall - network
            detail = ", ".join(f"{k} {v / n:.2f}" for k, v in stages.items() if k != "network")
            print(
                f"TTA {'on ' if tta else 'off'} workers 0: {wall / n:.2f} s/case, network "
                f"{network / n:.2f} s/case, outside the network {outside / n:.2f} s/case "
                f"({100 * outside / wall:.1f} %; {detail} s/case)"
            )
            if args.no_workers_row:
                continue
            wall_w, _, _ = measure(
                run, scans, root / "out", tta=tta, overlap=args.overlap, workers=args.workers
            )
            print(
                f"TTA {'on ' if tta else 'off'} workers {args.workers}: {wall_w / n:.2f} s/case "
                f"(reading and writing overlap the network)"
            )


if __name__ == "__main__":
    main()
