"""Per-contrast intensities of the phantom's tissues (T1-, T2- and FLAIR-like styles)."""

from __future__ import annotations

from toolkit.data.synthetic.anatomy import CSF, GM, LESION, WM

CONTRASTS: tuple[str, ...] = ("T1", "T2", "FLAIR")

# Ranges of the mean intensity of each label, per contrast style. They are disjoint, so the
# ordering of the label means is fixed by the style while the values vary per subject.
LABEL_MEAN_RANGES: dict[str, dict[int, tuple[float, float]]] = {
    "T1": {CSF: (0.10, 0.28), GM: (0.45, 0.58), WM: (0.72, 0.90), LESION: (0.32, 0.42)},
    "T2": {CSF: (0.85, 1.00), GM: (0.52, 0.64), WM: (0.30, 0.42), LESION: (0.72, 0.82)},
    "FLAIR": {CSF: (0.05, 0.18), GM: (0.52, 0.64), WM: (0.34, 0.46), LESION: (0.82, 1.00)},
}

# Head tissues (:mod:`toolkit.data.synthetic.head`), on the same scale as the brain's ranges.
# Cortical bone is dark in every style; marrow and fat are bright in T1; vitreous follows CSF
# (dark T1, bright T2, suppressed in FLAIR); the optic nerves and cord look like white matter.
BONE, MARROW, FAT, SKIN, MUSCLE, VITREOUS, OPTIC_NERVE, CORD, SPINAL_CSF = range(1, 10)
HEAD_MEAN_RANGES: dict[str, dict[int, tuple[float, float]]] = {
    "T1": {
        BONE: (0.01, 0.05),
        MARROW: (0.55, 0.75),
        FAT: (0.95, 1.10),
        SKIN: (0.36, 0.48),
        MUSCLE: (0.30, 0.40),
        VITREOUS: (0.04, 0.12),
        OPTIC_NERVE: (0.62, 0.80),
        CORD: (0.68, 0.85),
        SPINAL_CSF: (0.10, 0.28),
    },
    "T2": {
        BONE: (0.01, 0.05),
        MARROW: (0.40, 0.55),
        FAT: (0.62, 0.80),
        SKIN: (0.40, 0.50),
        MUSCLE: (0.16, 0.26),
        VITREOUS: (0.90, 1.05),
        OPTIC_NERVE: (0.30, 0.42),
        CORD: (0.32, 0.44),
        SPINAL_CSF: (0.85, 1.00),
    },
    "FLAIR": {
        BONE: (0.01, 0.05),
        MARROW: (0.45, 0.60),
        FAT: (0.66, 0.84),
        SKIN: (0.38, 0.50),
        MUSCLE: (0.22, 0.32),
        VITREOUS: (0.02, 0.10),
        OPTIC_NERVE: (0.34, 0.46),
        CORD: (0.34, 0.46),
        SPINAL_CSF: (0.03, 0.15),
    },
}
