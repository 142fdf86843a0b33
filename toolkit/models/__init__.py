"""Networks: a registry of factories (ResEnc, MONAI), the S3D wrapper and the MAE model.

Importing this package registers every preset. Use :func:`list_models`, :func:`model_info` and
:func:`create_model` rather than the factories directly.
"""

from toolkit.models import monai_nets as monai_nets
from toolkit.models import resenc as resenc
from toolkit.models.initialization import INIT_SCHEMES, init_weights, resolve_init
from toolkit.models.mae import (
    MAEModel,
    build_initial_mae,
    build_mae,
    build_segmentation_model,
    mae_geometry_warnings,
)
from toolkit.models.registry import (
    ModelEntry,
    create_model,
    get_entry,
    list_models,
    model_info,
    register_model,
)
from toolkit.models.sparse import MaskedInstanceNorm3d, S3DExtras, SparseResEncUNet

__all__ = [
    "INIT_SCHEMES",
    "MAEModel",
    "MaskedInstanceNorm3d",
    "ModelEntry",
    "S3DExtras",
    "SparseResEncUNet",
    "build_initial_mae",
    "build_mae",
    "build_segmentation_model",
    "create_model",
    "get_entry",
    "init_weights",
    "list_models",
    "mae_geometry_warnings",
    "model_info",
    "register_model",
    "resolve_init",
]
