"""MAE3D toolkit: masked-autoencoder pretraining of 3D ResEnc U-Nets on brain MRI, and fine-tuning.

The library layer: no Qt, napari, ipywidgets or IPython imports here (enforced by import-linter).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mae3d-toolkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
