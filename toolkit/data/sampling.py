"""Patch datasets and loaders: stateless random crops that make resume and DDP sharding exact.

Every sample is a pure function of ``(seed, stream, index)``: the case, the crop position and (for
labelled data) whether the patch is centred on foreground are drawn from a NumPy generator seeded
with those three numbers. Nothing in a worker carries state from one sample to the next, so

* a run resumed at step ``s`` reads exactly the patches an uninterrupted run would have read
  (the batch sampler simply starts at ``s``);
* DDP shards a global batch by index (rank ``r`` of ``w`` takes rows ``r::w``) and the global batch
  is the same for any number of processes;
* worker count and worker scheduling never change the data.

Sample ``index = step * global_batch + row``, so patches never repeat within a run.

**Crop size.** Crops are exactly ``data.patch_size``. The device-side augmentation
(:mod:`toolkit.data.augment`) then rotates/scales inside that box and fills what comes from outside
it with 0 — the z-scored mean, the same value the cache pads with outside a volume. Cropping a
margin instead (nnssl crops 224^3 for 160^3 to cover rotation ±30° and scale 0.7) would read and
transfer 2.7x more voxels for every patch, while only the ~36 % of patches that get a rotation or
scale (p 0.2 each) would use it; at the 2-core budget the loader must meet (>= 20 patches/s of
160^3) that trade is not worth it.

Example:
    >>> import numpy as np
    >>> src = ArrayPatchSource({"a": np.zeros((1, 40, 40, 40), np.float32)})
    >>> ds = RandomPatchDataset(src, ["a"], (32, 32, 32), seed=0)
    >>> ds[0]["image"].shape
    torch.Size([1, 32, 32, 32])
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from toolkit.errors import ConfigError, DataError

#: Random streams, so training crops, validation crops and other draws never share numbers.
TRAIN_STREAM, VAL_STREAM = 0, 1


class PatchSource(Protocol):
    """What the datasets read: a :class:`~toolkit.data.cache.Cache` or :class:`ArrayPatchSource`."""

    case_ids: list[str]
    labels: dict[int, str] | None

    def shape(self, case_id: str) -> tuple[int, int, int]: ...

    def read_patch(
        self, case_id: str, start: Sequence[int], size: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray | None]: ...

    def foreground_locations(self, case_id: str, label_value: int) -> np.ndarray: ...


class ArrayPatchSource:
    """In-memory volumes behind the :class:`PatchSource` interface (synthetic data, benchmarks).

    Args:
        images: case id -> (C, D, H, W) float32 image.
        labels: optional case id -> (D, H, W) integer label map.
        label_names: label value -> name (default: the values found, named by value).
    """

    def __init__(
        self,
        images: Mapping[str, np.ndarray],
        labels: Mapping[str, np.ndarray] | None = None,
        label_names: Mapping[int, str] | None = None,
    ) -> None:
        self._images = {k: np.asarray(v, dtype=np.float32) for k, v in images.items()}
        for cid, img in self._images.items():
            if img.ndim != 4:
                raise DataError(f"case {cid}: expected a (C, D, H, W) image, got shape {img.shape}")
        self._labels = None if labels is None else {k: np.asarray(v) for k, v in labels.items()}
        self.case_ids: list[str] = list(self._images)
        self.labels: dict[int, str] | None = None
        if self._labels is not None:
            for cid, lab in self._labels.items():
                if lab.shape != self._images[cid].shape[1:]:
                    raise DataError(
                        f"case {cid}: label {lab.shape} and image {self._images[cid].shape[1:]} "
                        "differ in shape"
                    )
            if label_names is None:
                values = sorted({int(v) for lab in self._labels.values() for v in np.unique(lab)})
                label_names = {v: str(v) for v in values}
            self.labels = {int(k): str(v) for k, v in label_names.items()}
        self._fg: dict[tuple[str, int], np.ndarray] = {}

    def shape(self, case_id: str) -> tuple[int, int, int]:
        d, h, w = self._image(case_id).shape[1:]
        return int(d), int(h), int(w)

    def _image(self, case_id: str) -> np.ndarray:
        try:
            return self._images[case_id]
        except KeyError:
            raise DataError(f"no case {case_id!r} in this source") from None

    def read_patch(
        self, case_id: str, start: Sequence[int], size: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """A (C, *size) float32 box and its (*size) label (zero outside the volume)."""
        image = self._image(case_id)
        label = None if self._labels is None else self._labels[case_id]
        shape = image.shape[1:]
        src, dst = [], []
        for s, n, d in zip(start, size, shape, strict=True):
            lo, hi = max(int(s), 0), min(int(s) + int(n), d)
            src.append(slice(lo, max(hi, lo)))
            dst.append(slice(lo - int(s), max(hi, lo) - int(s)))
        img_out = np.zeros((image.shape[0], *map(int, size)), dtype=np.float32)
        img_out[(slice(None), *dst)] = image[(slice(None), *src)]
        lab_out = None
        if label is not None:
            lab_out = np.zeros(tuple(map(int, size)), dtype=np.uint8)
            lab_out[tuple(dst)] = label[tuple(src)]
        return img_out, lab_out

    def foreground_locations(self, case_id: str, label_value: int) -> np.ndarray:
        """(N, 3) int32 voxel coordinates with the label ``label_value`` (all of them)."""
        if self._labels is None:
            raise DataError(f"case {case_id}: this source has no labels")
        key = (case_id, int(label_value))
        if key not in self._fg:
            self._fg[key] = np.argwhere(self._labels[case_id] == label_value).astype(np.int32)
        return self._fg[key]


# --------------------------------------------------------------------------------------------------
# Splits


def _subject_rank(seed: int, subject: str) -> str:
    return hashlib.sha1(f"{seed}:{subject}".encode()).hexdigest()


def split_by_subject(
    case_ids: Sequence[str],
    subject_of: Callable[[str], str],
    val_fraction: float,
    *,
    seed: int = 0,
    split_of: Callable[[str], str | None] | None = None,
) -> tuple[list[str], list[str]]:
    """Deterministic subject-level train/validation split (no subject in both).

    If ``split_of`` marks any case ``val``, the manifest's split is used as is (``test`` cases are
    left out of both). Otherwise ``round(val_fraction * num_subjects)`` subjects (at least one when
    ``val_fraction > 0`` and there are two or more subjects) go to validation, chosen by a seeded
    hash of the subject id — independent of case order, and adding subjects later moves no
    existing subject across the split.

    Args:
        case_ids: the cases to split.
        subject_of: case id -> subject id.
        val_fraction: fraction of subjects held out, in [0, 0.5].
        seed: the run seed.
        split_of: optional case id -> manifest split.

    Returns:
        ``(train_ids, val_ids)`` in the order of ``case_ids``.
    """
    if split_of is not None and any(split_of(c) == "val" for c in case_ids):
        val = [c for c in case_ids if split_of(c) == "val"]
        train = [c for c in case_ids if split_of(c) not in ("val", "test")]
        return train, val
    subjects = sorted({subject_of(c) for c in case_ids})
    n_val = round(val_fraction * len(subjects))
    if val_fraction > 0 and len(subjects) >= 2:
        n_val = min(max(n_val, 1), len(subjects) - 1)
    held = set(sorted(subjects, key=lambda s: _subject_rank(seed, s))[:n_val])
    train = [c for c in case_ids if subject_of(c) not in held]
    val = [c for c in case_ids if subject_of(c) in held]
    return train, val


# --------------------------------------------------------------------------------------------------
# Datasets


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The NumPy generator of one sample: a pure function of ``(seed, stream, index)``."""
    return np.random.default_rng([int(seed) % 2**63, int(stream), int(index)])


def random_start(rng: np.random.Generator, shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """Uniform crop start per axis; an axis shorter than the patch is placed at a random offset."""
    starts = []
    for d, n in zip(shape, size, strict=True):
        lo, hi = (0, d - n) if d >= n else (d - n, 0)
        starts.append(int(rng.integers(lo, hi + 1)))
    return starts


def centred_start(centre: Sequence[int], shape: Sequence[int], size: Sequence[int]) -> list[int]:
    """Start of a patch centred on ``centre``, shifted to stay inside the volume where it fits."""
    starts = []
    for c, d, n in zip(centre, shape, size, strict=True):
        lo, hi = (0, d - n) if d >= n else (d - n, 0)
        starts.append(int(min(max(int(c) - n // 2, lo), hi)))
    return starts


class RandomPatchDataset(Dataset[dict[str, Any]]):
    """Random patches of ``patch_size`` from a :class:`PatchSource`; index = global sample number.

    Cases are drawn uniformly. With ``foreground_fraction > 0`` the last
    ``batch_size - round(batch_size * (1 - foreground_fraction))`` rows of every batch are centred
    on a random foreground voxel of a random label class present in the case (nnU-Net's rule:
    batch 2 with 0.33 forces one of the two rows), the others are uniform crops.

    Args:
        source: a cache or in-memory source (picklable; opened lazily in each worker).
        case_ids: cases to draw from.
        patch_size: (3,) patch size in voxels.
        seed: run seed.
        stream: random stream (:data:`TRAIN_STREAM`, :data:`VAL_STREAM`, ...).
        with_label: also return the label patch (the source must have labels).
        foreground_fraction: share of rows per batch centred on foreground.
        batch_size: global batch size (defines the row of an index for foreground oversampling).
        label_values: foreground classes to oversample (default: every non-zero label value).

    Items are dicts: ``image`` (C, D, H, W) float32, ``label`` (1, D, H, W) uint8 if requested,
    ``index`` (int), ``start`` (3,) int64, ``case`` (str).
    """

    def __init__(
        self,
        source: PatchSource,
        case_ids: Sequence[str],
        patch_size: Sequence[int],
        *,
        seed: int,
        stream: int = TRAIN_STREAM,
        with_label: bool = False,
        foreground_fraction: float = 0.0,
        batch_size: int = 1,
        label_values: Sequence[int] | None = None,
    ) -> None:
        if not case_ids:
            raise DataError("patch dataset: no cases to sample from")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ConfigError(f"data.patch_size: need 3 positive sizes, got {tuple(patch_size)}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ConfigError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if (with_label or foreground_fraction > 0) and source.labels is None:
            raise DataError("patch dataset: labels requested but the source has none")
        self.source = source
        self.case_ids = list(case_ids)
        self.patch_size = tuple(int(s) for s in patch_size)
        self.seed = int(seed)
        self.stream = int(stream)
        self.with_label = with_label
        self.foreground_fraction = float(foreground_fraction)
        self.batch_size = int(batch_size)
        if label_values is None and source.labels is not None:
            label_values = [v for v in source.labels if v != 0]
        self.label_values = [int(v) for v in (label_values or [])]
        self._uniform_rows = round(self.batch_size * (1.0 - self.foreground_fraction))

    def is_foreground_row(self, index: int) -> bool:
        """Whether sample ``index`` is centred on foreground (by its row in the batch)."""
        return self.foreground_fraction > 0 and index % self.batch_size >= self._uniform_rows

    def locate(self, index: int) -> tuple[str, list[int]]:
        """The case and crop start of sample ``index`` (no voxel is read)."""
        rng = sample_rng(self.seed, self.stream, index)
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        shape = self.source.shape(case_id)
        start = random_start(rng, shape, self.patch_size)
        if self.is_foreground_row(index):
            present = [
                (v, locs)
                for v in self.label_values
                if len(locs := self.source.foreground_locations(case_id, v))
            ]
            if present:  # otherwise a uniform crop, as nnU-Net does for cases without foreground
                _, locs = present[int(rng.integers(len(present)))]
                centre = locs[int(rng.integers(len(locs)))]
                start = centred_start(centre, shape, self.patch_size)
        return case_id, start

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, start = self.locate(int(index))
        image, label = self.source.read_patch(case_id, start, self.patch_size)
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "index": int(index),
            "start": torch.tensor(start, dtype=torch.int64),
            "case": case_id,
        }
        if self.with_label:
            if label is None:
                raise DataError(f"case {case_id}: no label map in the cache")
            item["label"] = torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8))[None]
        return item


# --------------------------------------------------------------------------------------------------
# Step-indexed batches


class StepBatchSampler(Sampler[list[int]]):
    """Yields, for every step in ``[start_step, end_step)``, this rank's rows of the global batch.

    Sample indices are ``step * batch_size + row`` with rows ``rank::world_size``, so the union over
    ranks is the global batch whatever the number of processes.

    Args:
        start_step: first step (the resume point).
        end_step: one past the last step.
        batch_size: global batch size; must be divisible by ``world_size``.
        rank: this process's rank.
        world_size: number of processes.
    """

    def __init__(
        self, start_step: int, end_step: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size: the global batch of {batch_size} does not split evenly over "
                f"{world_size} processes"
            )
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)

    def rows(self) -> list[int]:
        """Rows of the global batch this rank takes."""
        return list(range(self.rank, self.batch_size, self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        rows = self.rows()
        for step in range(self.start_step, self.end_step):
            yield [step * self.batch_size + r for r in rows]

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)


def make_loader(
    dataset: Dataset[Any],
    batch_sampler: Sampler[list[int]],
    *,
    num_workers: int,
    pin_memory: bool = False,
    prefetch_factor: int = 2,
) -> DataLoader[Any]:
    """A ``DataLoader`` over a step-indexed batch sampler (workers persist when ``num_workers``)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_sigint if num_workers > 0 else None,
        **kwargs,
    )


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches every process of the terminal's group; the training loop turns it into a
    # clean stop, which needs the workers alive until it has saved.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


__all__ = [
    "TRAIN_STREAM",
    "VAL_STREAM",
    "ArrayPatchSource",
    "PatchSource",
    "RandomPatchDataset",
    "StepBatchSampler",
    "centred_start",
    "make_loader",
    "random_start",
    "sample_rng",
    "split_by_subject",
]
