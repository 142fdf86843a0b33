"""The masking explorer: block masks of the MAE, live on a real or synthetic brain.

Every control change samples a new mask with :func:`toolkit.masking.sample_block_mask` (the same
function and generator the training loop uses, seeded from the ``seed`` box) and redraws:

* the patch with masked blocks tinted, and the masked input the dense MAE sees (``input x mask``);
* the masked fraction, counted on the drawn mask (exact: ``round(ratio x cells)`` cells);
* for the S3D variant, the mask as each encoder stage sees it
  (:func:`toolkit.masking.mask_at_resolution`): exact at stages finer than a block, all visible at
  coarser ones (the bottleneck of ResEnc-L with 16\\ :sup:`3` blocks).

Example (in a notebook)::

    from widgets.masking import MaskingExplorer
    explorer = MaskingExplorer.from_config(load_config("tiny"))
    explorer                      # displays
    explorer.overrides()          # {"mask.ratio": 0.75, "mask.block_size": 8, ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np

from widgets.slices import MASKED_COLOUR, Overlay, SliceViewer, encode_png
from widgets.volumes import SOURCES, Example, centre_patch, load_example

__all__ = ["MaskingExplorer", "patch_size_options", "stage_masks"]


def patch_size_options(
    volume_shape: Sequence[int], total_stride: int, largest: int = 192
) -> list[int]:
    """Cube edges a network can take (multiples of its total stride) up to ``largest``.

    Edges up to the volume's largest side (rounded up to a multiple) are offered; a patch larger
    than the volume is zero-padded, as crops at the border are in training.
    """
    top = min(largest, -(-max(volume_shape) // total_stride) * total_stride)
    return list(range(total_stride, top + 1, total_stride)) or [total_stride]


def stage_masks(
    mask: Any, patch_size: Sequence[int], strides: Sequence[int]
) -> list[tuple[int, tuple[int, int, int], np.ndarray, bool]]:
    """The mask at every encoder stage, as the S3D encoder applies it.

    Args:
        mask: (1, 1, gd, gh, gw) grid mask (torch tensor), 1 = visible.
        patch_size: patch (D, H, W).
        strides: per-stage strides of the network.

    Returns:
        One ``(stage, feature size, (D', H', W') mask, exact)`` per stage; ``exact`` is False where
        a feature voxel is coarser than a block and the mask is all visible.
    """
    from toolkit.masking import cumulative_strides, mask_at_resolution

    grid = tuple(int(g) for g in mask.shape[2:])
    out = []
    for i, total in enumerate(cumulative_strides(strides)):
        size = (patch_size[0] // total[0], patch_size[1] // total[1], patch_size[2] // total[2])
        exact = all(s >= g for s, g in zip(size, grid, strict=True))
        m = mask_at_resolution(mask, size)[0, 0].numpy()
        out.append((i, size, m, exact))
    return out


class MaskingExplorer(W.VBox):
    """Interactive block masking on a preprocessed brain patch.

    Args:
        volume: a (D, H, W) image to mask; ``None`` loads the example chosen by ``source``.
        source: ``mni152`` or ``synthetic`` (ignored when ``volume`` is given).
        spacing_mm: resampling of the example sources, and the displayed aspect.
        model: registered architecture whose strides decide the valid block sizes and the S3D
            stage view.
        patch_size: cube edge in voxels.
        block_size: mask block edge in voxels.
        ratio: fixed mask ratio.
        ratio_range: if given, start in range mode with this (low, high).
        seed: mask seed.
        variant: ``dense`` or ``s3d``.

    Attributes:
        source, patch, block, mode, ratio, ratio_range, seed, variant: the controls.
        mask: (1, 1, gd, gh, gw) float tensor last drawn, 1 = visible.
        patch_image: (D, H, W) patch of the volume.
        summary: ``HTML`` with the masked fraction.
        masked_fraction: masked cells / cells of the last mask.
        input_view, masked_view: the two :class:`~widgets.slices.SliceViewer` (linked sliders).
        stages: ``HBox`` of per-stage mask images (S3D only).
    """

    def __init__(
        self,
        volume: Any = None,
        *,
        source: str = "mni152",
        spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
        model: str = "resenc_l",
        patch_size: int = 160,
        block_size: int = 16,
        ratio: float = 0.75,
        ratio_range: tuple[float, float] | None = None,
        seed: int = 0,
        variant: str = "s3d",
    ) -> None:
        from toolkit.models import list_models, model_info

        self._given = None if volume is None else np.asarray(volume, np.float32)
        self._spacing = tuple(float(s) for s in spacing_mm)
        self._example: Example | None = None
        self._example_key: tuple[str, tuple[float, ...]] | None = None
        self._quiet = False
        self.model = W.Dropdown(options=list_models(), value=model, description="model")
        self.source = W.Dropdown(
            options=[(v, k) for k, v in SOURCES.items()],
            value=source,
            description="volume",
            disabled=volume is not None,
        )
        stride = int(model_info(model)["total_stride"])
        shape = self._volume().shape
        self.patch = W.Dropdown(options=patch_size_options(shape, stride), description="patch")
        self.patch.value = _closest(self.patch.options, patch_size)
        self.variant = W.ToggleButtons(
            options=["dense", "s3d"], value=variant, description="variant"
        )
        self.block = W.Dropdown(description="block")
        self._set_block_options(block_size)
        self.mode = W.ToggleButtons(
            options=["fixed", "range"],
            value="range" if ratio_range else "fixed",
            description="ratio",
        )
        self.ratio = W.FloatSlider(value=ratio, min=0.0, max=1.0, step=0.05, description="ratio")
        lo, hi = ratio_range if ratio_range else (0.6, 0.9)
        self.ratio_range = W.FloatRangeSlider(
            value=(lo, hi), min=0.0, max=1.0, step=0.05, description="U[low, high]"
        )
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.summary = W.HTML()
        self.stages = W.HBox()
        self._views = W.VBox()
        self.input_view: SliceViewer | None = None
        self.masked_view: SliceViewer | None = None
        self.masked_fraction = float("nan")
        controls = W.VBox(
            [
                W.HBox([self.source, self.model]),
                W.HBox([self.patch, self.block, self.seed]),
                W.HBox([self.mode, self.ratio, self.ratio_range]),
                self.variant,
            ]
        )
        super().__init__([controls, self.summary, self._views, self.stages])
        self.source.observe(lambda _c: self._rebuild(), names="value")
        self.model.observe(self._on_model, names="value")
        self.patch.observe(lambda _c: None if self._quiet else self._on_patch(), names="value")
        self.variant.observe(lambda _c: self._on_variant(), names="value")
        for w in (self.block, self.mode, self.ratio, self.ratio_range, self.seed):
            w.observe(lambda _c: self.update(), names="value")
        self._rebuild()

    @classmethod
    def from_config(cls, cfg: Any, volume: Any = None, source: str = "mni152") -> MaskingExplorer:
        """An explorer set from a :class:`~toolkit.config.Config` (patch, mask, model, spacing)."""
        return cls(
            volume,
            source=source,
            spacing_mm=cfg.data.target_spacing_mm,
            model=cfg.model.name,
            patch_size=int(cfg.data.patch_size[0]),
            block_size=cfg.mask.block_size,
            ratio=cfg.mask.ratio,
            ratio_range=cfg.mask.ratio_range,
            seed=cfg.runtime.seed,
            variant=cfg.mask.variant,
        )

    # ---------------------------------------------------------------------------------- state

    def _volume(self) -> np.ndarray:
        if self._given is not None:
            return self._given
        if self._example is None or self._example_key != (self.source.value, self._spacing):
            self._example = load_example(self.source.value, spacing_mm=self._spacing)
            self._example_key = (self.source.value, self._spacing)
        return self._example.image

    def _strides(self) -> tuple[int, ...]:
        from toolkit.models import model_info

        return tuple(model_info(self.model.value)["strides"])

    def _set_block_options(self, preferred: int) -> None:
        from toolkit.masking import valid_block_sizes

        size = (self.patch.value,) * 3
        if self.variant.value == "s3d":
            options = valid_block_sizes(size, self._strides())
        else:
            options = [d for d in range(1, self.patch.value + 1) if self.patch.value % d == 0]
        # A 1-voxel block is valid but meaningless for MAE (it is pixel masking).
        options = [b for b in options if b >= 2] or options
        # Changing the options fires value events; the caller redraws once afterwards.
        self._quiet = True
        try:
            self.block.options = options
            self.block.value = _closest(options, preferred)
        finally:
            self._quiet = False

    def _on_model(self, _change: Any) -> None:
        from toolkit.models import model_info

        info = model_info(self.model.value)
        if not info["supports_s3d"] and self.variant.value == "s3d":
            self.variant.value = "dense"  # dense-only network
        stride = int(info["total_stride"])
        self._quiet = True
        try:
            options = patch_size_options(self._volume().shape, stride)
            preferred = self.patch.value
            self.patch.options = options
            self.patch.value = _closest(options, preferred)
        finally:
            self._quiet = False
        self._on_patch()

    def _on_patch(self) -> None:
        self._set_block_options(self.block.value or 16)
        self._rebuild()

    def _on_variant(self) -> None:
        from toolkit.models import model_info

        if self.variant.value == "s3d" and not model_info(self.model.value)["supports_s3d"]:
            self.variant.value = "dense"
            return
        self._set_block_options(self.block.value or 16)
        self.update()

    def _rebuild(self) -> None:
        """New volume or patch size: new viewers (their shape changes)."""
        size = (self.patch.value,) * 3
        self.patch_image = centre_patch(self._volume(), size)
        self.mask = self._sample()
        full = self._full_mask()
        self.input_view = SliceViewer(
            self.patch_image,
            [Overlay("masked blocks", full, "mask", 0.6)],
            spacing=self._spacing,
            title="input, masked blocks tinted",
        )
        self.masked_view = SliceViewer(
            self.patch_image * full,
            spacing=self._spacing,
            window=self.input_view.window,
            title="what the dense MAE sees: input x mask",
        )
        for a, b in zip(self.input_view.sliders, self.masked_view.sliders, strict=True):
            W.link((a, "value"), (b, "value"))
        self._views.children = [self.input_view, self.masked_view]
        self._refresh_text()

    def _sample(self) -> Any:
        import torch

        from toolkit.masking import sample_block_mask

        generator = torch.Generator().manual_seed(int(self.seed.value))
        return sample_block_mask(
            1,
            (self.patch.value,) * 3,
            int(self.block.value),
            ratio=float(self.ratio.value),
            ratio_range=self.current_ratio_range(),
            generator=generator,
        )

    def _full_mask(self) -> np.ndarray:
        from toolkit.masking import upsample_mask

        return upsample_mask(self.mask, (self.patch.value,) * 3)[0, 0].numpy()

    def current_ratio_range(self) -> tuple[float, float] | None:
        """The (low, high) range in range mode, else None."""
        if self.mode.value != "range":
            return None
        lo, hi = self.ratio_range.value
        return (float(lo), float(hi))

    def update(self) -> None:
        """Sample the mask for the current controls and redraw."""
        self.ratio.disabled = self.mode.value == "range"
        self.ratio_range.disabled = self.mode.value != "range"
        if self._quiet or self.input_view is None or self.masked_view is None:
            return
        self.mask = self._sample()
        full = self._full_mask()
        self.input_view.set_volume(self.patch_image, [Overlay("masked blocks", full, "mask", 0.6)])
        self.masked_view.set_volume(self.patch_image * full)
        self._refresh_text()

    def _refresh_text(self) -> None:
        cells = int(self.mask.numel())
        masked = int((self.mask == 0).sum())
        self.masked_fraction = masked / cells
        grid = "x".join(str(int(g)) for g in self.mask.shape[2:])
        if self.mode.value == "range":
            lo, hi = self.ratio_range.value
            asked = f"ratio drawn from U[{lo:.2f}, {hi:.2f}]"
        else:
            asked = f"ratio {self.ratio.value:.2f}"
        self.summary.value = (
            f"<b>masked fraction {100 * self.masked_fraction:.1f} %</b> — {masked} of {cells} "
            f"blocks of {self.block.value}<sup>3</sup> voxels ({grid} grid on a "
            f"{self.patch.value}<sup>3</sup> patch); {asked}, seed {self.seed.value}"
        )
        self._draw_stages()

    def _draw_stages(self) -> None:
        if self.variant.value != "s3d":
            self.stages.children = [
                W.HTML(
                    "<i>dense</i>: the network sees input x mask (zero = the mean after z-scoring) "
                    "and convolutions run over the masked blocks as if they were data."
                )
            ]
            return
        boxes: list[W.Widget] = [
            W.HTML(
                "<i>S3D</i>: the encoder re-masks every conv output at its resolution and takes "
                "instance-norm statistics over visible voxels only; per stage:"
            )
        ]
        for stage, size, m, exact in stage_masks(
            self.mask, (self.patch.value,) * 3, self._strides()
        ):
            sl = m[m.shape[0] // 2].T[::-1]
            rgb = np.where((sl < 0.5)[..., None], MASKED_COLOUR, 235.0).astype(np.uint8)
            zoom = max(1, 96 // max(sl.shape))
            rgb = np.repeat(np.repeat(rgb, zoom, 0), zoom, 1)
            note = "exact" if exact else "all visible (coarser than a block)"
            boxes.append(
                W.VBox(
                    [
                        W.Image(value=encode_png(rgb), format="png", width=rgb.shape[1]),
                        W.HTML(f"stage {stage}: {size[0]}<sup>3</sup><br>{note}"),
                    ]
                )
            )
        self.stages.children = boxes

    def overrides(self) -> dict[str, Any]:
        """The current settings as dotted config overrides (for ``load_config`` and the form)."""
        size = int(self.patch.value)
        return {
            "data.patch_size": [size, size, size],
            "mask.block_size": int(self.block.value),
            "mask.ratio": float(self.ratio.value),
            "mask.ratio_range": list(self.current_ratio_range() or []) or None,
            "mask.variant": self.variant.value,
            "model.name": self.model.value,
        }


def _closest(options: Sequence[int], preferred: int) -> int:
    return min(options, key=lambda o: (abs(o - preferred), o))
