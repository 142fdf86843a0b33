"""Small NIfTI files for the data tests.

``write_nifti`` is both a plain function (``from tests.data.conftest import write_nifti``) and a
fixture of the same name, for tests that prefer fixtures::

    def test_something(tmp_path, write_nifti):
        path = write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8)), spacing=(1, 1, 2))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def write_nifti(
    path: Path | str,
    array: np.ndarray,
    affine: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> Path:
    """Write ``array`` (any shape, any dtype) to ``path`` (.nii or .nii.gz) and return the path.

    ``affine`` defaults to ``diag(*spacing, 1)``; ``spacing`` is ignored when ``affine`` is given.
    qform and sform are both set (code 1), as scanners' converters do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*map(float, spacing), 1.0])
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture(name="write_nifti")
def write_nifti_fixture() -> Callable[..., Path]:
    """The :func:`write_nifti` helper as a fixture."""
    return write_nifti
