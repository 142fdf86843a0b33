"""Benchmark the patch cache: preprocessing throughput and random-patch read rate.

Builds a cache of brain-sized volumes (synthetic phantoms from ``toolkit.data.synthetic`` at their
drawn spacings, or smooth random 180x210x180 volumes with ``--source numpy``), unless ``--cache``
points at an existing one, then reads uniformly random patches (default 160^3, as in pretraining)
in this process and through a torch ``DataLoader``. Prints figures; asserts nothing.

Usage::

    .venv/bin/python scripts/bench_cache.py                      # 6 synthetic brains, 2 workers
    .venv/bin/python scripts/bench_cache.py --source numpy --num-volumes 6
    .venv/bin/python scripts/bench_cache.py --cache CACHE_DIR --patch 160 --num-patches 200
    .venv/bin/python scripts/bench_cache.py --source numpy --num-volumes 2 --storage  # formats

Reads come from the page cache once a case has been touched; the first pass over cold files also
measures the disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from toolkit.data.cache import Cache, open_cache
from toolkit.data.io import save_volume
from toolkit.data.preprocess import preprocess_manifest


def random_start(shape: tuple[int, int, int], size: int, rng: np.random.Generator) -> list[int]:
    """Uniform crop start; a volume smaller than the patch gets a random offset inside the patch."""
    return [int(rng.integers(min(0, d - size), max(0, d - size) + 1)) for d in shape]


class RandomPatches(Dataset[torch.Tensor]):
    """Map-style dataset: item ``i`` is a random patch (seeded by ``i``) of a random case."""

    def __init__(self, cache: Cache, size: int, length: int, seed: int) -> None:
        self.cache, self.size, self.length, self.seed = cache, size, length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, i])
        case = self.cache.case_ids[int(rng.integers(len(self.cache.case_ids)))]
        start = random_start(self.cache.shape(case), self.size, rng)
        image, _ = self.cache.read_patch(case, start, (self.size,) * 3)
        return torch.from_numpy(image)


def write_numpy_volumes(
    out: Path, num: int, shape: tuple[int, int, int], spacing: float, seed: int
) -> Path:
    """Smooth random volumes, zero outside an ellipsoid 'brain', and a manifest; returns it."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = (
        sum(((g - (n - 1) / 2) / (0.45 * n)) ** 2 for g, n in zip(grid, shape, strict=True)) < 1
    )
    cases = []
    for i in range(num):
        coarse = rng.standard_normal(tuple(max(2, n // 8) for n in shape)).astype(np.float32)
        smooth = ndimage.zoom(
            coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=1
        )
        noise = rng.standard_normal(shape).astype(np.float32)
        vol = np.where(inside, 500 + 100 * smooth + 20 * noise, 0).astype(np.float32)
        save_volume(vol, np.diag([spacing, spacing, spacing, 1.0]), out / f"vol{i}.nii")
        cases.append({"id": f"vol{i}", "subject": f"sub-{i}", "images": {"image": f"vol{i}.nii"}})
    manifest = out / "bench.yaml"
    manifest.write_text(
        yaml.safe_dump({"name": "bench", "root": ".", "channels": ["image"], "cases": cases})
    )
    return manifest


def bench_single(cache: Cache, size: int, num: int, seed: int) -> float:
    """Patches per second reading in this process (after one warm-up read per case)."""
    data = RandomPatches(cache, size, num, seed)
    for case in cache.case_ids:
        cache.read_patch(case, (0, 0, 0), (size,) * 3)
    start = time.perf_counter()
    for i in range(num):
        data[i]
    return num / (time.perf_counter() - start)


def bench_loader(cache: Cache, size: int, num: int, workers: int, batch: int, seed: int) -> float:
    """Patches per second through a DataLoader (the first batch, i.e. worker start-up, excluded)."""
    data = RandomPatches(cache, size, num + batch, seed + 1)
    loader = DataLoader(data, batch_size=batch, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    count = sum(b.shape[0] for b in it)
    return count / (time.perf_counter() - start)


def storage_variants(image: np.ndarray, folder: Path) -> dict[str, Any]:
    """Write one (C, D, H, W) float32 image in each candidate format; name -> opener.

    ``npy-float32`` is the cache's format; ``npy-float16`` halves it (z-scored intensities keep
    ~3 significant digits); ``blosc2-*`` are chunked, compressed NDArrays as nnU-Net v2 stores its
    preprocessed data (chunks 64^3, blocks 16^3, shuffle + LZ4 at level 1), read one thread.
    """
    import blosc2

    blosc2.set_nthreads(1)
    out: dict[str, Any] = {}
    for dtype in ("float32", "float16"):
        path = folder / f"image-{dtype}.npy"
        np.save(path, image.astype(dtype))
        out[f"npy-{dtype}"] = (path, lambda p=path: np.load(p, mmap_mode="r"))
        bpath = folder / f"image-{dtype}.b2nd"
        cparams = {"codec": blosc2.Codec.LZ4, "clevel": 1, "nthreads": 1}
        blosc2.asarray(
            np.ascontiguousarray(image.astype(dtype)),
            urlpath=str(bpath),
            mode="w",
            chunks=(1, 64, 64, 64),
            blocks=(1, 16, 16, 16),
            cparams=cparams,
        )
        out[f"blosc2-{dtype}"] = (bpath, lambda p=bpath: blosc2.open(str(p), mode="r"))
    return out


def bench_storage(image: np.ndarray, size: int, num: int, seed: int, folder: Path) -> None:
    """Bytes per volume and random ``size``^3 crop reads per second (one process, one thread)."""
    shape = image.shape[1:]
    print(f"storage of one {image.shape} float32 volume, random {size}^3 crops, 1 thread:")
    for name, (path, opener) in storage_variants(image, folder).items():
        array = opener()
        rng = np.random.default_rng(seed)
        starts = [random_start(shape, size, rng) for _ in range(num)]

        def crop(start: list[int], array: Any = array) -> np.ndarray:
            box = tuple(slice(max(s, 0), max(s, 0) + size) for s in start)
            return np.array(array[(slice(None), *box)], dtype=np.float32)  # a copy, as read_patch

        crop(starts[0])  # warm the page cache
        t0 = time.perf_counter()
        for start in starts:
            crop(start)
        rate = num / (time.perf_counter() - t0)
        err = float(np.abs(np.asarray(array[...], dtype=np.float32) - image).max())
        print(
            f"  {name:14s} {path.stat().st_size / 2**20:7.1f} MiB on disk  "
            f"{rate:6.1f} crops/s per core  max abs error {err:.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, help="existing cache folder (skip building one)")
    parser.add_argument("--work", type=Path, help="folder for generated data (default: a temp dir)")
    parser.add_argument("--source", choices=("synthetic", "numpy"), default="synthetic")
    parser.add_argument("--num-volumes", type=int, default=6)
    parser.add_argument("--shape", type=int, nargs=3, default=(180, 210, 180), help="numpy source")
    parser.add_argument("--source-spacing", type=float, default=1.2, help="numpy source, mm")
    parser.add_argument("--spacing", type=float, default=1.0, help="target spacing, mm")
    parser.add_argument("--preprocess-workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=160)
    parser.add_argument("--num-patches", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--storage",
        action="store_true",
        help="also compare .npy float32/float16 and blosc2 on the first case (bytes, crops/s)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        work = args.work or Path(tmp)
        if args.cache is not None:
            cache_dir = args.cache
        else:
            t0 = time.perf_counter()
            if args.source == "synthetic":
                from toolkit.data.synthetic import write_synthetic_dataset

                paths = write_synthetic_dataset(
                    work / "src", args.num_volumes, 0, args.seed, workers=args.preprocess_workers
                )
                manifest = paths["pretrain"]
            else:
                manifest = write_numpy_volumes(
                    work / "src",
                    args.num_volumes,
                    tuple(args.shape),
                    args.source_spacing,
                    args.seed,
                )
            print(f"source data ({args.source}): {time.perf_counter() - t0:.1f} s")
            cache_dir = work / "cache"
            plan = preprocess_manifest(
                manifest,
                cache_dir,
                target_spacing_mm=(args.spacing,) * 3,
                workers=args.preprocess_workers,
            )
            run, fp = plan.last_run, plan.fingerprint
            print(
                f"preprocess: {run['processed']} cases in {run['seconds']:.1f} s = "
                f"{run['processed'] / run['seconds']:.2f} cases/s "
                f"({args.preprocess_workers} workers; median original shape "
                f"{fp['median_shape']}, spacing {fp['median_spacing_mm']})"
            )
        cache = open_cache(cache_dir)
        shapes = [cache.shape(c) for c in cache.case_ids]
        print(f"cache: {len(cache)} cases, channels {cache.channels}, shapes {shapes}")
        mb = len(cache.channels) * args.patch**3 * 4 / 1e6
        rate = bench_single(cache, args.patch, args.num_patches, args.seed)
        print(f"read_patch {args.patch}^3, 1 process: {rate:.1f} patches/s = {rate * mb:.0f} MB/s")
        rate = bench_loader(
            cache, args.patch, args.num_patches, args.workers, args.batch_size, args.seed
        )
        print(
            f"DataLoader {args.patch}^3, {args.workers} workers, batch {args.batch_size}: "
            f"{rate:.1f} patches/s = {rate * mb:.0f} MB/s"
        )
        if args.storage:
            image, _ = cache.load_case(cache.case_ids[0])
            bench_storage(np.asarray(image), args.patch, args.num_patches, args.seed, work)


if __name__ == "__main__":
    main()
