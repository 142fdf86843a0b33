"""Benchmark the data path at OpenMind scale: 100,000 tiny volumes from import to first batch.

Generates an nnssl ``pretrain_data.json`` listing ``--n`` tiny NIfTI files (8^3 voxels, gzipped,
spread over folders of 1,000) and measures, each step in its own process (wall time and peak
resident memory of that process, from ``os.wait4``):

1. ``mae3d manifest import nnssl pretrain_data.json --out manifest.yaml``
2. ``mae3d manifest check manifest.yaml`` (with ``--fast`` when the command offers a header-only
   mode; the step says which)
3. the cache: ``mae3d preprocess manifest.yaml --out cache`` (``--cache-mode preprocess``), or
   ``--cache-mode index`` (:func:`build_index_cache`): one entry preprocessed, copied to every
   case with its own marker, and the real plan writer, for when preprocessing ``--n`` volumes
   does not fit the time at hand
4. a training process: open the cache, split by subject, build the patch dataset and a
   ``DataLoader`` (2 workers) and draw its first batch (6 patches of 8^3, the paper's batch size)

Prints the figures (and the targets of issue 12 for 2 cores: import <= 60 s, header check
<= 5 min, first batch <= 10 s, peak memory <= 2 GB); asserts nothing. Run it with one thread per
process, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py --n 100000 --work /tmp/scale
    .venv/bin/python scripts/bench_scale.py --n 200          # seconds; what the test runs

``--work`` keeps the generated files (a rerun reuses the source files and JSON).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Issue 12's targets on the 2-core machine, by step.
TARGETS = {"import": 60.0, "check": 300.0, "first_batch": 10.0}
PEAK_TARGET_MB = 2048.0
SIDE = 8
BATCH = 6


def nifti_bytes(volume: np.ndarray) -> bytes:
    """A gzipped single-file NIfTI-1 of ``volume`` (1 mm, RAS), as nibabel writes it."""
    import nibabel as nib

    img = nib.Nifti1Image(volume, np.eye(4))
    img.set_qform(np.eye(4), code=1)
    img.set_sform(np.eye(4), code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_source(work: Path, n: int, seed: int = 0) -> Path:
    """``n`` tiny NIfTI files and their nnssl ``pretrain_data.json``; returns the JSON path.

    Sixteen random volumes are cycled (writing 100k distinct gzip streams costs minutes and
    measures nothing the benchmark is about).
    """
    json_path = work / "pretrain_data.json"
    if json_path.is_file() and json.loads(json_path.read_text()).get("num_images") == n:
        return json_path
    rng = np.random.default_rng(seed)
    variants = [
        nifti_bytes(rng.uniform(1.0, 100.0, (SIDE,) * 3).astype(np.float32)) for _ in range(16)
    ]
    raw = work / "raw" / "Dataset001_Scale"
    subjects: dict[str, Any] = {}
    for i in range(n):
        folder = raw / f"{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        name = f"sub-{i:06d}_T1w.nii.gz"
        (folder / name).write_bytes(variants[i % len(variants)])
        subjects[f"sub-{i:06d}"] = {
            "subject_id": f"sub-{i:06d}",
            "sessions": {
                "ses-1": {
                    "session_id": "ses-1",
                    "images": [
                        {
                            "name": f"sub-{i:06d}_T1w",
                            "modality": "T1w",
                            "image_path": str(folder.relative_to(work) / name),
                        }
                    ],
                }
            },
        }
    data = {
        "collection_name": "scale",
        "collection_index": 1,
        "num_images": n,
        "datasets": {
            "Dataset001_Scale": {"dataset_index": "Dataset001_Scale", "subjects": subjects}
        },
    }
    json_path.write_text(json.dumps(data))
    return json_path


def run_measured(cmd: list[str], *, label: str) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak RSS (MB) of that process, exit code and output tail."""
    if label == "check":
        label = "manifest check" + (" --fast" if "--fast" in cmd else " (no --fast: reads voxels)")
    elif label == "cache" and "--build-index" in cmd:
        label = "cache index (1 entry preprocessed, copies)"
    elif label == "cache":
        label = f"preprocess ({cmd[cmd.index('--workers') + 1]} worker(s))"
    elif label == "first_batch":
        label = f"open cache + first batch ({cmd[-1]} loader workers)"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    tail = output.decode(errors="replace").strip().splitlines()[-3:]
    return {
        "label": label,
        "cmd": cmd,
        "seconds": seconds,
        "peak_mb": usage.ru_maxrss / 1024.0,  # Linux: KiB
        "rc": proc.returncode,
        "tail": tail,
    }


FIRST_BATCH = """
import sys, time, json
t0 = time.perf_counter()
from toolkit.data.cache import open_cache
from toolkit.data.sampling import (RandomPatchDataset, StepBatchSampler, make_loader,
                                   split_by_subject)
t_import = time.perf_counter() - t0
t1 = time.perf_counter()
cache = open_cache(sys.argv[1])
t_open = time.perf_counter() - t1
train, val = split_by_subject(cache.case_ids, cache.subject, 0.05, seed=0, split_of=cache.split)
ds = RandomPatchDataset(cache, train, (8, 8, 8), seed=0, batch_size=6)
loader = make_loader(ds, StepBatchSampler(0, 10, 6), num_workers=int(sys.argv[2]))
batch = next(iter(loader))
total = time.perf_counter() - t0
print(json.dumps({"import_s": t_import, "open_s": t_open, "total_s": total,
                  "batch": list(batch["image"].shape), "train": len(train), "val": len(val)}))
"""


def build_index_cache(json_path: Path, cache: Path) -> None:
    """A cache of every volume of ``json_path`` whose entries are copies of one real entry.

    The first case goes through the normal entry writer
    (:func:`toolkit.data.preprocess.entry.make_entry`: NIfTI read, crop, z-score, resample,
    checksums); every other entry gets its bytes, its own ``properties.json`` (case id) and a
    ``done.json`` with its own settings hash (from a ``stat`` of its input file), sizes and
    checksums; then ``plan.json`` is written by the function a shard merge uses
    (:func:`~toolkit.data.preprocess.writer.build_plan`, reading every ``properties.json``).
    What this skips is only the per-volume NIfTI read and resampling, which at 100k volumes does
    not fit a shared 2-core machine's time; the index a training process opens is the real one.
    The manifest comes from :func:`~toolkit.data.importers.import_nnssl` (no YAML round trip).
    """
    from toolkit.data.importers import import_nnssl
    from toolkit.data.preprocess.entry import (
        DONE_FILE,
        IMAGE_FILE,
        PROPERTIES_FILE,
        case_dirs,
        make_entry,
    )
    from toolkit.data.preprocess.integrity import entry_record, write_json_atomic
    from toolkit.data.preprocess.writer import CacheSettings, RunOutcome, build_plan, case_jobs

    t0 = time.perf_counter()
    m = import_nnssl(json_path)
    settings = CacheSettings((1.0, 1.0, 1.0), 3, "none")
    (cache / "cases").mkdir(parents=True, exist_ok=True)
    dirs = case_dirs(m.case_ids)
    jobs, failures = case_jobs(m, cache, settings, dirs)
    if failures:
        raise SystemExit(f"{len(failures)} inputs missing, e.g. {failures[0]}")
    first = make_entry(jobs[0])
    if first.status not in ("done", "reused"):
        raise SystemExit(f"first entry failed: {first}")
    source = Path(jobs[0]["dir"])
    image = (source / IMAGE_FILE).read_bytes()
    props = json.loads((source / PROPERTIES_FILE).read_text())
    t1 = time.perf_counter()
    for job in jobs[1:]:
        folder = Path(job["dir"])
        folder.mkdir(exist_ok=True)
        (folder / IMAGE_FILE).write_bytes(image)
        props["case_id"] = job["case_id"]
        (folder / PROPERTIES_FILE).write_text(json.dumps(props, indent=1))
        done = {"case_id": job["case_id"], "settings_hash": job["settings_hash"]}
        done.update(entry_record(folder, [IMAGE_FILE, PROPERTIES_FILE]))
        write_json_atomic(folder / DONE_FILE, done)
    t2 = time.perf_counter()
    plan = build_plan(m, cache, settings, dirs, RunOutcome())
    write_json_atomic(cache / "plan.json", plan.to_dict())
    t3 = time.perf_counter()
    print(
        f"index cache: manifest + jobs {t1 - t0:.1f} s, {len(jobs) - 1} entry copies "
        f"{t2 - t1:.1f} s, plan.json (reads every properties.json) {t3 - t2:.1f} s"
    )


def _command(
    step: str, mae3d: list[str], json_path: Path, manifest: Path, cache: Path, args: Any
) -> list[str]:
    """The command line of one measured step (its label is set by :func:`run_measured`)."""
    if step == "import":
        manifest.unlink(missing_ok=True)
        return [*mae3d, "manifest", "import", "nnssl", str(json_path), "--out", str(manifest)]
    if step == "check":
        import inspect

        from toolkit.cli.manifest import check

        fast = ["--fast"] if "fast" in inspect.signature(check).parameters else []
        return [*mae3d, "manifest", "check", str(manifest), "--no-progress", *fast]
    if step == "cache" and args.cache_mode == "index":
        return [sys.executable, __file__, "--build-index", str(json_path), str(cache)]
    if step == "cache":
        return [*mae3d, "preprocess", str(manifest), "--out", str(cache), "--workers",
                str(args.workers), "--no-progress", "--spacing", "1"]  # fmt: skip
    return [sys.executable, "-c", FIRST_BATCH, str(cache), str(args.loader_workers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="number of volumes")
    parser.add_argument("--work", type=Path, help="folder for generated files (default: temp)")
    parser.add_argument("--workers", type=int, default=1, help="preprocess worker processes")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("import", "check", "cache", "first_batch")
    )
    parser.add_argument(
        "--cache-mode",
        choices=("preprocess", "index"),
        default="preprocess",
        help="preprocess every volume, or copy one real entry (see build_index_cache)",
    )
    parser.add_argument("--build-index", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_index:
        build_index_cache(*args.build_index)
        return
    mae3d = [sys.executable, "-m", "toolkit.cli"]
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        print(f"bench_scale: n={args.n}, work={work}, cpus={os.cpu_count()}, "
              f"load average {os.getloadavg()[0]:.2f} at start")  # fmt: skip
        t0 = time.perf_counter()
        json_path = write_source(work, args.n)
        elapsed = time.perf_counter() - t0
        print(f"source: {args.n} NIfTI files + pretrain_data.json in {elapsed:.1f} s", flush=True)
        manifest = work / "manifest.yaml"
        cache = work / ("cache" if args.cache_mode == "preprocess" else "cache_index")
        print(f"{'step':44s} {'seconds':>9s} {'peak MB':>8s}  rc  target", flush=True)
        results = []
        for step in ("import", "check", "cache", "first_batch"):
            if step in args.skip:
                continue
            r = run_measured(_command(step, mae3d, json_path, manifest, cache, args), label=step)
            results.append(r)
            target = TARGETS.get(step)
            verdict = "ok" if target is not None and r["seconds"] <= target else "MISSED"
            mark = "" if target is None else f"<= {target:.0f} s {verdict}"
            if r["rc"] != 0:
                mark = "FAILED"
            print(f"{r['label']:44s} {r['seconds']:9.1f} {r['peak_mb']:8.0f}  {r['rc']:2d}  {mark}")
            if r["rc"] != 0 or "--build-index" in r["cmd"]:
                for line in r["tail"]:
                    print(f"    | {line[:300]}")
            elif step == "first_batch":
                info = json.loads(r["tail"][-1])
                after = info["total_s"] - info["import_s"]
                print(
                    f"    python + torch imports {info['import_s']:.1f} s; after them: open "
                    f"{info['open_s']:.2f} s, open + split + first batch {after:.1f} s "
                    f"({'ok' if after <= TARGETS['first_batch'] else 'MISSED'}); batch "
                    f"{info['batch']}, {info['train']} train / {info['val']} val cases"
                )
            sys.stdout.flush()
        plan = cache / "plan.json"
        plan_mb = plan.stat().st_size / 2**20 if plan.is_file() else 0.0
        peak = max((r["peak_mb"] for r in results), default=0.0)
        print(
            f"peak memory of any step: {peak:.0f} MB (target <= {PEAK_TARGET_MB:.0f} MB); "
            f"plan.json {plan_mb:.1f} MiB; load average {os.getloadavg()[0]:.2f} at end"
        )
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
