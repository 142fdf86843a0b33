"""Example volumes for the front-ends: the real MNI152 case or a synthetic subject, preprocessed.

Both go through the toolkit's own preprocessing (:func:`toolkit.data.preprocess.preprocess_case`:
crop to non-zero, z-score, resample), so what a widget shows is what a network is fed. Loaded
volumes are cached per (source, spacing, seed) for the session; a slider never reloads them.

Example:
    >>> ex = load_example("synthetic", spacing_mm=(4.0, 4.0, 4.0))  # doctest: +SKIP
    >>> centre_patch(ex.image, (32, 32, 32)).shape  # doctest: +SKIP
    (32, 32, 32)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SOURCES", "Example", "centre_patch", "load_example"]

#: Example sources: key -> what the front-ends call it.
SOURCES: dict[str, str] = {
    "mni152": "MNI152 T1 template (real)",
    "synthetic": "synthetic subject",
}


@dataclass(frozen=True)
class Example:
    """A preprocessed example case.

    Attributes:
        image: (D, H, W) float32, z-scored on the brain, zero outside it.
        label: (D, H, W) uint8 tissue labels (0 background, 1 CSF, 2 GM, 3 WM).
        spacing_mm: voxel size (D, H, W) after resampling.
        name: what it is, for titles.
    """

    image: np.ndarray
    label: np.ndarray
    spacing_mm: tuple[float, float, float]
    name: str


def load_example(
    source: str = "mni152", *, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), seed: int = 0
) -> Example:
    """Load and preprocess an example case (cached).

    Args:
        source: ``mni152`` (the real template nilearn ships) or ``synthetic`` (a phantom drawn from
            ``seed``, T1 contrast).
        spacing_mm: target voxel size (D, H, W) in mm, e.g. the config's
            ``data.target_spacing_mm``.
        seed: the synthetic subject's seed.

    Raises:
        ValueError: unknown source.
        DataError: the template files are missing from the nilearn package.
    """
    if source not in SOURCES:
        raise ValueError(f"source: must be one of {', '.join(SOURCES)}, got {source!r}")
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    return _load(source, spacing, int(seed) if source == "synthetic" else 0)


@functools.lru_cache(maxsize=8)
def _load(source: str, spacing: tuple[float, float, float], seed: int) -> Example:
    from toolkit.data.io import Volume
    from toolkit.data.preprocess import preprocess_case

    if source == "mni152":
        from toolkit.data.mni import load_mni152_case

        image, label, affine = load_mni152_case()
        name = SOURCES[source]
    else:
        from toolkit.data.synthetic import synthesize_subject

        # Drawn near the target spacing so resampling does not blur a fine phantom away.
        subject = synthesize_subject(seed, spacing_mm=min(spacing), contrast="T1")
        image, label, affine = subject.image, subject.label, subject.affine
        name = f"synthetic subject (seed {seed})"
    img, lab, props = preprocess_case(
        [Volume(np.asarray(image, np.float32), affine)],
        Volume(label.astype(np.float32), affine),
        spacing,
    )
    assert lab is not None
    res = props["resampled_spacing_mm"]
    return Example(img[0], lab, (float(res[0]), float(res[1]), float(res[2])), name)


def centre_patch(volume: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """A (size) box of a (D, H, W) volume centred on its non-zero voxels, zero-padded if larger.

    Args:
        volume: (D, H, W) array.
        size: patch (D, H, W) in voxels.

    Returns:
        (D', H', W') = ``size`` array of ``volume``'s dtype.
    """
    from toolkit.data.sampling import ArrayPatchSource, centred_start

    nz = np.argwhere(volume != 0)
    centre = ((nz.min(0) + nz.max(0)) // 2).tolist() if len(nz) else [n // 2 for n in volume.shape]
    start = centred_start(centre, volume.shape, size)
    source = ArrayPatchSource({"v": volume[None].astype(np.float32)})
    patch, _ = source.read_patch("v", start, size)
    return patch[0].astype(volume.dtype, copy=False)
