"""The MNI152 template as one real, labelled test case, built from files nilearn ships.

nilearn's wheel contains the ICBM 2009a nonlinear symmetric template (1 mm, 197 x 233 x 189) as a
skull-stripped T1 and grey- and white-matter probability maps, stored as uint8 (probability x 255)
under ``nilearn/datasets/data/``. They are read here directly from that folder with nibabel;
nilearn itself is not imported and nothing is downloaded.

Label rule (:func:`labels_from_probabilities`), with ``p_csf = 1 - p_gm - p_wm`` (clipped at 0):

* background (0): outside the brain mask. The mask is ``T1 > 0.2 * max(T1)`` (the threshold of
  nilearn's ``load_mni152_brain_mask``) with interior holes filled.
* white matter (3): inside the mask where ``p_wm >= p_gm`` and ``p_wm >= p_csf``;
* grey matter (2): inside the mask, not white matter, where ``p_gm >= p_csf``;
* CSF (1): the rest of the mask (ventricles, sulcal and extra-cerebral CSF).

That is the maximum-probability tissue, ties going to the deeper tissue. Because the template is
an average of 152 brains it is smooth, so grey matter comes out thicker than in one subject; it is
a test of robustness to a real, unseen image, not a ground truth of anatomy.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from toolkit.data.io import load_volume, save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.errors import DataError

PathLike = str | os.PathLike[str]

MNI152_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
MNI152_LABELS: dict[int, str] = {0: "background", 1: "csf", 2: "gm", 3: "wm"}
MNI152_SUBJECT = "mni152"
BRAIN_MASK_THRESHOLD = 0.2
_CHANNEL = "image"  # the channel name of the synthetic sets, so one model applies to both


def mni152_paths() -> dict[str, Path]:
    """Paths of the T1, GM and WM files inside the installed nilearn package.

    Raises:
        DataError: nilearn is not installed or its wheel lacks one of the files.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "nilearn is not installed: it ships the MNI152 template (pip install nilearn)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    paths = {key: folder / name for key, name in MNI152_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"{', '.join(missing)}: not found in the installed nilearn package")
    return paths


def brain_mask_from_t1(t1: np.ndarray, threshold: float = BRAIN_MASK_THRESHOLD) -> np.ndarray:
    """Brain mask (D, H, W) bool of a skull-stripped T1 (D, H, W): ``t1 > threshold * max``, with
    interior holes filled."""
    peak = float(np.max(t1))
    if peak <= 0:
        raise DataError("MNI152 T1: the image is all zero, no brain to mask")
    return np.asarray(ndimage.binary_fill_holes(t1 > threshold * peak))


def labels_from_probabilities(
    p_gm: np.ndarray, p_wm: np.ndarray, brain_mask: np.ndarray
) -> np.ndarray:
    """Hard labels from tissue probabilities, by the rule in the module docstring.

    Args:
        p_gm: grey-matter probability (D, H, W) in [0, 1].
        p_wm: white-matter probability (D, H, W) in [0, 1].
        brain_mask: (D, H, W) bool; everything outside is background.

    Returns:
        (D, H, W) uint8 with 0 background, 1 CSF, 2 GM, 3 WM.

    Example:
        >>> p_gm, p_wm = np.array([0.2, 0.6, 0.3, 0.0]), np.array([0.1, 0.3, 0.5, 0.9])
        >>> labels_from_probabilities(p_gm, p_wm, np.array([True, True, True, False])).tolist()
        [1, 2, 3, 0]
    """
    p_gm = np.asarray(p_gm, np.float32)
    p_wm = np.asarray(p_wm, np.float32)
    mask = np.asarray(brain_mask, bool)
    if not (p_gm.shape == p_wm.shape == mask.shape):
        raise DataError(
            f"tissue maps differ in shape: gm {p_gm.shape}, wm {p_wm.shape}, mask {mask.shape}"
        )
    p_csf = np.clip(1.0 - p_gm - p_wm, 0.0, 1.0)
    wm = (p_wm >= p_gm) & (p_wm >= p_csf)
    gm = ~wm & (p_gm >= p_csf)
    label = np.ones(mask.shape, np.uint8)
    label[gm] = 2
    label[wm] = 3
    label[~mask] = 0
    return label


def load_mni152_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template as ``(image, label, affine)``: T1 (D, H, W) float32 scaled to [0, 1],
    labels (D, H, W) uint8 by :func:`labels_from_probabilities`, and the (4, 4) affine."""
    paths = mni152_paths()
    t1 = load_volume(paths["t1"])
    # The wheel stores probabilities as uint8 x 255 (no scaling in the header).
    p_gm = load_volume(paths["gm"]).array / 255.0
    p_wm = load_volume(paths["wm"]).array / 255.0
    label = labels_from_probabilities(p_gm, p_wm, brain_mask_from_t1(t1.array))
    image = (t1.array / float(t1.array.max())).astype(np.float32)
    return image, label, t1.affine


def mni152_manifest(root: str = ".") -> Manifest:
    """The one-case manifest (subject ``mni152``, split ``test``) with the given root."""
    return Manifest(
        name="mni152",
        root=Path(root),
        root_spec=root,
        channels=(_CHANNEL,),
        labels=dict(MNI152_LABELS),
        cases=(
            Case(
                case_id=MNI152_SUBJECT,
                subject=MNI152_SUBJECT,
                images={_CHANNEL: Path("images") / f"{MNI152_SUBJECT}.nii.gz"},
                label=Path("labels") / f"{MNI152_SUBJECT}.nii.gz",
                split="test",
            ),
        ),
        extra={
            "description": "MNI152 2009a template from nilearn's wheel; labels by the maximum-"
            "probability rule of toolkit.data.mni (mae3d synth --with-mni)."
        },
    )


def write_mni152_case(out_dir: PathLike) -> Path:
    """Write ``images/mni152.nii.gz``, ``labels/mni152.nii.gz`` and ``mni152.yaml`` to ``out_dir``.

    The manifest is removed first and written last, so it never points at missing files.

    Returns:
        The manifest path.
    """
    out = Path(out_dir)
    manifest = mni152_manifest()
    target = out / "mni152.yaml"
    target.unlink(missing_ok=True)
    image, label, affine = load_mni152_case()
    stem = f"{MNI152_SUBJECT}.nii.gz"
    save_volume(image, affine, out / "images" / stem)
    save_volume(label, affine, out / "labels" / stem)
    return save_manifest(manifest, target)
