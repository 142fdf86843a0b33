"""Manifests from existing dataset layouts: nnU-Net raw folders, nnssl pretrain_data.json, globs.

Each layout has a ``scan_*`` function that walks everything once and returns an
:class:`ImportReport` (the manifest of the fine cases plus one :class:`ImportProblem` per file or
field that does not fit), and an ``import_*`` function that returns the manifest or raises
:class:`ImportProblemsError` listing every problem (``keep_going=True``: the fine cases anyway).
A manifest's ``root`` is an absolute folder (or an environment variable, for nnssl paths written
as ``$nnssl_raw/...``) and its file paths are relative to it; paths that would leave the dataset
root are problems unless ``allow_outside_root=True``. :func:`rebase_root` rewrites the root
relative to the folder of the manifest file it will be saved in, so a dataset and its manifest
can move together.

Importers look at names (and whether files exist), not at voxels: run
:func:`toolkit.data.validate.check_manifests` (``mae3d manifest check``) on the result.

Example:
    >>> report = scan_nnunet("Dataset004_Hippocampus")  # doctest: +SKIP
    >>> for problem in report.problems: print(problem)  # doctest: +SKIP
    >>> m = import_folder("/data/ixi/*.nii.gz", name="ixi")  # doctest: +SKIP
    >>> save_manifest(rebase_root(m, "data_manifests/ixi.yaml"), "data_manifests/ixi.yaml")
    ... # doctest: +SKIP
"""

from toolkit.data.importers.common import (
    NIFTI_ENDINGS,
    ImportProblem,
    ImportProblemsError,
    ImportReport,
    rebase_root,
)
from toolkit.data.importers.folder import import_folder, scan_folder
from toolkit.data.importers.nnssl import import_nnssl, scan_nnssl
from toolkit.data.importers.nnunet import group_channel_files, import_nnunet, scan_nnunet

__all__ = [
    "NIFTI_ENDINGS",
    "ImportProblem",
    "ImportProblemsError",
    "ImportReport",
    "group_channel_files",
    "import_folder",
    "import_nnssl",
    "import_nnunet",
    "rebase_root",
    "scan_folder",
    "scan_nnssl",
    "scan_nnunet",
]
