"""A head around a phantom brain: skull with marrow, scalp fat and skin, eyes, optic nerves, neck.

Real T1 scans carry skull, scalp and neck, which brain-only phantoms never show a network. The
head is built outward from the brain's outer surface (``depth`` of
:meth:`~toolkit.data.synthetic.anatomy.BrainGeometry.anatomy_on`, so it follows the brain's own
shape and rotation): past the labelled CSF rim come the inner table of the skull (cortical bone),
the diploë (marrow), the outer table, subcutaneous fat and skin, each with a thickness that varies
smoothly over the head and per subject. A face mass in front of and below the frontal lobes holds
two eyes (vitreous in a shell of orbital fat) with optic nerves running back towards the chiasm.
A neck tube (muscle, a fat and skin ring, vertebral bone around the spinal canal with cord and
CSF) runs down from the skull base and leaves the field of view: the subject grid is cut 25-45 mm
below the brain. Tissue codes are :data:`HEAD_TISSUE_NAMES`; the brain's labels take precedence
wherever both are defined, and every head tissue is background (0) in the label map.

Everything random is drawn from its own stream (``default_rng([seed, 7])``), so the brain of a
subject with a head is the brain of the same seed without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.data.synthetic.anatomy import BrainGeometry
from toolkit.data.synthetic.contrast import (
    BONE,
    CORD,
    FAT,
    MARROW,
    MUSCLE,
    OPTIC_NERVE,
    SKIN,
    SPINAL_CSF,
    VITREOUS,
)
from toolkit.data.synthetic.fields import _SmoothField

HEAD_TISSUE_NAMES: dict[int, str] = {
    BONE: "bone",
    MARROW: "marrow",
    FAT: "fat",
    SKIN: "skin",
    MUSCLE: "muscle",
    VITREOUS: "vitreous",
    OPTIC_NERVE: "optic_nerve",
    CORD: "cord",
    SPINAL_CSF: "spinal_csf",
}


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class HeadGeometry:
    """The head of one subject, in the anatomical coordinates of its brain (mm).

    Layer thicknesses are multiplied by ``1 + thickness_var * thickness`` (a smooth field, so a
    skull is thicker in some places than in others).
    """

    inner_table_mm: float
    marrow_mm: float
    outer_table_mm: float
    fat_mm: float
    skin_mm: float
    thickness: _SmoothField
    thickness_var: float
    face_mm: float  # extra soft tissue in front of and below the frontal lobes
    eye_centre_mm: tuple[float, float, float]  # right eye; the left one is mirrored in x
    eye_radius_mm: float
    orbit_fat_mm: float
    optic_nerve_mm: float  # radius
    chiasm_mm: tuple[float, float, float]
    neck_centre_mm: tuple[float, float]  # (x, y) of the neck tube's axis
    neck_semi_axes_mm: tuple[float, float]
    neck_top_mm: float  # z where the neck tube begins (it extends down without end)
    canal_centre_mm: tuple[float, float]
    cord_mm: float  # radius
    canal_mm: float  # radius of the CSF-filled canal
    vertebra_mm: float  # outer radius of the bony ring around the canal
    below_brain_mm: float  # the field of view ends this far below the brain's lowest point

    def tissues_on(self, anatomy: tuple[np.ndarray, ...], rim_mm: float) -> np.ndarray:
        """Head tissue codes (X, Y, Z) uint8 from the brain's :meth:`anatomy_on` arrays.

        Args:
            anatomy: ``(ax, ay, az, depth)`` of
                :meth:`~toolkit.data.synthetic.anatomy.BrainGeometry.anatomy_on` on some grid.
            rim_mm: the brain's CSF rim; the skull starts where the labelled brain ends.

        Returns:
            Codes of :data:`HEAD_TISSUE_NAMES`, 0 for air. Voxels inside the labelled brain get
            the tissue that would lie there without a brain (the caller lets the brain win).
        """
        ax_, ay_, az_, depth = anatomy
        var = 1.0 + self.thickness_var * np.clip(self._thickness_values(ax_, ay_, az_), -2.0, 2.0)
        # Soft tissue of the face: thicker towards the front and bottom.
        front = np.clip(ay_ / 84.0, 0.0, 1.0) * np.clip(-az_ / 51.0 + 0.2, 0.0, 1.0)
        out = -depth - rim_mm  # mm outside the labelled brain
        edges = np.cumsum(
            [self.inner_table_mm, self.marrow_mm, self.outer_table_mm, self.fat_mm, self.skin_mm]
        )
        tissue = np.zeros(depth.shape, np.uint8)
        tissue[out >= 0] = BONE
        tissue[(out >= edges[0] * var) & (out < edges[1] * var)] = MARROW
        face = self.face_mm * front
        fat_end = edges[3] * var + face
        tissue[(out >= edges[2] * var) & (out < fat_end)] = FAT
        tissue[(out >= fat_end) & (out < fat_end + self.skin_mm * var)] = SKIN
        tissue[out >= fat_end + self.skin_mm * var] = 0

        # Neck: a tube below neck_top, muscle inside a fat + skin ring, the spine at the back.
        nx, ny = self.neck_centre_mm
        sa, sb = self.neck_semi_axes_mm
        below = az_ < self.neck_top_mm
        ring = np.sqrt(((ax_ - nx) / sa) ** 2 + ((ay_ - ny) / sb) ** 2)
        mean_axis = 0.5 * (sa + sb)
        neck_out = (ring - 1.0) * mean_axis  # ~mm outside the neck surface
        neck = below & (neck_out < 0) & (out >= edges[2] * var)  # under the skull base
        tissue[neck] = MUSCLE
        tissue[neck & (neck_out >= -(self.fat_mm + self.skin_mm))] = FAT
        tissue[neck & (neck_out >= -self.skin_mm)] = SKIN
        cx, cy = self.canal_centre_mm
        r_canal = np.sqrt((ax_ - cx) ** 2 + (ay_ - cy) ** 2)
        spine = below & (out >= 0) & (neck_out < 0)
        tissue[spine & (r_canal < self.vertebra_mm)] = MARROW
        tissue[spine & (r_canal < self.vertebra_mm) & (r_canal >= self.vertebra_mm - 2.0)] = BONE
        tissue[spine & (r_canal < self.canal_mm)] = SPINAL_CSF
        tissue[spine & (r_canal < self.cord_mm)] = CORD
        # The cord passes the skull base (foramen magnum) into the brain.
        canal = (az_ < 0) & (out >= 0) & (r_canal < self.canal_mm) & (tissue > 0)
        tissue[canal] = SPINAL_CSF
        tissue[canal & (r_canal < self.cord_mm)] = CORD

        # Eyes and optic nerves, both sides.
        ex, ey, ez = self.eye_centre_mm
        hx, hy, hz = self.chiasm_mm
        for side in (-1.0, 1.0):
            dx, dy, dz = ax_ - side * ex, ay_ - ey, az_ - ez
            r_eye = np.sqrt(dx**2 + dy**2 + dz**2)
            orbit = (r_eye < self.eye_radius_mm + self.orbit_fat_mm) & (out >= 0)
            tissue[orbit] = FAT
            # Nerve: distance to the segment eye centre -> chiasm.
            seg = np.array([hx - side * ex, hy - ey, hz - ez])
            length2 = float(seg @ seg)
            t = np.clip((dx * seg[0] + dy * seg[1] + dz * seg[2]) / length2, 0.0, 1.0)
            d2 = (dx - t * seg[0]) ** 2 + (dy - t * seg[1]) ** 2 + (dz - t * seg[2]) ** 2
            tissue[(d2 < self.optic_nerve_mm**2) & (out >= 0)] = OPTIC_NERVE
            tissue[r_eye < self.eye_radius_mm] = VITREOUS
        return tissue

    def _thickness_values(self, ax_: np.ndarray, ay_: np.ndarray, az_: np.ndarray) -> np.ndarray:
        # The field at the point's direction projected onto a 100 mm sphere: smooth over the head
        # surface and constant through the layers, so each layer keeps one thickness radially.
        scale = 100.0 / (np.sqrt(ax_**2 + ay_**2 + az_**2) + 1e-3)
        return _field_at(self.thickness, ax_ * scale, ay_ * scale, az_ * scale)


def _field_at(f: _SmoothField, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """A smooth field at scattered points, by trilinear interpolation of its 8 mm grid values."""
    from scipy import ndimage

    grid = np.arange(-120.0, 120.0 + 1e-3, 8.0)
    values = f.on([grid, grid, grid])
    coords = np.stack([(np.clip(c, -120.0, 120.0) + 120.0) / 8.0 for c in (x, y, z)])
    return ndimage.map_coordinates(values, coords.reshape(3, -1), order=1).reshape(x.shape)


def draw_head(seed: int) -> HeadGeometry:
    """Draw the head of subject ``seed`` from its own random stream (see the module docstring)."""
    rng = np.random.default_rng([seed, 7])
    eye_radius = float(rng.uniform(11.0, 12.5))
    return HeadGeometry(
        inner_table_mm=float(rng.uniform(1.2, 2.2)),
        marrow_mm=float(rng.uniform(1.5, 4.0)),
        outer_table_mm=float(rng.uniform(1.2, 2.2)),
        fat_mm=float(rng.uniform(2.5, 6.0)),
        skin_mm=float(rng.uniform(1.5, 3.0)),
        thickness=_SmoothField.draw(rng, 40.0),
        thickness_var=float(rng.uniform(0.1, 0.3)),
        face_mm=float(rng.uniform(15.0, 25.0)),
        eye_centre_mm=(
            float(rng.uniform(29.0, 34.0)),
            float(rng.uniform(64.0, 70.0)),
            float(rng.uniform(-44.0, -38.0)),
        ),
        eye_radius_mm=eye_radius,
        orbit_fat_mm=float(rng.uniform(3.0, 6.0)),
        optic_nerve_mm=float(rng.uniform(1.8, 2.6)),
        chiasm_mm=(0.0, float(rng.uniform(14.0, 22.0)), float(rng.uniform(-46.0, -40.0))),
        neck_centre_mm=(0.0, float(rng.uniform(-22.0, -12.0))),
        neck_semi_axes_mm=(float(rng.uniform(45.0, 55.0)), float(rng.uniform(48.0, 58.0))),
        neck_top_mm=float(rng.uniform(-40.0, -30.0)),
        canal_centre_mm=(0.0, float(rng.uniform(-30.0, -24.0))),
        cord_mm=float(rng.uniform(4.5, 6.0)),
        canal_mm=float(rng.uniform(7.0, 8.5)),
        vertebra_mm=float(rng.uniform(14.0, 18.0)),
        below_brain_mm=float(rng.uniform(25.0, 45.0)),
    )


def head_box(
    brain: BrainGeometry, head: HeadGeometry
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World-mm corners of the field of view of a head: everything but the neck's lower end.

    Evaluated on a coarse 4 mm grid with a 6 mm margin; the lower z bound is
    ``below_brain_mm`` under the brain's box, so the neck leaves the field of view.
    """
    coarse = np.arange(-140.0, 140.0 + 1e-3, 4.0)
    axes: Sequence[np.ndarray] = [coarse] * 3
    anatomy = brain.anatomy_on(axes)
    tissue = head.tissues_on(anatomy, brain.rim_mm)
    inside = np.nonzero((tissue > 0) | (anatomy[3] >= -brain.rim_mm))
    lo = [float(coarse[idx.min()] - 6.0) for idx in inside]
    hi = [float(coarse[idx.max()] + 6.0) for idx in inside]
    lo[2] = max(lo[2], brain.box_mm[0][2] + 9.0 - head.below_brain_mm)
    return tuple(lo), tuple(hi)
