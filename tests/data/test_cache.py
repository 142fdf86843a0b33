"""Patch cache: reads equal slicing (with zero padding), metadata, pickling, bad caches."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from toolkit.data.cache import Cache, open_cache
from toolkit.data.io import save_volume
from toolkit.data.preprocess import DONE_FILE, PLAN_FILE, preprocess_manifest
from toolkit.errors import DataError

SHAPE = (18, 15, 12)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two channels; case ``a`` labelled (values 0, 1, 2), case ``b`` without a label map."""
    root = tmp_path_factory.mktemp("cache_src")
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    cases = []
    for cid in ("a", "b"):
        t1 = np.zeros(SHAPE, np.float32)
        t1[1:-1, 2:-1, 1:-2] = rng.uniform(50.0, 150.0, (16, 12, 9))
        t2 = np.where(t1 > 0, 300.0 - t1, 0.0).astype(np.float32)
        save_volume(t1, affine, root / f"{cid}_t1.nii.gz")
        save_volume(t2, affine, root / f"{cid}_t2.nii.gz")
        case = {
            "id": cid,
            "subject": f"sub-{cid}",
            "images": {"T1": f"{cid}_t1.nii.gz", "T2": f"{cid}_t2.nii.gz"},
        }
        if cid == "a":
            label = np.zeros(SHAPE, np.uint8)
            label[4:10, 5:11, 3:8] = 1
            label[6:8, 6:8, 4:6] = 2
            save_volume(label, affine, root / "a_seg.nii.gz", dtype=np.uint8)
            case.update(label="a_seg.nii.gz", split="train", fold=1)
        else:
            case["split"] = "test"
        cases.append(case)
    manifest = {
        "name": "two",
        "root": str(root),
        "channels": ["T1", "T2"],
        "labels": {0: "background", 1: "tissue", 2: "core", 3: "never"},
        "cases": cases,
    }
    (root / "two.yaml").write_text(yaml.safe_dump(manifest))
    out = tmp_path_factory.mktemp("cache")
    preprocess_manifest(
        root / "two.yaml", out, target_spacing_mm=(1.0, 1.0, 1.0), workers=1, progress=False
    )
    return out


@pytest.fixture()
def cache(cache_dir: Path) -> Cache:
    return open_cache(cache_dir)


def _reference_patch(full: np.ndarray, start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """Slice of ``full`` (..., D, H, W) at ``start``/``size`` with zeros outside, via np.pad."""
    pad = max(max(size), max(abs(s) for s in start)) + max(full.shape)
    lead = [(0, 0)] * (full.ndim - 3)
    padded = np.pad(full, lead + [(pad, pad)] * 3)
    box = tuple(slice(s + pad, s + pad + n) for s, n in zip(start, size, strict=True))
    return padded[(Ellipsis, *box)]


def test_metadata_comes_from_the_plan(cache: Cache) -> None:
    assert cache.case_ids == ["a", "b"] and len(cache) == 2 and "a" in cache
    assert cache.channels == ("T1", "T2")
    assert cache.labels == {0: "background", 1: "tissue", 2: "core", 3: "never"}
    assert cache.subject("b") == "sub-b"
    assert cache.split("a") == "train" and cache.split("b") == "test"
    assert cache.fold("a") == 1 and cache.fold("b") is None
    assert cache.cases_in_split("test") == ["b"]
    assert cache.is_labelled("a") and not cache.is_labelled("b")
    # cropped (16, 12, 9) at (1, 1, 1.5) mm -> 1 mm: 9 * 1.5 = 13.5 rounds to 14 (half to even)
    assert cache.shape("a") == (16, 12, 14)
    props = cache.properties("a")
    assert props["case_id"] == "a" and props["label_values"] == [0, 1, 2]
    assert props["original_shape"] == list(SHAPE)
    with pytest.raises(DataError, match="no case 'zzz'"):
        cache.shape("zzz")


def test_load_case_matches_the_stored_arrays(cache: Cache, cache_dir: Path) -> None:
    image, label = cache.load_case("a")
    assert image.shape == (2, *cache.shape("a")) and image.dtype == np.float32
    assert label is not None and label.shape == cache.shape("a") and label.dtype == np.uint8
    np.testing.assert_array_equal(image, np.load(cache_dir / "cases" / "a" / "image.npy"))
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    image_b, label_b = cache.load_case("b")
    assert label_b is None and image_b.shape[0] == 2


@pytest.mark.parametrize(
    ("start", "size"),
    [
        ((0, 0, 0), (16, 12, 14)),  # the whole volume
        ((2, 3, 1), (5, 4, 6)),  # strictly inside
        ((-3, 0, -5), (8, 8, 8)),  # crosses the low border
        ((10, 8, 9), (8, 8, 8)),  # crosses the high border
        ((-4, -4, -4), (24, 20, 22)),  # larger than the volume on every side
        ((20, 0, 0), (4, 4, 4)),  # entirely outside
        ((-9, -9, -9), (3, 3, 3)),  # entirely outside, negative
    ],
)
def test_read_patch_equals_padded_slicing(
    cache: Cache, start: tuple[int, int, int], size: tuple[int, int, int]
) -> None:
    full_image, full_label = cache.load_case("a")
    assert full_label is not None
    image, label = cache.read_patch("a", start, size)
    assert image.shape == (2, *size) and image.dtype == np.float32
    assert label is not None and label.shape == size and label.dtype == np.uint8
    np.testing.assert_array_equal(image, _reference_patch(np.asarray(full_image), start, size))
    np.testing.assert_array_equal(label, _reference_patch(np.asarray(full_label), start, size))
    image[...] = 7.0  # a fresh array: writing to it must not touch the cache
    assert not np.any(np.asarray(cache.load_case("a")[0]) == 7.0)
    image_b, label_b = cache.read_patch("b", start, size)
    assert label_b is None and image_b.shape == (2, *size)


def test_read_patch_rejects_bad_boxes(cache: Cache) -> None:
    with pytest.raises(DataError, match="size must be >= 1"):
        cache.read_patch("a", (0, 0, 0), (4, 0, 4))
    with pytest.raises(DataError, match="start must have 3 entries"):
        cache.read_patch("a", (0, 0), (4, 4, 4))


def test_foreground_locations_point_at_their_label(cache: Cache) -> None:
    _, label = cache.load_case("a")
    assert label is not None
    for value in (1, 2):
        coords = cache.foreground_locations("a", value)
        assert coords.ndim == 2 and coords.shape[1] == 3 and coords.dtype == np.int32
        # fewer voxels than the sample budget: every voxel is listed, once
        assert len(coords) == int((np.asarray(label) == value).sum())
        assert len({tuple(c) for c in coords.tolist()}) == len(coords)
        assert np.all(np.asarray(label)[tuple(coords.T)] == value)
    assert cache.foreground_locations("a", 3).shape == (0, 3)
    with pytest.raises(DataError, match="case b has no label map"):
        cache.foreground_locations("b", 1)


class _Patches:
    """A map-style dataset over one box of one case (module level, so any start method works)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> np.ndarray:
        return self.cache.read_patch("a", (-2, 1, 3), (6, 6, 6))[0]


def test_cache_pickles_without_open_files_and_reads_in_workers(cache: Cache) -> None:
    from torch.utils.data import DataLoader

    expected, _ = cache.read_patch("a", (-2, 1, 3), (6, 6, 6))  # opens memory maps here
    clone = pickle.loads(pickle.dumps(cache))
    assert not clone._open  # per-process state is not carried over
    assert clone.plan["cases"] == cache.plan["cases"] and clone.verify == cache.verify
    assert "fingerprint" in cache.plan and "fingerprint" not in clone.plan  # 13 MiB at 100k
    np.testing.assert_array_equal(clone.read_patch("a", (-2, 1, 3), (6, 6, 6))[0], expected)

    batches = list(DataLoader(_Patches(cache), batch_size=2, num_workers=2))  # type: ignore[arg-type]
    assert len(batches) == 2
    for batch in batches:
        for patch in batch:
            np.testing.assert_array_equal(patch.numpy(), expected)


def test_open_cache_rejects_what_is_not_a_complete_cache(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(DataError, match="cache folder not found"):
        open_cache(tmp_path / "nope")
    with pytest.raises(DataError, match="not a preprocessed cache"):
        open_cache(tmp_path)
    broken = tmp_path / "broken"
    (broken / "cases").mkdir(parents=True)
    with pytest.raises(DataError, match="did not finish"):
        open_cache(broken)
    (broken / PLAN_FILE).write_text("{truncated")
    with pytest.raises(DataError, match="unreadable plan"):
        open_cache(broken)
    plan = json.loads((cache_dir / PLAN_FILE).read_text())
    (broken / PLAN_FILE).write_text(json.dumps({**plan, "format_version": 999}))
    with pytest.raises(DataError, match="verify must be one of"):
        open_cache(cache_dir, verify="crc")
    with pytest.raises(DataError, match="cache format 999"):
        open_cache(broken)
    (broken / PLAN_FILE).write_text(json.dumps(plan))  # plan lists cases that were never written
    with pytest.raises(DataError, match=rf"2 case\(s\) incomplete \(no {DONE_FILE}\): a, b"):
        open_cache(broken)
