"""The continuous brain anatomy of a phantom: implicit surfaces in mm, evaluated on any grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from toolkit.data.synthetic.fields import _SmoothField

BACKGROUND, CSF, GM, WM, LESION = 0, 1, 2, 3, 4
LABEL_NAMES: dict[int, str] = {0: "background", 1: "csf", 2: "gm", 3: "wm", 4: "lesion"}

# Anatomy, in mm, before the per-subject size factor: semi-axes of the brain (x: left-right,
# y: posterior-anterior, z: inferior-superior) giving a brain of about 140 x 170 x 130 mm.
_BRAIN_SEMI_AXES_MM = (68.0, 84.0, 64.0)


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

    def anatomy_on(self, axes: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Anatomical coordinates and depth on the rectilinear world grid ``axes`` (mm).

        Returns:
            ``(ax, ay, az, depth)``, each (X, Y, Z) float32: anatomical coordinates (mm, before
            the size factor) and the depth below the brain's outer surface along the ray from the
            centre (mm, positive inside; the labelled brain ends at ``depth = -rim_mm``).
        """
        xs, ys, zs = (np.asarray(a, np.float32) for a in axes)
        wx, wy, wz = xs[:, None, None], ys[None, :, None], zs[None, None, :]
        r = self.rotation.astype(np.float32)
        size = self.size
        ax_, ay_, az_ = (
            (r[0, i] * wx + r[1, i] * wy + r[2, i] * wz) / size[i]
            + self.displacement_mm * self.displacement[i].on(axes)
            for i in range(3)
        )
        a, b, c = self.semi_axes_mm
        a_x = a * (1.0 - 0.08 * ay_ / b)  # frontal lobes are narrower than occipital ones
        c_z = np.where(az_ < 0, 0.8 * c, c)  # the base of the brain is flatter than the vertex
        rho = np.sqrt((ax_ / a_x) ** 2 + (ay_ / b) ** 2 + (az_ / c_z) ** 2)
        radius = np.sqrt(ax_**2 + ay_**2 + az_**2)
        depth = radius * (1.0 / np.maximum(rho, 1e-3) - 1.0)
        depth += self.surface_mm * self.surface.on(axes)
        return ax_, ay_, az_, depth

    def labels_on(
        self,
        axes: Sequence[np.ndarray],
        *,
        with_lesions: bool = True,
        anatomy: tuple[np.ndarray, ...] | None = None,
    ) -> np.ndarray:
        """Labels (X, Y, Z) uint8 on the rectilinear world grid ``axes`` (increasing, in mm).

        ``anatomy`` is :meth:`anatomy_on` of the same ``axes`` when the caller already has it.
        """
        xs, ys, zs = (np.asarray(a, np.float32) for a in axes)
        wx, wy, wz = xs[:, None, None], ys[None, :, None], zs[None, None, :]
        ax_, ay_, az_, depth = self.anatomy_on(axes) if anatomy is None else anatomy

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
