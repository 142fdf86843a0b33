"""Read access to a patch cache written by :func:`toolkit.data.preprocess.preprocess_manifest`.

Format choice: every case is an uncompressed ``.npy`` file read with ``np.load(mmap_mode="r")``. A
patch read touches only the pages it slices, costs one memcpy from the page cache and no CPU for
decompression, which matters on data-loader machines with few cores. Measured on a 2-core VM for
160^3 patches of a 180x210x180 float32 volume (a one-off comparison while writing this module):
``.npy`` memory-mapped 125-290 patches/s in one process; blosc2 NDArray (LZ4/ZSTD, 64^3-96^3
chunks, 16^3-32^3 blocks, i.e. nnU-Net v2's scheme) 37-60 patches/s using both cores. blosc2
stores about 2.4x less (27 MB vs 11 MB per brain at 1 mm on that test volume), which is what to
weigh for caches that do not fit the page cache or local disk (40k brains at 1 mm: about 1.1 TB as
``.npy``). ``scripts/bench_cache.py --storage`` measures the candidates again, one thread, random
160^3 crops of a 194x226x194 volume (2026-11-29, 2-core VM at load average ~10): ``.npy``
float32 65 crops/s (32.4 MiB), ``.npy`` float16 11/s (16.2 MiB; NumPy's half -> float
conversion dominates), blosc2 LZ4 float32 8/s (16.7 MiB), blosc2 float16 7/s (9.0 MiB). Only
float32 ``.npy`` keeps >= 50 crops/s per core, so it stays the only format.

A :class:`Cache` is cheap to pickle: files are opened lazily in whichever process reads them (each
``DataLoader`` worker keeps its own small set of open memory maps).

Example:
    >>> cache = open_cache("cache/demo")  # doctest: +SKIP
    >>> image, label = cache.read_patch(cache.case_ids[0], (-8, 0, 0), (160,) * 3)  # doctest: +SKIP
    >>> image.shape  # doctest: +SKIP
    (1, 160, 160, 160)
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.preprocess import (
    CACHE_FORMAT_VERSION,
    CASES_DIR,
    DONE_FILE,
    FOREGROUND_FILE,
    IMAGE_FILE,
    LABEL_FILE,
    PLAN_FILE,
    PROPERTIES_FILE,
)
from toolkit.data.preprocess.integrity import check_entry_files, read_entry
from toolkit.errors import DataError

PathLike = str | os.PathLike[str]

#: Memory maps kept open per process; more only costs file descriptors and address space.
MAX_OPEN_CASES = 16


#: How much of an entry is checked the first time a process opens it (see :func:`open_cache`).
VERIFY_MODES = ("checksum", "size")


def open_cache(path: PathLike, *, verify: str = "checksum") -> Cache:
    """Open a preprocessed cache folder.

    Opening reads ``plan.json`` and checks that every listed entry has its completion marker
    (one ``stat`` per case, no volume read: 2.5 s for 100k cases on a busy 2-core VM, plus ~3 s
    to parse their 46 MiB ``plan.json``). Each entry is checked the first time a process reads
    it, before any of its voxels are returned: file sizes always, and with ``verify="checksum"``
    (the default) the CRC-32 of every file, which costs about one read of the entry (~15 ms for a
    1 mm brain) once per process (so once per data-loader worker).

    Args:
        path: the ``out_dir`` given to ``preprocess_manifest`` / ``mae3d preprocess``.
        verify: ``checksum`` (sizes and checksums) or ``size`` (sizes only) on first read.

    Returns:
        A :class:`Cache`.

    Raises:
        DataError: the folder does not exist, is not a cache, its ``plan.json`` is missing (the
            last preprocessing run did not finish) or unreadable, it was written by an incompatible
            toolkit version, or a listed case has no completion marker.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: cache folder not found")
    plan_path = root / PLAN_FILE
    if not plan_path.is_file():
        if (root / CASES_DIR).is_dir():
            raise DataError(
                f"{plan_path}: missing - the last preprocessing run did not finish; "
                "rerun 'mae3d preprocess' to complete the cache"
            )
        raise DataError(f"{root}: not a preprocessed cache (no {PLAN_FILE})")
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{plan_path}: unreadable plan ({type(exc).__name__})") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("cases"), list):
        raise DataError(f"{plan_path}: not a cache plan (no case list)")
    version = plan.get("format_version")
    if version != CACHE_FORMAT_VERSION:
        raise DataError(
            f"{plan_path}: cache format {version} but this toolkit reads format "
            f"{CACHE_FORMAT_VERSION}; rerun 'mae3d preprocess'"
        )
    # plain strings, not pathlib: at 100k cases pathlib's joins cost 10x the stat calls
    base = os.path.join(root, CASES_DIR)
    isfile, join = os.path.isfile, os.path.join
    missing = [c["id"] for c in plan["cases"] if not isfile(join(base, c["dir"], DONE_FILE))]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"{root}: {len(missing)} case(s) incomplete (no {DONE_FILE}): {shown}; "
            "rerun 'mae3d preprocess'"
        )
    if verify not in VERIFY_MODES:
        raise DataError(f"open_cache: verify must be one of {VERIFY_MODES}, got {verify!r}")
    return Cache(root, plan, verify=verify)


class Cache:
    """A preprocessed dataset: per-case images, labels, properties and foreground samples.

    Images are (C, D, H, W) float32 z-scored on the cache grid; labels (D, H, W) uint8.
    Use :func:`open_cache` rather than the constructor.

    Attributes:
        root: the cache folder.
        plan: the parsed ``plan.json``.
        case_ids: case ids in manifest order.
        channels: modality names, in channel order.
        labels: label value -> name, or None for an unlabelled dataset.
    """

    def __init__(self, root: Path, plan: dict[str, Any], *, verify: str = "checksum") -> None:
        self.root = Path(root)
        self.plan = plan
        self.verify = verify
        self._entries: dict[str, dict[str, Any]] = {c["id"]: c for c in plan["cases"]}
        self.case_ids: list[str] = [c["id"] for c in plan["cases"]]
        self.channels: tuple[str, ...] = tuple(plan["channels"])
        labels = plan.get("labels")
        self.labels: dict[int, str] | None = (
            None if labels is None else {int(k): str(v) for k, v in labels.items()}
        )
        self._init_process_state()

    # Per-process state is dropped on pickling, so DataLoader workers open their own files.
    def _init_process_state(self) -> None:
        self._open: OrderedDict[str, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._checked: set[str] = set()
        self._props: dict[str, dict[str, Any]] = {}
        self._foreground: dict[str, dict[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Without the fingerprint (per-case spacing and shape: ~13 MiB at 100k cases), which
        # readers in data-loader workers never use; ``plan`` there lacks that one key.
        plan = {k: v for k, v in self.plan.items() if k != "fingerprint"}
        return {"root": self.root, "plan": plan, "verify": self.verify}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["root"], state["plan"], verify=state.get("verify", "checksum")
        )

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._entries

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, dataset={self.plan.get('dataset')!r}, cases={len(self)})"

    # ---------------------------------------------------------------------------------------------
    # Metadata (from plan.json; no file access)

    def shape(self, case_id: str) -> tuple[int, int, int]:
        """Spatial shape (D, H, W) of the case on the cache grid."""
        d, h, w = self._entry(case_id)["shape"]
        return int(d), int(h), int(w)

    def subject(self, case_id: str) -> str:
        """Subject id of the case (for subject-level splits)."""
        return str(self._entry(case_id)["subject"])

    def split(self, case_id: str) -> str | None:
        """Split of the case in the manifest (``train``, ``val``, ``test``) or None."""
        return self._entry(case_id).get("split")

    def fold(self, case_id: str) -> int | None:
        """Fold of the case in the manifest, or None."""
        return self._entry(case_id).get("fold")

    def is_labelled(self, case_id: str) -> bool:
        """Whether the case has a label map in the cache."""
        return bool(self._entry(case_id).get("labelled"))

    def cases_in_split(self, *splits: str | None) -> list[str]:
        """Case ids whose split is one of ``splits`` (None selects cases without a split)."""
        return [cid for cid in self.case_ids if self._entries[cid].get("split") in splits]

    # ---------------------------------------------------------------------------------------------
    # Data

    def read_patch(
        self, case_id: str, start: Sequence[int], size: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Read a box of the cache grid; parts outside the volume are zero-padded.

        Args:
            case_id: the case.
            start: (3,) first voxel (d, h, w) of the box; may be negative.
            size: (3,) box size in voxels, each >= 1; the box may extend past the volume.

        Returns:
            ``image`` (C, *size) float32 (0 outside the volume, which is the z-scored mean) and
            ``label`` (*size) uint8 (0 = background outside), or None for an unlabelled case.
            Both are fresh arrays the caller may modify.
        """
        lo_req = _int_triple(start, "start")
        sz = _int_triple(size, "size")
        if min(sz) < 1:
            raise DataError(f"read_patch: size must be >= 1 voxel per axis, got {tuple(sz)}")
        image, label = self._arrays(case_id)
        shape = image.shape[1:]
        lo = [max(s, 0) for s in lo_req]
        hi = [min(s + n, d) for s, n, d in zip(lo_req, sz, shape, strict=True)]
        src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        if lo == lo_req and all(b - a == n for a, b, n in zip(lo, hi, sz, strict=True)):
            img_out = np.array(image[(slice(None), *src)], dtype=np.float32)
            lab_out = None if label is None else np.array(label[src], dtype=np.uint8)
            return img_out, lab_out
        img_out = np.zeros((image.shape[0], *sz), dtype=np.float32)
        lab_out = None if label is None else np.zeros(tuple(sz), dtype=np.uint8)
        if all(b > a for a, b in zip(lo, hi, strict=True)):
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, lo_req, strict=True))
            img_out[(slice(None), *dst)] = image[(slice(None), *src)]
            if lab_out is not None and label is not None:
                lab_out[dst] = label[src]
        return img_out, lab_out

    def load_case(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole case as read-only memory maps: image (C, D, H, W) float32, label (D, H, W)."""
        return self._arrays(case_id)

    def properties(self, case_id: str) -> dict[str, Any]:
        """The case's preprocessing properties, as :func:`~toolkit.data.preprocess.preprocess_case`
        returns them (pass them to :func:`~toolkit.data.preprocess.invert_to_original`)."""
        if case_id not in self._props:
            self._check(case_id)
            path = self._dir(case_id) / PROPERTIES_FILE
            self._props[case_id] = json.loads(path.read_text())
        return self._props[case_id]

    def foreground_locations(self, case_id: str, label_value: int) -> np.ndarray:
        """Voxel coordinates sampled at preprocessing time where the label equals ``label_value``.

        Returns:
            (N, 3) int32 (d, h, w) coordinates on the cache grid; N = 0 if the value is absent.

        Raises:
            DataError: the case has no label map.
        """
        if not self.is_labelled(case_id):
            raise DataError(f"{self.root}: case {case_id} has no label map")
        if case_id not in self._foreground:
            self._check(case_id)
            with np.load(self._dir(case_id) / FOREGROUND_FILE) as npz:
                self._foreground[case_id] = {
                    int(k.split("_", 1)[1]): npz[k] for k in npz.files if k.startswith("label_")
                }
        found = self._foreground[case_id].get(int(label_value))
        return np.zeros((0, 3), dtype=np.int32) if found is None else found

    # ---------------------------------------------------------------------------------------------

    def _entry(self, case_id: str) -> dict[str, Any]:
        try:
            return self._entries[case_id]
        except KeyError:
            raise DataError(f"{self.root}: no case {case_id!r} in this cache") from None

    def _dir(self, case_id: str) -> Path:
        return self.root / CASES_DIR / self._entry(case_id)["dir"]

    def _check(self, case_id: str) -> None:
        """Verify the case's entry once per process: marker, sizes and (by default) checksums."""
        if case_id in self._checked:
            return
        folder = self._dir(case_id)
        done, problem = read_entry(folder, checksums=False)
        if done is not None and self.verify == "checksum":
            problem = check_entry_files(folder, done, checksums=True)
        if problem is not None:
            raise DataError(
                f"{folder}: case {case_id} is incomplete or corrupt ({problem}); rerun "
                f"'mae3d preprocess' or 'mae3d preprocess --verify {self.root} --repair' to "
                "re-make it"
            )
        self._checked.add(case_id)

    def _arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        self._check(case_id)
        folder = self._dir(case_id)
        try:
            image = np.load(folder / IMAGE_FILE, mmap_mode="r")
            label = (
                np.load(folder / LABEL_FILE, mmap_mode="r") if self.is_labelled(case_id) else None
            )
        except (OSError, ValueError) as exc:
            raise DataError(f"{folder}: cannot read cached arrays ({exc})") from None
        self._open[case_id] = (image, label)
        if len(self._open) > MAX_OPEN_CASES:
            self._open.popitem(last=False)
        return image, label


def _int_triple(values: Sequence[int], what: str) -> list[int]:
    out = [int(v) for v in values]
    if len(out) != 3:
        raise DataError(f"read_patch: {what} must have 3 entries (d, h, w), got {tuple(values)}")
    return out
