"""Smooth random fields: tensor-product cubic B-splines with i.i.d. normal coefficients.

They can be evaluated exactly on any rectilinear grid, so the fine (image) grid and the subject
(label) grid of a phantom see the same continuous anatomy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_FIELD_HALF_EXTENT_MM = 125.0  # random fields are defined on [-125, 125]^3 mm, beyond any FOV


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
