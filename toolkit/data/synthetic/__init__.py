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
exactly zero, as after skull stripping, unless the subject is drawn with ``head=True``: then the
brain sits in a head (skull with marrow, scalp fat, eyes, optic nerves, a neck leaving the field of
view; :mod:`toolkit.data.synthetic.head`) and air carries noise as in a real scan; labels stay the
brain labels (the head is background 0).

Arrays are (D, H, W) = (x, y, z) voxel axes; affines map voxel indices to RAS millimetres with the
brain centred at the origin. Everything random comes from ``numpy.random.default_rng(seed)``.

Example:
    >>> s = synthesize_subject(0, spacing_mm=4.0)
    >>> s.image.shape == s.label.shape, s.image.dtype.name, s.label.dtype.name
    (True, 'float32', 'uint8')
    >>> sorted(set(s.label.ravel().tolist()))
    [0, 1, 2, 3]

Modules: :mod:`~toolkit.data.synthetic.fields` (smooth random fields), ``anatomy`` (the brain),
``head`` (skull, scalp, eyes, neck), ``contrast`` (per-style intensities), ``subject`` (one
subject's image and labels) and ``dataset`` (data sets, manifests, files).
"""

from toolkit.data.synthetic.anatomy import (
    BACKGROUND,
    CSF,
    GM,
    LABEL_NAMES,
    LESION,
    WM,
    BrainGeometry,
)
from toolkit.data.synthetic.contrast import CONTRASTS, HEAD_MEAN_RANGES, LABEL_MEAN_RANGES
from toolkit.data.synthetic.dataset import (
    CHANNEL,
    DEMO_NAME,
    DEMO_NUM_LABELLED,
    DEMO_NUM_SUBJECTS,
    DEMO_ROOT,
    DEMO_SEED,
    DEMO_SPACING_MM,
    DEMO_TEST_FRACTION,
    subject_seed,
    synthetic_manifests,
    write_demo_manifests,
    write_synthetic_dataset,
)
from toolkit.data.synthetic.head import HEAD_TISSUE_NAMES, HeadGeometry
from toolkit.data.synthetic.subject import SyntheticSubject, synthesize_subject

__all__ = [
    "BACKGROUND",
    "CHANNEL",
    "CONTRASTS",
    "CSF",
    "DEMO_NAME",
    "DEMO_NUM_LABELLED",
    "DEMO_NUM_SUBJECTS",
    "DEMO_ROOT",
    "DEMO_SEED",
    "DEMO_SPACING_MM",
    "DEMO_TEST_FRACTION",
    "GM",
    "HEAD_MEAN_RANGES",
    "HEAD_TISSUE_NAMES",
    "LABEL_MEAN_RANGES",
    "LABEL_NAMES",
    "LESION",
    "WM",
    "BrainGeometry",
    "HeadGeometry",
    "SyntheticSubject",
    "subject_seed",
    "synthesize_subject",
    "synthetic_manifests",
    "write_demo_manifests",
    "write_synthetic_dataset",
]
