"""Stateless patch sampling: reproducible, resumable, shardable; subject splits; foreground rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.data.sampling import (
    VAL_STREAM,
    ArrayPatchSource,
    RandomPatchDataset,
    StepBatchSampler,
    make_loader,
    split_by_subject,
)
from toolkit.errors import ConfigError, DataError


def _source(labels: bool = False) -> ArrayPatchSource:
    rng = np.random.default_rng(0)
    images = {f"c{i}": rng.standard_normal((1, 20, 18, 16)).astype(np.float32) for i in range(3)}
    if not labels:
        return ArrayPatchSource(images)
    maps = {}
    for cid in images:
        lab = np.zeros((20, 18, 16), np.uint8)
        lab[2:4, 2:4, 2:4] = 1  # a tiny corner object: uniform crops rarely hit it
        lab[15, 15, 13] = 2
        maps[cid] = lab
    return ArrayPatchSource(images, maps, {0: "bg", 1: "a", 2: "b"})


def test_sample_depends_on_seed_stream_and_index_only() -> None:
    src = _source()
    a = RandomPatchDataset(src, src.case_ids, (8, 8, 8), seed=3)
    b = RandomPatchDataset(src, src.case_ids, (8, 8, 8), seed=3)
    assert torch.equal(a[5]["image"], b[5]["image"]) and a[5]["case"] == b[5]["case"]
    # read order does not matter (no state is carried between samples)
    first = [a[i]["start"].tolist() for i in range(6)]
    assert [a[i]["start"].tolist() for i in reversed(range(6))] == first[::-1]
    assert len({tuple(s) for s in first}) > 1
    val = RandomPatchDataset(src, src.case_ids, (8, 8, 8), seed=3, stream=VAL_STREAM)
    assert [val[i]["start"].tolist() for i in range(6)] != first
    other = RandomPatchDataset(src, src.case_ids, (8, 8, 8), seed=4)
    assert [other[i]["start"].tolist() for i in range(6)] != first


def test_crop_reads_the_right_box_and_pads_small_axes() -> None:
    src = _source()
    ds = RandomPatchDataset(src, ["c1"], (8, 24, 8), seed=0)
    for i in range(5):
        item = ds[i]
        d, h, w = item["start"].tolist()
        assert 0 <= d <= 12 and -6 <= h <= 0 and 0 <= w <= 8
        expected, _ = src.read_patch("c1", (d, h, w), (8, 24, 8))
        assert torch.equal(item["image"], torch.from_numpy(expected))
        assert item["image"].shape == (1, 8, 24, 8)
        # the 18-voxel axis lies inside the 24-voxel patch, zero elsewhere
        line = item["image"][0, 0, :, 0]
        assert torch.count_nonzero(line) == 18 and torch.count_nonzero(line[:-h]) == 0


def test_step_batches_shard_the_global_batch() -> None:
    one = list(StepBatchSampler(2, 5, 4))
    ranks = [list(StepBatchSampler(2, 5, 4, rank=r, world_size=2)) for r in range(2)]
    assert one[0] == [8, 9, 10, 11] and len(one) == 3
    for step in range(3):
        assert sorted(ranks[0][step] + ranks[1][step]) == one[step]
    with pytest.raises(ConfigError, match="does not split evenly"):
        StepBatchSampler(0, 1, 3, world_size=2)


def test_resumed_loader_reads_the_same_batches() -> None:
    src = _source()
    ds = RandomPatchDataset(src, src.case_ids, (8, 8, 8), seed=0)
    full = [b["image"] for b in make_loader(ds, StepBatchSampler(0, 4, 2), num_workers=0)]
    tail = [b["image"] for b in make_loader(ds, StepBatchSampler(2, 4, 2), num_workers=1)]
    assert all(torch.equal(x, y) for x, y in zip(full[2:], tail, strict=True))


def test_foreground_rows_are_centred_on_labels() -> None:
    src = _source(labels=True)
    ds = RandomPatchDataset(
        src,
        src.case_ids,
        (6, 6, 6),
        seed=0,
        with_label=True,
        foreground_fraction=0.33,
        batch_size=2,
    )
    assert [ds.is_foreground_row(i) for i in range(4)] == [False, True, False, True]
    for i in range(1, 40, 2):
        label = ds[i]["label"]
        assert label.shape == (1, 6, 6, 6) and label.dtype == torch.uint8
        assert label.max() > 0
    uniform = sum(int(ds[i]["label"].max() > 0) for i in range(0, 40, 2))
    assert uniform < 20  # uniform crops miss the small objects at times


def test_labels_required_for_label_sampling() -> None:
    with pytest.raises(DataError, match="labels requested"):
        RandomPatchDataset(_source(), ["c0"], (8, 8, 8), seed=0, with_label=True)
    with pytest.raises(DataError, match="no cases"):
        RandomPatchDataset(_source(), [], (8, 8, 8), seed=0)


def test_subject_split_is_deterministic_and_leak_free() -> None:
    cases = [f"s{i}_ses{j}" for i in range(10) for j in range(2)]

    def subject(case: str) -> str:
        return case.split("_")[0]

    train, val = split_by_subject(cases, subject, 0.2, seed=0)
    assert {subject(c) for c in train}.isdisjoint({subject(c) for c in val})
    assert len({subject(c) for c in val}) == 2 and len(train) + len(val) == 20
    assert split_by_subject(cases[::-1], subject, 0.2, seed=0)[1] == val[::-1]
    assert split_by_subject(cases, subject, 0.2, seed=1)[1] != val
    # a tiny set still holds one subject out; val_fraction=0 holds none
    assert len(split_by_subject(["a", "b"], str, 0.1)[1]) == 1
    assert split_by_subject(["a", "b"], str, 0.0)[1] == []


def test_explicit_val_split_wins() -> None:
    splits = {"a": "train", "b": "val", "c": None, "d": "test"}
    train, val = split_by_subject(list(splits), str, 0.5, split_of=splits.get)
    assert train == ["a", "c"] and val == ["b"]
