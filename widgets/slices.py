"""Three orthogonal slices of a (D, H, W) volume with sliders and overlays, as an ipywidget.

The rendering is plain numpy (:func:`render_slice`): the image is windowed to grey, then each
visible overlay is alpha-blended on top, and the slice is enlarged by whole-voxel repetition so that
anisotropic spacing keeps its physical aspect. The widget only turns those RGB arrays into PNG
bytes, so tests can assert on exactly what is drawn (``viewer.rgb``) without a browser.

Overlay kinds:

``labels``
    integer maps (segmentations, predictions); 0 is transparent, every other value has its colour.
``mask``
    MAE masks with 1 = visible, 0 = masked; masked voxels are tinted in the masked colour.
``heat``
    non-negative maps such as ``|error|``; blended with ``magma``, transparent where zero.

Example:
    >>> import numpy as np
    >>> vol = np.random.default_rng(0).random((24, 32, 40), dtype=np.float32)
    >>> lab = np.zeros(vol.shape, np.uint8); lab[8:16, 8:16, 8:16] = 1
    >>> viewer = SliceViewer(vol, overlays=[Overlay("label", lab, "labels")])
    >>> viewer.sliders[0].value = 12
    >>> [im.shape for im in viewer.rgb]  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import ipywidgets as W
import numpy as np

from toolkit import orientation
from toolkit.visualize import LABEL_RGB, MASKED_RGB

__all__ = [
    "ERROR_COLOURS",
    "LABEL_COLOURS",
    "MASKED_COLOUR",
    "Overlay",
    "SliceViewer",
    "as_volume",
    "display_slice",
    "encode_png",
    "intensity_window",
    "render_slice",
    "show_slices",
]

PathLike = str | os.PathLike[str]
OverlayKind = Literal["labels", "mask", "heat"]

#: RGB colours of label values 1, 2, ... (cycled); 0 is never drawn.
LABEL_COLOURS: np.ndarray = np.array(LABEL_RGB, dtype=np.float32)
#: RGB colours of the error labels (1 false positive, 2 false negative, 3 wrong class), with their
#: names: none is near a label colour, so errors never read as a class (e.g. CSF, GM, WM).
ERROR_COLOURS: dict[int, tuple[tuple[int, int, int], str]] = {
    1: ((127, 255, 0), "lime"),
    2: ((255, 150, 200), "pink"),
    3: ((255, 255, 255), "white"),
}
#: Colour of masked blocks, the same one toolkit.visualize uses: bright on black (no MRI grey takes
#: it) and apart from the label colours.
MASKED_COLOUR: np.ndarray = np.array(MASKED_RGB, dtype=np.float32)
#: Longest displayed side of a slice in pixels (small volumes are enlarged to about this).
DISPLAY_PX = 240
#: Slider names of the RAS axes 0, 1, 2: the plane each slider steps through.
AXIS_NAMES = tuple(orientation.PLANE_OF_RAS_AXIS)


@dataclass(frozen=True)
class Overlay:
    """A (D, H, W) map drawn over the image.

    Attributes:
        name: shown next to its toggle.
        data: (D, H, W) array with the image's shape.
        kind: ``labels``, ``mask`` (1 = visible, 0 = masked) or ``heat``.
        opacity: blending weight in [0, 1].
        vmax: upper end of the ``heat`` scale (default: the 99th percentile of the non-zero values).
    """

    name: str
    data: np.ndarray
    kind: OverlayKind = "labels"
    opacity: float = 0.5
    vmax: float | None = None


def as_volume(x: Any, name: str = "volume") -> np.ndarray:
    """A (D, H, W) numpy array from an array, a torch tensor or a NIfTI path.

    Leading axes of length 1 (batch, channel) are dropped, so (1, 1, D, H, W) tensors work.

    Raises:
        ValueError: the input is not 3-D after dropping those axes.
    """
    if isinstance(x, str | os.PathLike):
        from toolkit.data.io import load_volume

        return load_volume(Path(x)).array
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    arr = np.asarray(x)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a (D, H, W) volume, got shape {np.shape(x)}")
    return arr


def intensity_window(
    image: np.ndarray, percentiles: tuple[float, float] = (1, 99)
) -> tuple[float, float]:
    """Display range of ``image``: the given percentiles of its non-zero voxels (all if none)."""
    values = image[image != 0] if np.any(image != 0) else image.ravel()
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    return (lo, hi if hi > lo else lo + 1.0)


def display_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` across RAS ``axis`` as drawn on screen (rows top to bottom).

    The toolkit's one orientation rule (:mod:`toolkit.orientation`: radiological, superior and
    anterior up), the same pixels napari and the PNG figures show for that slice.
    """
    return orientation.display_slice(volume, axis, index)


def _zoom_factors(shape2d: Sequence[int], spacing2d: Sequence[float]) -> tuple[int, int]:
    # Integer repetition per axis: physical size (voxels x spacing) scaled so the longest side is
    # about DISPLAY_PX, never below one pixel per voxel.
    extent = [n * s for n, s in zip(shape2d, spacing2d, strict=True)]
    px_per_mm = DISPLAY_PX / max(extent)
    return (
        max(1, round(spacing2d[0] * px_per_mm)),
        max(1, round(spacing2d[1] * px_per_mm)),
    )


def render_slice(
    image: np.ndarray,
    overlays: Sequence[tuple[Overlay, np.ndarray]] = (),
    *,
    window: tuple[float, float],
    zoom: tuple[int, int] = (1, 1),
) -> np.ndarray:
    """Blend one 2-D slice and its overlays into an RGB image.

    Args:
        image: (h, w) slice of the image.
        overlays: ``(overlay, (h, w) slice of overlay.data)`` pairs, drawn in order.
        window: intensity range mapped to black..white.
        zoom: whole-pixel repetition (rows, columns).

    Returns:
        (h * zoom[0], w * zoom[1], 3) uint8.
    """
    lo, hi = window
    grey = np.clip((image.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for overlay, sl in overlays:
        a = float(np.clip(overlay.opacity, 0.0, 1.0))
        if overlay.kind == "labels":
            lab = np.rint(sl).astype(np.int64)
            on = lab > 0
            colours = LABEL_COLOURS[(lab[on] - 1) % len(LABEL_COLOURS)]
            rgb[on] = (1 - a) * rgb[on] + a * colours
        elif overlay.kind == "mask":
            on = sl < 0.5
            rgb[on] = (1 - a) * rgb[on] + a * MASKED_COLOUR
        else:
            rgb = _blend_heat(rgb, sl, overlay, a)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    if zoom != (1, 1):
        out = np.repeat(np.repeat(out, zoom[0], axis=0), zoom[1], axis=1)
    return out


def _blend_heat(rgb: np.ndarray, sl: np.ndarray, overlay: Overlay, a: float) -> np.ndarray:
    import matplotlib

    vmax = overlay.vmax if overlay.vmax is not None else _heat_vmax(overlay.data)
    t = np.clip(np.nan_to_num(sl.astype(np.float32)) / vmax, 0.0, 1.0)
    colours = matplotlib.colormaps["magma"](t)[..., :3] * 255.0
    # Weight by the value itself, so zero error stays see-through and large errors stand out.
    w = (a * t)[..., None]
    return np.asarray((1 - w) * rgb + w * colours)


def _heat_vmax(data: np.ndarray) -> float:
    nz = np.abs(data[np.isfinite(data) & (data != 0)])
    return max(float(np.percentile(nz, 99)), 1e-6) if nz.size else 1.0


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an (h, w, 3) uint8 image."""
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


class SliceViewer(W.VBox):
    """Three orthogonal slices of a volume, one slider each, with switchable overlays.

    Args:
        image: (D, H, W) array, torch tensor (leading 1-axes dropped) or NIfTI path.
        overlays: :class:`Overlay` objects, or a mapping ``name -> (D, H, W) array`` drawn as
            labels.
        spacing: voxel size (D, H, W) in mm, used only for the displayed aspect.

    The volume is RAS (D, H, W) = (R, A, S); slices are drawn by the toolkit's orientation rule
    (:mod:`toolkit.orientation`): radiological, superior and anterior up. Sliders count voxels
    from 0 and are named by the plane they step through (sagittal, coronal, axial).
        window: intensity range (default: 1st-99th percentile of the non-zero voxels).
        title: shown above the slices.

    Attributes:
        sliders: the three ``IntSlider`` (axis 0, 1, 2).
        toggles: ``Checkbox`` per overlay name.
        opacity: ``FloatSlider``: the opacity of every ``labels`` overlay (starts at theirs, 0.5
            by default, so the anatomy shows through); shown only when there are label maps.
        images: the three ``ipywidgets.Image`` views.
        rgb: the three (h, w, 3) uint8 arrays last drawn (what the images show).
        info: ``HTML`` with the slice position and the values there.
    """

    def __init__(
        self,
        image: Any,
        overlays: Iterable[Overlay] | Mapping[str, Any] = (),
        *,
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        window: tuple[float, float] | None = None,
        title: str = "",
    ) -> None:
        vol = as_volume(image, "image").astype(np.float32, copy=False)
        self.volume = vol
        self.spacing = tuple(float(s) for s in spacing)
        if len(self.spacing) != 3:
            raise ValueError(f"spacing: expected 3 values (D, H, W), got {spacing!r}")
        self.window = window if window is not None else intensity_window(vol)
        self.overlays = _as_overlays(overlays, vol.shape)
        self.sliders = tuple(
            W.IntSlider(
                value=n // 2,
                min=0,
                max=n - 1,
                description=AXIS_NAMES[i],
                continuous_update=True,
                style={"description_width": "initial"},
                layout=W.Layout(width=f"{DISPLAY_PX + 20}px"),
            )
            for i, n in enumerate(vol.shape)
        )
        self.toggles = {
            o.name: W.Checkbox(value=True, description=o.name, indent=False) for o in self.overlays
        }
        label_opacities = [o.opacity for o in self.overlays if o.kind == "labels"]
        self.opacity = W.FloatSlider(
            value=max(label_opacities, default=0.5),
            min=0.0,
            max=1.0,
            step=0.05,
            description="label opacity",
            style={"description_width": "initial"},
        )
        self.images = tuple(W.Image(format="png") for _ in range(3))
        self.rgb: list[np.ndarray] = [np.zeros((1, 1, 3), np.uint8) for _ in range(3)]
        self.info = W.HTML()
        columns = [W.VBox([img, s]) for img, s in zip(self.images, self.sliders, strict=True)]
        controls: list[W.Widget] = list(self.toggles.values())
        if label_opacities:
            controls.append(self.opacity)
        children: list[W.Widget] = []
        if title:
            children.append(W.HTML(f"<b>{title}</b>"))
        children += [W.HBox(columns), W.HBox(controls), self.info]
        super().__init__(children)
        for axis, slider in enumerate(self.sliders):
            slider.observe(lambda _change, a=axis: self._draw(a), names="value")
        for box in self.toggles.values():
            box.observe(lambda _change: self.redraw(), names="value")
        self.opacity.observe(lambda _change: self.redraw(), names="value")
        self.redraw()

    @property
    def position(self) -> tuple[int, int, int]:
        """The current slice indices (axis 0, 1, 2)."""
        return (self.sliders[0].value, self.sliders[1].value, self.sliders[2].value)

    def visible_overlays(self) -> list[Overlay]:
        """Overlays whose toggle is on; label maps drawn at the ``label opacity`` slider's value."""
        label_opacity = float(self.opacity.value)
        return [
            Overlay(
                o.name, o.data, o.kind, label_opacity if o.kind == "labels" else o.opacity, o.vmax
            )
            for o in self.overlays
            if self.toggles[o.name].value
        ]

    def redraw(self) -> None:
        """Draw all three views and refresh the info line."""
        for axis in range(3):
            self._draw(axis, update_info=False)
        self._update_info()

    def set_volume(self, image: Any, overlays: Iterable[Overlay] | Mapping[str, Any] = ()) -> None:
        """Show another volume of the same shape with new overlay data (toggles kept by name)."""
        vol = as_volume(image, "image").astype(np.float32, copy=False)
        if vol.shape != self.volume.shape:
            raise ValueError(
                f"image: shape {vol.shape} differs from the viewer's {self.volume.shape}"
            )
        new = _as_overlays(overlays, vol.shape)
        if [o.name for o in new] != [o.name for o in self.overlays]:
            raise ValueError(
                "overlays: set_volume keeps the overlay names; build a new viewer instead"
            )
        self.volume, self.overlays = vol, new
        self.redraw()

    def _draw(self, axis: int, *, update_info: bool = True) -> None:
        index = self.sliders[axis].value
        rows, cols = orientation.slice_axes(axis)
        zoom = _zoom_factors(
            (self.volume.shape[rows], self.volume.shape[cols]),
            (self.spacing[rows], self.spacing[cols]),
        )
        pairs = [(o, display_slice(o.data, axis, index)) for o in self.visible_overlays()]
        rgb = render_slice(
            display_slice(self.volume, axis, index), pairs, window=self.window, zoom=zoom
        )
        self.rgb[axis] = rgb
        self.images[axis].value = encode_png(rgb)
        self.images[axis].width = rgb.shape[1]
        self.images[axis].height = rgb.shape[0]
        if update_info:
            self._update_info()

    def _update_info(self) -> None:
        pos = self.position
        parts = [f"voxel {pos}: image {self.volume[pos]:.4g}"]
        parts += [f"{o.name} {o.data[pos]:.4g}" for o in self.overlays]
        self.info.value = " · ".join(parts)


def _as_overlays(
    overlays: Iterable[Overlay] | Mapping[str, Any], shape: tuple[int, ...]
) -> list[Overlay]:
    items: list[Overlay] = (
        [Overlay(k, as_volume(v, k), "labels") for k, v in overlays.items()]
        if isinstance(overlays, Mapping)
        else [
            Overlay(o.name, as_volume(o.data, o.name), o.kind, o.opacity, o.vmax) for o in overlays
        ]
    )
    names = [o.name for o in items]
    if len(set(names)) != len(names):
        raise ValueError(f"overlays: names must be unique, got {names}")
    for o in items:
        if o.data.shape != shape:
            raise ValueError(
                f"overlay {o.name!r}: shape {o.data.shape} differs from the image's {shape}"
            )
        if o.kind not in ("labels", "mask", "heat"):
            raise ValueError(
                f"overlay {o.name!r}: kind must be labels, mask or heat, got {o.kind!r}"
            )
    return items


def show_slices(
    image: Any,
    *,
    labels: Any = None,
    prediction: Any = None,
    mask: Any = None,
    error: Any = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
) -> SliceViewer:
    """A :class:`SliceViewer` with the usual overlays, each optional.

    Args:
        image: (D, H, W) image.
        labels: reference label map (D, H, W).
        prediction: predicted label map (D, H, W).
        mask: MAE mask at full resolution (D, H, W), 1 = visible.
        error: error map (D, H, W), e.g. ``|reconstruction - input|``.
        spacing: voxel size in mm (aspect only).
        title: heading.
    """
    overlays = []
    if mask is not None:
        overlays.append(Overlay("mask", as_volume(mask, "mask"), "mask", 0.6))
    if labels is not None:
        overlays.append(Overlay("labels", as_volume(labels, "labels"), "labels", 0.5))
    if prediction is not None:
        overlays.append(Overlay("prediction", as_volume(prediction, "prediction"), "labels", 0.5))
    if error is not None:
        overlays.append(Overlay("error", as_volume(error, "error"), "heat", 0.8))
    return SliceViewer(image, overlays, spacing=spacing, title=title)
