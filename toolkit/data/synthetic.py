"""Synthetic brain MRI with exact tissue labels (SynthSeg-style phantoms) for demos and tests.

Each subject is drawn from one integer seed. Its anatomy is a set of implicit surfaces in
millimetres: a brain-shaped ellipsoid whose surface carries low-frequency noise; a grey-matter
ribbon folded by sulci (thin sheets where a smooth random field crosses zero, filled with CSF and
lined with grey matter); an interhemispheric fissure; a CSF rim outside the cortex; lateral
ventricles; deep grey-matter nuclei; optional white-matter lesions. A random rotation, size and
smooth elastic displacement field make every subject different. Labels are::

    0 background · 1 CSF · 2 grey matter · 3 white matter · 4 lesion (only with ``lesions=True``)

The label map is that geometry evaluated at the voxel centres of the subject's grid, so it is exact
by construction. The image is the same geometry on a grid ``round(spacing / fine_mm)`` times
finer along each axis (so thick slices get partial volume), painted with per-label intensities
(drawn per subject in the style of T1, T2 or FLAIR, with jitter and within-label texture),
box-averaged back to the subject grid (partial volume), blurred, multiplied by a smooth bias
field and corrupted by Gaussian or Rician noise inside the head. Outside the head the image is
exactly zero, as after skull stripping.

Arrays are (D, H, W) = (x, y, z) voxel axes; affines map voxel indices to RAS millimetres with the
brain centred at the origin. Everything random comes from ``numpy.random.default_rng(seed)``.

Example:
    >>> s = synthesize_subject(0, spacing_mm=4.0)
    >>> s.image.shape == s.label.shape, s.image.dtype.name, s.label.dtype.name
    (True, 'float32', 'uint8')
    >>> sorted(set(s.label.ravel().tolist()))
    [0, 1, 2, 3]
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.errors import ConfigError

PathLike = str | os.PathLike[str]

BACKGROUND, CSF, GM, WM, LESION = 0, 1, 2, 3, 4
LABEL_NAMES: dict[int, str] = {0: "background", 1: "csf", 2: "gm", 3: "wm", 4: "lesion"}
CONTRASTS: tuple[str, ...] = ("T1", "T2", "FLAIR")
CHANNEL = "image"  # one channel of mixed contrasts, as in the paper's pretraining data

# Ranges of the mean intensity of each label, per contrast style. They are disjoint, so the
# ordering of the label means is fixed by the style while the values vary per subject.
LABEL_MEAN_RANGES: dict[str, dict[int, tuple[float, float]]] = {
    "T1": {CSF: (0.10, 0.28), GM: (0.45, 0.58), WM: (0.72, 0.90), LESION: (0.32, 0.42)},
    "T2": {CSF: (0.85, 1.00), GM: (0.52, 0.64), WM: (0.30, 0.42), LESION: (0.72, 0.82)},
    "FLAIR": {CSF: (0.05, 0.18), GM: (0.52, 0.64), WM: (0.34, 0.46), LESION: (0.82, 1.00)},
}

# Defaults of the demo data set written by ``mae3d synth`` and described by data_manifests/.
DEMO_NUM_SUBJECTS = 12
DEMO_NUM_LABELLED = 8
DEMO_SEED = 0
DEMO_SPACING_MM = 2.0
DEMO_TEST_FRACTION = 0.25
DEMO_NAME = "demo"
DEMO_ROOT = "${MAE3D_DEMO_DATA:-../demo_out/data}"

# Anatomy, in mm, before the per-subject size factor: semi-axes of the brain (x: left-right,
# y: posterior-anterior, z: inferior-superior) giving a brain of about 140 x 170 x 130 mm.
_BRAIN_SEMI_AXES_MM = (68.0, 84.0, 64.0)
_FIELD_HALF_EXTENT_MM = 125.0  # random fields are defined on [-125, 125]^3 mm, beyond any FOV


# --------------------------------------------------------------------------------------------------
# Smooth random fields: tensor-product cubic B-splines with i.i.d. normal coefficients. They can be
# evaluated exactly on any rectilinear grid, so the fine (image) grid and the subject (label) grid
# see the same continuous anatomy.


def _bspline3(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _bspline3_derivative(t: np.ndarray) -> np.ndarray:
    a = np.abs(t)
    return np.where(
        a < 1, -2 * t + 1.5 * t * a, np.where(a < 2, -0.5 * (2 - a) ** 2 * np.sign(t), 0)
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matrix product (M, K) x (K, N) whose rounding does not depend on BLAS threads.

    BLAS products round differently with the number of threads, which would make a subject
    drawn in a worker process differ (at label boundaries) from the same seed drawn in-process.
    """
    return np.einsum("ij,jk->ik", a, b)


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class _SmoothField:
    """A random field sum_j c_j B3(x / step - j) with roughly unit standard deviation."""

    coef: np.ndarray  # (n, n, n) float64
    step_mm: float

    @classmethod
    def draw(cls, rng: np.random.Generator, step_mm: float) -> _SmoothField:
        n = int(math.ceil(2 * _FIELD_HALF_EXTENT_MM / step_mm)) + 3
        # 1 / 0.33: a tensor-product cubic B-spline field of unit coefficients has std ~0.33.
        return cls(coef=rng.standard_normal((n, n, n)) / 0.33, step_mm=step_mm)

    def _matrix(self, coords: np.ndarray, derivative: bool) -> np.ndarray:
        n = self.coef.shape[0]
        knots = -_FIELD_HALF_EXTENT_MM - self.step_mm + self.step_mm * np.arange(n)
        t = (np.asarray(coords, np.float64)[:, None] - knots[None, :]) / self.step_mm
        if derivative:
            return (_bspline3_derivative(t) / self.step_mm).astype(np.float32)
        return _bspline3(t).astype(np.float32)

    def on(self, axes: Sequence[np.ndarray], derivative: int | None = None) -> np.ndarray:
        """Values (or the partial derivative along axis ``derivative``) on the grid ``axes``."""
        mats = [self._matrix(a, derivative == i) for i, a in enumerate(axes)]
        # Only coefficients whose support meets the grid contribute.
        spans = [np.flatnonzero(m.any(axis=0))[[0, -1]] + [0, 1] for m in mats]
        mx, my, mz = (m[:, lo:hi] for m, (lo, hi) in zip(mats, spans, strict=True))
        coef = self.coef[tuple(slice(lo, hi) for lo, hi in spans)].astype(np.float32)
        (nx, n1), (ny, n2), (nz, n3) = mx.shape, my.shape, mz.shape
        # z, then y, then x: the transposes touch small intermediates, never the (X, Y, Z) output.
        out = _dot(coef.reshape(n1 * n2, n3), mz.T).reshape(n1, n2, nz)
        out = _dot(my, out.transpose(1, 0, 2).reshape(n2, n1 * nz)).reshape(ny, n1, nz)
        out = _dot(mx, out.transpose(1, 0, 2).reshape(n1, ny * nz))
        return out.reshape(nx, ny, nz)


# --------------------------------------------------------------------------------------------------
# Anatomy


@dataclass(frozen=True)
class _Ellipsoid:
    centre_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    bend_per_mm: float = 0.0  # z offset = -bend * (y - y_centre)^2: arched, like the ventricles

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        cx, cy, cz = self.centre_mm
        ax, ay, az = self.semi_axes_mm
        dy = y - cy
        dz = z - cz + self.bend_per_mm * dy**2
        return np.asarray(((x - cx) / ax) ** 2 + (dy / ay) ** 2 + (dz / az) ** 2 <= 1.0)


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class BrainGeometry:
    """The continuous anatomy of one subject; :meth:`labels_on` evaluates it on any grid.

    World coordinates are RAS mm with the brain centred at the origin. Anatomical coordinates are
    world coordinates rotated back, divided by the subject's size and displaced by the elastic
    field; all structures are defined in anatomical coordinates except sulci and surface noise,
    which are random anyway and so are drawn directly in world coordinates.
    """

    rotation: np.ndarray  # (3, 3) world = rotation @ anatomical
    size: tuple[float, float, float]  # per-axis size factors
    displacement: tuple[_SmoothField, _SmoothField, _SmoothField]
    displacement_mm: float
    semi_axes_mm: tuple[float, float, float]
    surface: _SmoothField
    surface_mm: float
    folds: _SmoothField
    fold_depth: _SmoothField
    sulcus_depth_mm: float
    sulcus_half_width_mm: float
    cortex_mm: float
    rim_mm: float
    fissure_half_width_mm: float
    fissure_depth_mm: float
    ventricles: tuple[_Ellipsoid, ...]
    nuclei: tuple[_Ellipsoid, ...]
    lesion_shape: _SmoothField | None = None
    lesions: tuple[tuple[float, float, float, float], ...] = ()  # (x, y, z, radius) world mm
    # Corners of a box in world mm holding the head with a margin of at least 5 mm.
    box_mm: tuple[tuple[float, ...], tuple[float, ...]] = ((0.0,) * 3, (0.0,) * 3)

    def labels_on(self, axes: Sequence[np.ndarray], *, with_lesions: bool = True) -> np.ndarray:
        """Labels (X, Y, Z) uint8 on the rectilinear world grid ``axes`` (increasing, in mm)."""
        xs, ys, zs = (np.asarray(a, np.float32) for a in axes)
        wx, wy, wz = xs[:, None, None], ys[None, :, None], zs[None, None, :]
        r = self.rotation.astype(np.float32)
        size = self.size
        ax_, ay_, az_ = (
            (r[0, i] * wx + r[1, i] * wy + r[2, i] * wz) / size[i]
            + self.displacement_mm * self.displacement[i].on(axes)
            for i in range(3)
        )
        # Depth below the brain surface along the ray from the centre: positive inside.
        a, b, c = self.semi_axes_mm
        a_x = a * (1.0 - 0.08 * ay_ / b)  # frontal lobes are narrower than occipital ones
        c_z = np.where(az_ < 0, 0.8 * c, c)  # the base of the brain is flatter than the vertex
        rho = np.sqrt((ax_ / a_x) ** 2 + (ay_ / b) ** 2 + (az_ / c_z) ** 2)
        radius = np.sqrt(ax_**2 + ay_**2 + az_**2)
        depth = radius * (1.0 / np.maximum(rho, 1e-3) - 1.0)
        depth += self.surface_mm * self.surface.on(axes)

        # Sulci: a smooth field's zero set, measured in mm to first order (|g| / |grad g|).
        g = self.folds.on(axes)
        grad = np.sqrt(sum(self.folds.on(axes, derivative=i) ** 2 for i in range(3)))
        to_sulcus = np.abs(g) / np.maximum(grad, 1e-6)
        deepening = 1.0 / (1.0 + np.exp(-2.0 * self.fold_depth.on(axes)))
        sulcus_depth = self.sulcus_depth_mm * (0.35 + 0.65 * deepening)
        to_fissure = np.abs(ax_)

        t = self.cortex_mm
        label = np.full(depth.shape, WM, np.uint8)
        grey = (
            (depth < t)
            | ((to_sulcus < self.sulcus_half_width_mm + t) & (depth < sulcus_depth + t))
            | ((to_fissure < self.fissure_half_width_mm + t) & (depth < self.fissure_depth_mm + t))
        )
        label[grey] = GM
        csf = ((to_sulcus < self.sulcus_half_width_mm) & (depth < sulcus_depth)) | (
            (to_fissure < self.fissure_half_width_mm) & (depth < self.fissure_depth_mm)
        )
        # Nuclei and ventricles lie well within 75 mm of the centre: test only that part.
        core = tuple(slice(*np.searchsorted(a, (-75.0, 75.0))) for a in (xs, ys, zs))
        cx, cy, cz = ax_[core], ay_[core], az_[core]
        for nucleus in self.nuclei:
            label[core][nucleus.inside(cx, cy, cz)] = GM
        for ventricle in self.ventricles:
            csf[core] |= ventricle.inside(cx, cy, cz)
        label[csf | (depth < 0)] = CSF
        label[depth < -self.rim_mm] = BACKGROUND
        if with_lesions and self.lesions and self.lesion_shape is not None:
            shape = self.lesion_shape.on(axes)
            for lx, ly, lz, lr in self.lesions:
                dist2 = ((wx - lx) ** 2 + (wy - ly) ** 2 + (wz - lz) ** 2) / lr**2
                label[(dist2 < 1.0 + 0.35 * shape) & (label == WM)] = LESION
        return label


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    ax, ay, az = np.deg2rad(rng.uniform(-max_deg, max_deg, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx)


def _draw_geometry(rng: np.random.Generator, lesions: bool) -> BrainGeometry:
    global_size = rng.uniform(0.88, 1.08)
    size = tuple(float(global_size * s) for s in rng.uniform(0.96, 1.04, 3))
    vent_scale = rng.uniform(0.6, 1.6)  # ventricle size varies most between subjects (atrophy)
    vx, vy, vz = 6.0 + 3.0 * vent_scale, rng.uniform(-10, 0), rng.uniform(10, 16)
    ventricles = tuple(
        _Ellipsoid(
            (side * vx * rng.uniform(0.9, 1.1), vy, vz),
            (
                4.5 * vent_scale * rng.uniform(0.85, 1.15),
                24.0 * rng.uniform(0.9, 1.1),
                7.0 * vent_scale * rng.uniform(0.85, 1.15),
            ),
            bend_per_mm=0.012,
        )
        for side in (-1.0, 1.0)
    )
    nuclei = tuple(
        _Ellipsoid(
            (
                side * (cx + rng.uniform(-1.5, 1.5)),
                cy + rng.uniform(-3, 3),
                cz + rng.uniform(-2, 2),
            ),
            (
                semi[0] * rng.uniform(0.85, 1.15),
                semi[1] * rng.uniform(0.85, 1.15),
                semi[2] * rng.uniform(0.85, 1.15),
            ),
        )
        for side in (-1.0, 1.0)
        for (cx, cy, cz), semi in (
            ((11.0, -16.0, 2.0), (7.0, 12.0, 8.0)),  # thalamus
            ((23.0, 4.0, 2.0), (5.0, 14.0, 9.0)),  # putamen
        )
    )
    geometry = BrainGeometry(
        rotation=_rotation(rng, 6.0),
        size=size,  # type: ignore[arg-type]
        displacement=(
            _SmoothField.draw(rng, 32.0),
            _SmoothField.draw(rng, 32.0),
            _SmoothField.draw(rng, 32.0),
        ),
        displacement_mm=float(rng.uniform(1.5, 3.5)),
        semi_axes_mm=_BRAIN_SEMI_AXES_MM,
        surface=_SmoothField.draw(rng, 24.0),
        surface_mm=float(rng.uniform(1.0, 2.5)),
        folds=_SmoothField.draw(rng, float(rng.uniform(5.5, 7.0))),
        fold_depth=_SmoothField.draw(rng, 30.0),
        sulcus_depth_mm=float(rng.uniform(18.0, 28.0)),
        sulcus_half_width_mm=float(rng.uniform(0.4, 1.0)),
        cortex_mm=float(rng.uniform(2.5, 3.5)),
        rim_mm=float(rng.uniform(1.5, 4.0)),
        fissure_half_width_mm=float(rng.uniform(0.8, 1.8)),
        fissure_depth_mm=float(rng.uniform(30.0, 40.0)),
        ventricles=ventricles,
        nuclei=nuclei,
    )
    # The head's box, and lesion centres, come from the labels on a coarse 4 mm grid: tighter than
    # a bound from the parameters, and independent of the subject's grid.
    reach = max(geometry.semi_axes_mm) * max(geometry.size) + 20.0
    coarse = np.arange(-reach, reach + 1e-3, 4.0)
    lab = geometry.labels_on([coarse] * 3, with_lesions=False)
    inside = np.nonzero(lab)
    geometry = replace(
        geometry,
        box_mm=(
            tuple(float(coarse[idx.min()] - 9.0) for idx in inside),
            tuple(float(coarse[idx.max()] + 9.0) for idx in inside),
        ),
    )
    if not lesions:
        return geometry
    # Lesions sit in deep white matter, preferably near the centre (periventricular).
    pts = np.stack(np.nonzero(ndimage.binary_erosion(lab == WM)), axis=1)
    world = coarse[pts]
    weight = np.exp(-(world**2).sum(axis=1) / (2 * 35.0**2))
    num = int(rng.integers(3, 11))
    chosen = rng.choice(
        len(world), size=min(num, len(world)), replace=False, p=weight / weight.sum()
    )
    radii = rng.uniform(2.5, 7.0, len(chosen))
    return replace(
        geometry,
        lesion_shape=_SmoothField.draw(rng, 4.0),
        lesions=tuple(
            (float(world[i, 0]), float(world[i, 1]), float(world[i, 2]), float(r))
            for i, r in zip(chosen, radii, strict=True)
        ),
    )


# --------------------------------------------------------------------------------------------------
# Subjects


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class SyntheticSubject:
    """One synthetic scan: ``image`` (D, H, W) float32, ``label`` (D, H, W) uint8, ``affine`` (4, 4)

    ``contrast`` is the drawn style (``T1``, ``T2`` or ``FLAIR``); ``label_means`` the mean
    intensity of each label before bias, blur and noise (in the image's units); ``geometry`` the
    continuous anatomy the label map was evaluated from.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    contrast: str
    seed: int
    spacing_mm: tuple[float, float, float]
    label_means: dict[int, float]
    geometry: BrainGeometry = field(repr=False)


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

    # The subject grid: voxel centres covering the head, centred on its box, with room for the
    # 2-voxel support of blur and noise around the head so that the border stays exactly zero.
    lo = np.asarray(geometry.box_mm[0]) - 3 * np.asarray(spacing)
    hi = np.asarray(geometry.box_mm[1]) + 3 * np.asarray(spacing)
    step = np.asarray(spacing)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / step) + 1)
    origin = (lo + hi) / 2 - (np.asarray(shape) - 1) * step / 2
    axes = [origin[i] + spacing[i] * np.arange(shape[i]) for i in range(3)]
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    label = geometry.labels_on(axes)

    # Intensities: label means in disjoint per-style ranges, a random global gain.
    gain = float(np.exp(rng.uniform(np.log(200.0), np.log(2000.0))))
    means = {k: gain * float(rng.uniform(*rng_)) for k, rng_ in LABEL_MEAN_RANGES[style].items()}
    lut = np.zeros(LESION + 1, np.float32)
    for k, v in means.items():
        lut[k] = v
    texture_amp = np.concatenate([[0.0], rng.uniform(0.02, 0.08, LESION)]).astype(np.float32)
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
    fine_label = label if ks == [1, 1, 1] else geometry.labels_on(fine_axes)
    fine = lut[fine_label]
    if artefacts:
        fine *= 1.0 + texture_amp[fine_label] * texture.on(fine_axes)
    image = fine.reshape(shape[0], ks[0], shape[1], ks[1], shape[2], ks[2]).mean(axis=(1, 3, 5))
    image = image.astype(np.float32)
    if artefacts:
        image = ndimage.gaussian_filter(image, sigma=blur_vox, truncate=3.0)
        image *= np.exp(bias_amp * bias.on(axes)).astype(np.float32)
        head = ndimage.binary_dilation(label > 0, iterations=2)
        sigma = noise_ratio * float(np.mean([means[CSF], means[GM], means[WM]]))
        n1 = rng.standard_normal(image.shape).astype(np.float32) * sigma
        if rician:
            n2 = rng.standard_normal(image.shape).astype(np.float32) * sigma
            noisy = np.sqrt((image + n1) ** 2 + n2**2)
        else:
            noisy = np.maximum(image + n1, 0.0)
        image = np.where(head, noisy, 0.0).astype(np.float32)
    return SyntheticSubject(
        image=np.ascontiguousarray(image, dtype=np.float32),
        label=label,
        affine=affine,
        contrast=style,
        seed=seed,
        spacing_mm=spacing,
        label_means={k: v for k, v in means.items() if lesions or k != LESION},
        geometry=geometry,
    )


# --------------------------------------------------------------------------------------------------
# Data sets


@dataclass(frozen=True)
class _Job:
    subject: str
    role: str  # "pretrain" or "labelled"
    seed: int
    split: str | None


def subject_seed(seed: int, role: str, index: int) -> int:
    """The seed of subject ``index`` (0-based) of ``role`` in a data set drawn with ``seed``.

    Pretraining and labelled subjects come from separate streams, so changing the number of one
    leaves the other's subjects unchanged.
    """
    stream = {"pretrain": 0, "labelled": 1}[role]
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def _plan(num_subjects: int, num_labelled: int, seed: int, test_fraction: float) -> list[_Job]:
    if isinstance(num_subjects, bool) or not isinstance(num_subjects, int) or num_subjects < 0:
        raise ConfigError(f"num_subjects: must be an integer >= 0, got {num_subjects!r}")
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, int) or num_labelled < 0:
        raise ConfigError(f"num_labelled: must be an integer >= 0, got {num_labelled!r}")
    if num_labelled == 1:
        raise ConfigError("num_labelled: must be 0 or >= 2 (at least one train and one test case)")
    if num_subjects + num_labelled == 0:
        raise ConfigError("num_subjects, num_labelled: nothing to write (both are 0)")
    if not (0.0 < test_fraction < 1.0):
        raise ConfigError(f"test_fraction: must be in (0, 1), got {test_fraction!r}")
    width = max(3, len(str(num_subjects + num_labelled)))
    jobs = [
        _Job(f"sub-{i + 1:0{width}d}", "pretrain", subject_seed(seed, "pretrain", i), None)
        for i in range(num_subjects)
    ]
    num_test = min(num_labelled - 1, max(1, round(test_fraction * num_labelled)))
    test = set(np.random.default_rng([seed, 2]).permutation(num_labelled)[:num_test].tolist())
    jobs += [
        _Job(
            f"sub-{num_subjects + j + 1:0{width}d}",
            "labelled",
            subject_seed(seed, "labelled", j),
            "test" if j in test else "train",
        )
        for j in range(num_labelled)
    ]
    return jobs


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _image_path(subject: str) -> Path:
    return Path("images") / f"{subject}.nii.gz"


def _label_path(subject: str) -> Path:
    return Path("labels") / f"{subject}.nii.gz"


def synthetic_manifests(
    num_subjects: int,
    num_labelled: int,
    seed: int,
    *,
    lesions: bool = False,
    test_fraction: float = DEMO_TEST_FRACTION,
    name: str = "synth",
    root: str = ".",
) -> dict[str, Manifest]:
    """The manifests :func:`write_synthetic_dataset` writes, without drawing any image.

    Returns:
        ``{"pretrain": ..., "labelled": ...}`` (a key is absent when its count is 0). The
        pretraining manifest is unlabelled and has no splits; the labelled one has splits train
        and test. The two share no subject.
    """
    jobs = _plan(num_subjects, num_labelled, seed, test_fraction)
    labels = {k: v for k, v in LABEL_NAMES.items() if lesions or k != LESION}
    out: dict[str, Manifest] = {}
    pre = [j for j in jobs if j.role == "pretrain"]
    lab = [j for j in jobs if j.role == "labelled"]
    if pre:
        out["pretrain"] = Manifest(
            name=f"{name}_pretrain",
            root=Path(root),
            root_spec=root,
            channels=(CHANNEL,),
            cases=tuple(
                Case(case_id=j.subject, subject=j.subject, images={CHANNEL: _image_path(j.subject)})
                for j in pre
            ),
            extra={"description": f"Synthetic unlabelled brain MRI (mae3d synth, seed {seed})."},
        )
    if lab:
        out["labelled"] = Manifest(
            name=f"{name}_labelled",
            root=Path(root),
            root_spec=root,
            channels=(CHANNEL,),
            labels=labels,
            cases=tuple(
                Case(
                    case_id=j.subject,
                    subject=j.subject,
                    images={CHANNEL: _image_path(j.subject)},
                    label=_label_path(j.subject),
                    split=j.split,
                )
                for j in lab
            ),
            extra={"description": f"Synthetic labelled brain MRI (mae3d synth, seed {seed})."},
        )
    return out


def _write_one(
    job: _Job, out_dir: Path, lesions: bool, spacing_mm: float | Sequence[float] | None
) -> dict[str, Any]:
    subject = synthesize_subject(job.seed, lesions=lesions, spacing_mm=spacing_mm)
    save_volume(subject.image, subject.affine, out_dir / _image_path(job.subject))
    if job.role == "labelled":
        save_volume(subject.label, subject.affine, out_dir / _label_path(job.subject))
    return {
        "subject": job.subject,
        "role": job.role,
        "split": job.split or "",
        "seed": job.seed,
        "contrast": subject.contrast,
        "spacing_mm": "x".join(f"{s:.3f}" for s in subject.spacing_mm),
        "shape": "x".join(str(n) for n in subject.image.shape),
    }


def write_synthetic_dataset(
    out_dir: PathLike,
    num_subjects: int,
    num_labelled: int,
    seed: int,
    *,
    lesions: bool = False,
    spacing_mm: float | Sequence[float] | None = None,
    test_fraction: float = DEMO_TEST_FRACTION,
    name: str = "synth",
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write a synthetic data set: NIfTI images and labels, a subject table and two manifests.

    ``num_subjects`` unlabelled pretraining subjects and ``num_labelled`` other, labelled subjects
    (no subject is in both) go to ``out_dir/images/sub-XXX.nii.gz`` and, for labelled subjects,
    ``out_dir/labels/sub-XXX.nii.gz``. ``subjects.tsv`` lists each subject's seed, contrast,
    spacing and shape. The manifests ``pretrain.yaml`` and ``labelled.yaml`` (root ``.``) are
    removed first and written last, so an interrupted run never leaves a manifest that points at
    missing files.

    Args:
        out_dir: output folder (created).
        num_subjects: unlabelled pretraining subjects.
        num_labelled: labelled subjects, 0 or >= 2; ``round(test_fraction * num_labelled)`` of
            them (at least one) are split ``test``, the others ``train``.
        seed: data set seed; subject seeds are derived from it (:func:`subject_seed`).
        lesions: white-matter lesions (label 4) in every subject.
        spacing_mm: voxel spacing for every subject, or ``None`` to draw it per subject.
        test_fraction: fraction of labelled subjects in the test split.
        name: manifests are named ``{name}_pretrain`` and ``{name}_labelled``.
        workers: processes (default: CPU count, at most one per subject); 1 runs in-process.
        progress: show a tqdm progress bar.

    Returns:
        Paths keyed ``pretrain``, ``labelled`` (when written) and ``subjects`` (the table).

    Example:
        >>> import tempfile
        >>> paths = write_synthetic_dataset(tempfile.mkdtemp(), 2, 2, seed=0, spacing_mm=4.0,
        ...                                 workers=1, progress=False)
        >>> sorted(paths)
        ['labelled', 'pretrain', 'subjects']
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    manifests = synthetic_manifests(
        num_subjects, num_labelled, seed, lesions=lesions, test_fraction=test_fraction, name=name
    )
    spacing = None if spacing_mm is None else _as_spacing(spacing_mm)
    jobs = _plan(num_subjects, num_labelled, seed, test_fraction)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    out.mkdir(parents=True, exist_ok=True)
    for key in ("pretrain", "labelled"):
        (out / f"{key}.yaml").unlink(missing_ok=True)

    rows: dict[str, dict[str, Any]] = {}
    num_workers = min(len(jobs), workers if workers is not None else (os.cpu_count() or 1))
    bar = tqdm(total=len(jobs), desc="synth", unit="subject", disable=not progress)
    if num_workers <= 1:
        for job in jobs:
            rows[job.subject] = _write_one(job, out, lesions, spacing)
            bar.update()
    else:
        # spawn, not fork: the caller may hold torch's thread pools, which fork can deadlock.
        # Workers start with one BLAS thread each, so that W workers use W cores, not W x cores.
        context = multiprocessing.get_context("spawn")
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: "1" for k in _THREAD_VARS})
        try:
            with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
                futures: list[Future[dict[str, Any]]] = [
                    pool.submit(_write_one, job, out, lesions, spacing) for job in jobs
                ]
                for fut in as_completed(futures):
                    row = fut.result()
                    rows[row["subject"]] = row
                    bar.update()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    bar.close()

    table = out / "subjects.tsv"
    tmp = table.with_name(table.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(next(iter(rows.values()))), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows[j.subject] for j in jobs)
    tmp.replace(table)
    paths = {key: save_manifest(m, out / f"{key}.yaml") for key, m in manifests.items()}
    paths["subjects"] = table
    return paths


def write_demo_manifests(directory: PathLike, root: str = DEMO_ROOT) -> dict[str, Path]:
    """Write ``demo_pretrain.yaml``, ``demo_labelled.yaml`` and ``mni152.yaml`` into ``directory``.

    They list what ``mae3d synth`` writes with its default arguments, with ``root`` pointing at
    that folder; the copies in data_manifests/ are made by this function.
    """
    from toolkit.data.mni import mni152_manifest

    manifests = synthetic_manifests(
        DEMO_NUM_SUBJECTS, DEMO_NUM_LABELLED, DEMO_SEED, name=DEMO_NAME, root=root
    )
    directory = Path(directory)
    paths = {
        key: save_manifest(m, directory / f"{DEMO_NAME}_{key}.yaml") for key, m in manifests.items()
    }
    paths["mni152"] = save_manifest(mni152_manifest(root), directory / "mni152.yaml")
    return paths
