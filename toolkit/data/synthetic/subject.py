"""One phantom subject: anatomy (and optionally a head) rendered into an MR-like image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from toolkit.data.synthetic.anatomy import CSF, GM, LESION, WM, BrainGeometry, _draw_geometry
from toolkit.data.synthetic.contrast import CONTRASTS, HEAD_MEAN_RANGES, LABEL_MEAN_RANGES
from toolkit.data.synthetic.fields import _SmoothField
from toolkit.data.synthetic.head import HEAD_TISSUE_NAMES, HeadGeometry, draw_head, head_box
from toolkit.errors import ConfigError


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class SyntheticSubject:
    """One synthetic scan: ``image`` (D, H, W) float32, ``label`` (D, H, W) uint8, ``affine`` (4, 4)

    ``contrast`` is the drawn style (``T1``, ``T2`` or ``FLAIR``); ``label_means`` the mean
    intensity of each label before bias, blur and noise (in the image's units); ``geometry`` the
    continuous anatomy the label map was evaluated from. Subjects drawn with ``head=True`` also
    carry ``head`` (the head's geometry), ``head_tissue`` ((D, H, W) uint8 codes of
    :data:`~toolkit.data.synthetic.head.HEAD_TISSUE_NAMES` outside the labelled brain, 0 in it
    and in air) and ``head_means`` (mean intensity per head tissue); otherwise these are None / {}.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    contrast: str
    seed: int
    spacing_mm: tuple[float, float, float]
    label_means: dict[int, float]
    geometry: BrainGeometry = field(repr=False)
    head: HeadGeometry | None = field(default=None, repr=False)
    head_tissue: np.ndarray | None = field(default=None, repr=False)
    head_means: dict[int, float] = field(default_factory=dict)

    @property
    def brain_mask(self) -> np.ndarray:
        """(D, H, W) bool: the labelled brain (every label > 0, the CSF rim included)."""
        return np.asarray(self.label > 0)


def _draw_spacing(rng: np.random.Generator) -> tuple[float, float, float]:
    if rng.uniform() < 0.7:
        return (float(rng.uniform(1.0, 1.6)),) * 3
    spacing = [float(rng.uniform(1.0, 1.3))] * 3
    spacing[int(rng.integers(3))] = float(rng.uniform(2.0, 3.0))  # thick-slice acquisition
    return (spacing[0], spacing[1], spacing[2])


def _as_spacing(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    values = (
        [float(spacing_mm)] * 3
        if isinstance(spacing_mm, int | float)
        else [float(s) for s in spacing_mm]
    )
    if len(values) != 3 or not all(math.isfinite(v) and 0.2 <= v <= 10.0 for v in values):
        raise ConfigError(
            f"spacing_mm: expected one or three spacings in [0.2, 10] mm, got {spacing_mm!r}"
        )
    return (values[0], values[1], values[2])


def synthesize_subject(
    seed: int,
    *,
    lesions: bool = False,
    spacing_mm: float | Sequence[float] | None = None,
    contrast: str | None = None,
    fine_mm: float = 2.0,
    artefacts: bool = True,
    head: bool = False,
) -> SyntheticSubject:
    """Draw one synthetic subject: anatomy, labels and an MR-like image.

    Args:
        seed: the subject's seed; the same seed (and arguments) gives identical arrays.
        lesions: add 3-10 white-matter lesion blobs (label 4).
        spacing_mm: voxel spacing, one number or three (x, y, z); ``None`` draws it per subject
            (70%: isotropic 1.0-1.6 mm; 30%: 1.0-1.3 mm with one 2-3 mm thick-slice axis).
        contrast: ``T1``, ``T2`` or ``FLAIR``; ``None`` draws one.
        fine_mm: each axis is rendered ``max(1, round(spacing / fine_mm))`` times finer and
            box-averaged back (partial volume, e.g. of thick slices); smaller is slower.
        artefacts: texture, blur, bias field and noise; ``False`` leaves the partial-volume
            image of the label means (used by tests to check labels against intensities).
        head: wrap the brain in a head (skull, marrow, scalp fat and skin, eyes, optic nerves, a
            neck leaving the field of view; :mod:`toolkit.data.synthetic.head`) with intensities
            of the same contrast style, and noise in the air around it as in a raw scan. Labels
            are unchanged (the head is background); the brain is the one drawn without a head.

    Returns:
        A :class:`SyntheticSubject` with image and label of shape (D, H, W).

    Raises:
        ConfigError: bad ``spacing_mm``, ``contrast`` or ``fine_mm``.
    """
    if contrast is not None and contrast not in CONTRASTS:
        raise ConfigError(f"contrast: must be one of {', '.join(CONTRASTS)}; got {contrast!r}")
    if not (math.isfinite(fine_mm) and fine_mm > 0):
        raise ConfigError(f"fine_mm: must be > 0, got {fine_mm!r}")
    rng = np.random.default_rng(seed)
    drawn_spacing = _draw_spacing(rng)
    drawn_contrast = CONTRASTS[int(rng.integers(len(CONTRASTS)))]
    spacing = drawn_spacing if spacing_mm is None else _as_spacing(spacing_mm)
    style = drawn_contrast if contrast is None else contrast
    geometry = _draw_geometry(rng, lesions)
    head_geometry = draw_head(seed) if head else None

    # The subject grid: voxel centres covering the head, centred on its box, with room for the
    # 2-voxel support of blur and noise around the head so that the border stays exactly zero.
    # A head's box is cut below the brain instead: its neck leaves the field of view.
    box = geometry.box_mm if head_geometry is None else head_box(geometry, head_geometry)
    lo = np.asarray(box[0]) - 3 * np.asarray(spacing)
    hi = np.asarray(box[1]) + 3 * np.asarray(spacing)
    if head_geometry is not None:
        lo[2] = box[0][2]
    step = np.asarray(spacing)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    origin = (lo + hi) / 2 - (np.asarray(shape) - 1) * step / 2
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) for i in range(3)]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    anatomy = geometry.anatomy_on(axes)
    label = geometry.labels_on(axes, anatomy=anatomy)
    head_tissue = None
    if head_geometry is not None:
        head_tissue = head_geometry.tissues_on(anatomy, geometry.rim_mm)
        head_tissue[label > 0] = 0
    del anatomy

    # Intensities: label means in disjoint per-style ranges, a random global gain.
    gain = float(np.exp(rng.uniform(np.log(200.0), np.log(2000.0))))
    means = {k: gain * float(rng.uniform(*rng_)) for k, rng_ in LABEL_MEAN_RANGES[style].items()}
    num_head = len(HEAD_TISSUE_NAMES)
    lut = np.zeros(LESION + 1 + num_head, np.float32)  # head tissue t is code LESION + t
    for k, v in means.items():
        lut[k] = v
    texture_amp = np.zeros(lut.shape, np.float32)
    texture_amp[: LESION + 1] = np.concatenate([[0.0], rng.uniform(0.02, 0.08, LESION)])
    head_means: dict[int, float] = {}
    if head_geometry is not None:
        # A stream of its own, so a head leaves every draw of the brain's image unchanged.
        head_rng = np.random.default_rng([seed, 8])
        for t, (low, high) in HEAD_MEAN_RANGES[style].items():
            head_means[t] = gain * float(head_rng.uniform(low, high))
            lut[LESION + t] = head_means[t]
        texture_amp[LESION + 1 :] = head_rng.uniform(0.02, 0.08, num_head)
    texture = _SmoothField.draw(rng, 3.0)
    bias = _SmoothField.draw(rng, 60.0)
    bias_amp = float(rng.uniform(0.05, 0.3))
    blur_vox = rng.uniform(0.3, 0.8, 3)
    noise_ratio = float(rng.uniform(0.01, 0.05))
    rician = bool(rng.uniform() < 0.5)

    # Render on the fine grid, then box-average each k-block back to one subject voxel.
    ks = [max(1, int(round(s / fine_mm))) for s in spacing]
    fine_axes = [
        (
            axes[i][:, None] + (np.arange(ks[i]) - (ks[i] - 1) / 2)[None, :] * spacing[i] / ks[i]
        ).ravel()
        for i in range(3)
    ]
    if ks == [1, 1, 1]:
        fine_label = label if head_tissue is None else _tissue_codes(label, head_tissue)
    elif head_geometry is None:
        fine_label = geometry.labels_on(fine_axes)
    else:
        fine_anatomy = geometry.anatomy_on(fine_axes)
        fine_label = _tissue_codes(
            geometry.labels_on(fine_axes, anatomy=fine_anatomy),
            head_geometry.tissues_on(fine_anatomy, geometry.rim_mm),
        )
        del fine_anatomy
    fine = lut[fine_label]
    if artefacts:
        fine *= 1.0 + texture_amp[fine_label] * texture.on(fine_axes)
    image = fine.reshape(shape[0], ks[0], shape[1], ks[1], shape[2], ks[2]).mean(axis=(1, 3, 5))
    image = image.astype(np.float32)
    if artefacts:
        image = ndimage.gaussian_filter(image, sigma=blur_vox, truncate=3.0)
        image *= np.exp(bias_amp * bias.on(axes)).astype(np.float32)
        # Brains alone are skull-stripped (zero outside); a head is a raw scan (noisy air).
        head_region = (
            ndimage.binary_dilation(label > 0, iterations=2)
            if head_geometry is None
            else np.ones(label.shape, bool)
        )
        sigma = noise_ratio * float(np.mean([means[CSF], means[GM], means[WM]]))
        n1 = rng.standard_normal(image.shape).astype(np.float32) * sigma
        if rician or head_geometry is not None:  # a raw magnitude image: Rician air
            n2 = rng.standard_normal(image.shape).astype(np.float32) * sigma
            noisy = np.sqrt((image + n1) ** 2 + n2**2)
        else:
            noisy = np.maximum(image + n1, 0.0)
        image = np.where(head_region, noisy, 0.0).astype(np.float32)
    return SyntheticSubject(
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=label,
        affine=affine,
        contrast=style,
        seed=seed,
        spacing_mm=spacing,
        label_means={k: v for k, v in means.items() if lesions or k != LESION},
        geometry=geometry,
        head=head_geometry,
        head_tissue=head_tissue,
        head_means=head_means,
    )


def _tissue_codes(label: np.ndarray, head_tissue: np.ndarray) -> np.ndarray:
    """One code per voxel: the brain label where there is brain, else ``LESION`` + head tissue."""
    return np.where(label > 0, label, np.where(head_tissue > 0, head_tissue + LESION, 0)).astype(
        np.uint8
    )
