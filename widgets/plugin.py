"""The napari plugin: dock widgets that run a checkpoint on the volume you are looking at.

Two dock widgets, declared in ``widgets/napari.yaml`` (npe2) and found through the
``napari.manifest`` entry point (*Plugins > MAE3D toolkit*):

``MAE reconstruction``
    choose a pretraining checkpoint and a volume (an open image layer, or a NIfTI file which is then
    opened as a layer), set mask ratio, block size and seed, press *Reconstruct*: the input patch,
    mask, masked input, reconstruction and error appear as layers placed over the volume.
``Segmentation``
    choose a fine-tuning checkpoint and an image layer (the active input image by default, never a
    derived layer such as a reconstruction or error), press *Segment*: a ``prediction`` labels
    layer appears on the image's grid.

Image layers are read as display arrays of RAS volumes (:mod:`toolkit.orientation`, as this
plugin's NIfTI reader and views make them) and converted back to RAS for the network.

Loading, preprocessing and the forward pass run in a worker thread (napari's ``create_worker``),
so the viewer stays responsive; errors show in the widget's status line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    PushButton,
    RadioButtons,
    SpinBox,
)

from toolkit.orientation import from_display, ras_geometry, to_display
from widgets.napari_views import (
    LABEL_OPACITY,
    ROLE,
    LayerData,
    add_layers,
    geometry,
    label_colormap,
    reconstruction_layers,
)

if TYPE_CHECKING:
    import napari

__all__ = ["ReconstructionWidget", "SegmentationWidget", "reconstruction_job", "segmentation_job"]

PathLike = str | os.PathLike[str]
#: What a widget hands to the worker: the function, its positional and keyword arguments.
JobSpec = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _image_source(
    source: Any, scale: tuple[float, ...], translate: tuple[float, ...]
) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...], LayerData | None]:
    """``(array, spacing, origin, layer to add)`` of a layer's data or a NIfTI file."""
    if isinstance(source, str | os.PathLike):
        from toolkit.data.io import load_volume
        from widgets.reader import volume_layer

        # Canonical (RAS) voxel order, so a diagonal scale + translate places it correctly.
        vol = load_volume(Path(source), canonical=True)
        origin = tuple(float(v) for v in vol.affine[:3, 3])
        return vol.array, vol.spacing_mm, origin, volume_layer(vol, kind="image")
    return np.asarray(source, np.float32), scale, translate, None


def reconstruction_job(
    checkpoint: PathLike,
    source: Any,
    *,
    scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    translate: tuple[float, ...] = (0.0, 0.0, 0.0),
    ratio: float,
    block_size: int,
    seed: int,
) -> tuple[list[LayerData], str]:
    """The worker of the reconstruction widget (runs off the UI thread).

    Args:
        checkpoint: pretraining checkpoint.
        source: (D, H, W) RAS array, or a NIfTI path.
        scale, translate: its RAS voxel size and origin in mm (ignored for a path).
        ratio, block_size, seed: the mask.

    Returns:
        Layer data tuples (the file's image first when ``source`` is a path) and a status line.
    """
    from widgets.inference import load_mae, prepare_image, reconstruct

    array, spacing, origin, file_layer = _image_source(source, scale, translate)
    model, cfg = load_mae(checkpoint)
    prepared = prepare_image(array, spacing, cfg, origin_mm=origin)
    result = reconstruct(model, cfg, prepared, ratio=ratio, block_size=block_size, seed=seed)
    layers = reconstruction_layers(
        result.input,
        result.mask,
        result.reconstruction,
        spacing_mm=result.spacing_mm,
        origin_mm=result.origin_mm,
    )
    status = (
        f"masked {100 * result.masked_fraction:.1f} % of {block_size}^3 blocks (seed {seed}); "
        f"patch {'x'.join(map(str, result.settings['patch_size']))}, "
        f"mean |error| on masked voxels {_masked_mean(result.error, result.mask):.3g}"
    )
    return ([file_layer] if file_layer else []) + layers, status


def _masked_mean(error: np.ndarray, mask: np.ndarray) -> float:
    masked = mask < 0.5
    return float(error[masked].mean()) if masked.any() else float("nan")


def segmentation_job(
    checkpoint: PathLike,
    source: Any,
    *,
    scale: tuple[float, ...] = (1.0, 1.0, 1.0),
    translate: tuple[float, ...] = (0.0, 0.0, 0.0),
    name: str = "image",
) -> tuple[list[LayerData], str]:
    """The worker of the segmentation widget: a ``prediction`` labels layer on the image's grid.

    ``source``, ``scale`` and ``translate`` as in :func:`reconstruction_job` (RAS).
    """
    from widgets.inference import load_segmenter, segment

    array, spacing, origin, file_layer = _image_source(source, scale, translate)
    predictor = load_segmenter(checkpoint)
    label_names = predictor.labels
    labels = segment(predictor, array, spacing, origin_mm=origin)
    values = sorted(set(np.unique(labels).tolist()) | set(label_names))
    kwargs = {
        "name": f"{name} prediction",
        **geometry(labels.shape, spacing, origin),
        "opacity": LABEL_OPACITY,
        "colormap": label_colormap(values),
        "features": {"index": values, "name": [label_names.get(v, str(v)) for v in values]},
        "metadata": {ROLE: "derived"},
    }
    found = ", ".join(f"{label_names.get(v, v)} {int((labels == v).sum())}" for v in values if v)
    layers: list[LayerData] = [(to_display(labels), kwargs, "labels")]
    return ([file_layer] if file_layer else []) + layers, f"voxels per label: {found}"


def _chosen_file(widget: FileEdit) -> Path | None:
    """The existing file a FileEdit points at, or None (empty, a folder, or gone)."""
    value = widget.value
    if isinstance(value, str | os.PathLike) and Path(value).is_file():
        return Path(value)
    return None


class _RunWidget(Container):
    """Shared parts: checkpoint, volume source, run button, status line, worker handling."""

    def __init__(
        self,
        napari_viewer: napari.viewer.Viewer,
        checkpoint_label: str,
        button_text: str,
        job: Callable[[], JobSpec],
    ) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self._job = job
        self.checkpoint = FileEdit(
            label=checkpoint_label, mode=FileDialogMode.EXISTING_FILE, filter="*.pt"
        )
        self.source = RadioButtons(
            label="volume", choices=["layer", "file"], orientation="horizontal"
        )
        self.source.value = "layer"
        self.layer = ComboBox(label="image layer", choices=self._image_layers, nullable=True)
        self.file = FileEdit(
            label="image file", mode=FileDialogMode.EXISTING_FILE, filter="*.nii *.nii.gz"
        )
        self.run_button = PushButton(text=button_text)
        self.status = Label(value="")
        self.worker: Any = None
        self.run_button.changed.connect(self.run)
        self.source.changed.connect(self._show_source)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _e: self.layer.reset_choices())
        napari_viewer.layers.selection.events.active.connect(self._follow_active)

    def _image_layers(self, _widget: Any = None) -> list[Any]:
        from napari.layers import Image

        # Inputs only: a reconstruction, error or in-fill layer is never a volume to run on.
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image)
            and layer.ndim == 3
            and not layer.rgb
            and layer.metadata.get(ROLE) != "derived"
        ]

    def _follow_active(self, _event: Any = None) -> None:
        choices = self._image_layers()
        active = self.viewer.layers.selection.active
        if active is not None and active in choices:
            self.layer.value = active
        elif self.layer.value is None and choices:
            self.layer.value = choices[0]

    def _show_source(self, _value: Any = None) -> None:
        self.layer.visible = self.source.value == "layer"
        self.file.visible = self.source.value == "file"

    def _inputs(self) -> tuple[Any, tuple[float, ...], tuple[float, ...], str]:
        if self.source.value == "file":
            path = _chosen_file(self.file)
            if path is None:
                raise ValueError(f"{path}: choose a NIfTI file")
            return str(path), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), path.name.split(".")[0]
        layer = self.layer.value
        if layer is None:
            raise ValueError("open a 3-D image layer or choose a file")
        # Layers hold display arrays (toolkit.orientation); the jobs work on RAS volumes.
        data = np.asarray(layer.data, np.float32)
        spacing, origin = ras_geometry(data.shape, layer.scale, layer.translate)
        return np.ascontiguousarray(from_display(data)), spacing, origin, layer.name

    def run(self, _value: Any = None) -> Any:
        """Start the job in a worker thread; returns the worker (None when inputs are missing)."""
        from napari.qt.threading import create_worker

        if _chosen_file(self.checkpoint) is None:
            self.status.value = "choose a checkpoint (.pt) first"
            return None
        try:
            func, args, kwargs = self._job()
        except ValueError as exc:
            self.status.value = str(exc)
            return None
        self.run_button.enabled = False
        self.status.value = "running..."
        self.worker = create_worker(func, *args, _start_thread=False, **kwargs)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker.start()
        return self.worker

    def _done(self, result: tuple[list[LayerData], str]) -> None:
        layers, status = result
        add_layers(self.viewer, layers)
        self.status.value = status

    def _failed(self, exc: BaseException) -> None:
        # ToolkitErrors carry a one-line message naming the file/field; show exactly that.
        self.status.value = f"failed: {exc}"


class ReconstructionWidget(_RunWidget):
    """Dock widget: masked reconstruction of a volume by a pretraining checkpoint.

    Args:
        napari_viewer: the viewer (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(
            napari_viewer, "pretraining checkpoint", "Reconstruct", self._reconstruction
        )
        self.ratio = FloatSpinBox(label="mask ratio", value=0.75, min=0.0, max=1.0, step=0.05)
        self.block = SpinBox(label="block size", value=16, min=1, max=512)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.extend(
            [self.checkpoint, self.source, self.layer, self.file, self.ratio, self.block]
            + [self.seed, self.run_button, self.status]
        )
        self.checkpoint.changed.connect(self._defaults_from_checkpoint)
        self._show_source()
        self._follow_active()

    def _defaults_from_checkpoint(self, _value: Any = None) -> None:
        """Start from the mask the checkpoint was trained with."""
        from toolkit.engine.checkpoint import load_checkpoint
        from toolkit.errors import ToolkitError

        try:
            path = _chosen_file(self.checkpoint)
            if path is None:
                return
            mask = load_checkpoint(path).get("config", {}).get("mask", {})
        except ToolkitError as exc:
            self.status.value = str(exc)
            return
        self.ratio.value = float(mask.get("ratio", self.ratio.value))
        self.block.value = int(mask.get("block_size", self.block.value))
        self.status.value = f"trained with ratio {self.ratio.value}, block {self.block.value}"

    def _reconstruction(self) -> JobSpec:
        source, scale, translate, _ = self._inputs()
        kwargs = {
            "scale": scale,
            "translate": translate,
            "ratio": float(self.ratio.value),
            "block_size": int(self.block.value),
            "seed": int(self.seed.value),
        }
        return reconstruction_job, (str(self.checkpoint.value), source), kwargs


class SegmentationWidget(_RunWidget):
    """Dock widget: segmentation of the active image layer by a fine-tuning checkpoint.

    Args:
        napari_viewer: the viewer (napari passes it).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer, "fine-tuning checkpoint", "Segment", self._segmentation)
        self.extend(
            [self.checkpoint, self.source, self.layer, self.file, self.run_button, self.status]
        )
        self._show_source()
        self._follow_active()

    def _segmentation(self) -> JobSpec:
        source, scale, translate, name = self._inputs()
        kwargs = {"scale": scale, "translate": translate, "name": name}
        return segmentation_job, (str(self.checkpoint.value), source), kwargs
