"""Front-ends of the MAE3D toolkit: ipywidgets for notebooks, napari views and a napari plugin.

This package imports :mod:`toolkit`; the library never imports it (checked by ``lint-imports``).
Importing the package itself is cheap: every front-end lives in its own module and pulls in
ipywidgets, matplotlib or napari only when used.

* :mod:`widgets.slices` — three orthogonal slices with overlays (any (D, H, W) array).
* :mod:`widgets.masking` — the masking explorer.
* :mod:`widgets.config_form` — pick a config, estimate its size, run / stop / resume pretraining.
* :mod:`widgets.napari_layers` — runs and volumes as napari layer data (no viewer needed).
* :mod:`widgets.napari_views` — those layers in a viewer, planes upright; ``mae3d view RUN_DIR``.
* :mod:`widgets.plugin` — the napari dock widgets (manifest ``widgets/napari.yaml``).
* :mod:`widgets.reader` — the napari NIfTI reader (*File → Open* on ``.nii``/``.nii.gz``).

Every view draws volumes by one orientation rule, :mod:`toolkit.orientation` (radiological,
superior and anterior up).
* :mod:`widgets.inline` — the headless fallback; :func:`show_run` picks napari or inline figures.
"""

from __future__ import annotations

from typing import Any

__all__ = ["show_run"]


def __getattr__(name: str) -> Any:
    # Lazy, so that napari's plugin discovery (which imports this package to find napari.yaml)
    # and ``import widgets`` stay free of heavy imports.
    if name == "show_run":
        from widgets.inline import show_run

        return show_run
    raise AttributeError(f"module 'widgets' has no attribute {name!r}")
