# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (mae3d)
#     language: python
#     name: mae3d
# ---

# %% [markdown]
# # 04 · Reconstructions: one checkpoint, many masks, on a real brain
#
# You will learn how to
#
# * load a pretraining checkpoint and preprocess any volume the way its training data were;
# * reconstruct the same brain under different mask ratios and block sizes, and read the error;
# * check each reconstruction against the parameter-free in-fill baseline;
# * look at the result in three orthogonal slices here, or in napari when you have a display
#   (`mae3d view RUN_DIR` opens a run's snapshots the same way).
#
# The volume is the MNI152 template, which the model never saw. Set `MAE3D_CHECKPOINT` to a
# `final.pt` of your own (e.g. from `03_pretraining` or `mae3d pretrain`) to use it; otherwise a
# small model is pretrained here first.

# %%
import os
import shutil
from pathlib import Path

from toolkit.config import load_config
from toolkit.data.mni import mni152_paths
from toolkit.data.synthetic import write_synthetic_dataset
from toolkit.infill_gate import compare_with_infill
from toolkit.pretrain import pretrain
from widgets.inference import load_mae, prepare_image, reconstruct
from widgets.inline import show_reconstructions
from widgets.slices import show_slices

PROFILE = os.environ.get("TOOLKIT_PROFILE", "demo")  # "tiny": seconds (CI); "demo": minutes
SIZES = {
    "tiny": {"subjects": 3, "spacing": 5.0, "patch": 16, "block": 4, "steps": 3},
    "demo": {"subjects": 12, "spacing": 2.5, "patch": 48, "block": 8, "steps": 300},
}[PROFILE]
CHECKPOINT = Path(
    os.environ.get("MAE3D_CHECKPOINT", "runs/04_reconstructions/mae/checkpoints/final.pt")
)

# %% [markdown]
# ## A checkpoint
# Skipped when `MAE3D_CHECKPOINT` points at an existing file.

# %%
if not CHECKPOINT.is_file():
    work = Path("runs") / "04_reconstructions"
    shutil.rmtree(work, ignore_errors=True)
    paths = write_synthetic_dataset(
        work / "data", SIZES["subjects"], 0, seed=0, spacing_mm=SIZES["spacing"], workers=1,
        progress=False,
    )  # fmt: skip
    size = SIZES["patch"]
    cfg = load_config(
        "tiny",
        {
            "data.pretrain_manifest": str(paths["pretrain"]),
            "data.target_spacing_mm": [SIZES["spacing"]] * 3,
            "data.patch_size": [size, size, size],
            "data.num_workers": 0,
            "mask.block_size": SIZES["block"],
            "pretrain.steps": SIZES["steps"],
            "pretrain.val_every": SIZES["steps"],
            "pretrain.snapshot_every": SIZES["steps"],
            "pretrain.checkpoint_every": SIZES["steps"],
            "runtime.device": "cpu",
        },
    )
    pretrain(cfg, work / "mae", progress=False)

model, cfg = load_mae(CHECKPOINT)
print(f"{cfg.model.name}, {cfg.mask.variant}, trained with ratio {cfg.mask.ratio} and "
      f"{cfg.mask.block_size}^3 blocks on {cfg.data.patch_size} patches")  # fmt: skip

# %% [markdown]
# ## The brain, as the model's data were prepared
# Cropped to the head, z-scored, resampled to the checkpoint's spacing.

# %%
prepared = prepare_image(mni152_paths()["t1"], (), cfg)
print(f"{prepared.image.shape} voxels of {prepared.spacing_mm} mm")

# %% [markdown]
# ## Ratios and block sizes
# The same patch and seed, different masks. Higher ratios leave less context; larger blocks make
# the missing regions harder to interpolate from their borders. The error is `|reconstruction −
# input|`; its mean over masked voxels is what the loss minimises.

# %%
block = cfg.mask.block_size
settings = [(0.6, block), (0.75, block), (0.9, block), (0.75, 2 * block)]
results = [reconstruct(model, cfg, prepared, ratio=r, block_size=b, seed=0) for r, b in settings]
view = show_reconstructions(results)  # napari with a display, a figure otherwise

# %% [markdown]
# ## Better than a blur?
# The sanity gate of every pretraining run, here per mask: the masked MSE of the reconstruction
# against that of a parameter-free Gaussian in-fill of the visible voxels (`toolkit.infill`) on the
# same patch and mask. `infill_margin = infill_loss - val_loss`; positive means the MAE is better.

# %%
for (ratio, size), r in zip(settings, results, strict=True):
    c = compare_with_infill(r.input, r.mask, r.reconstruction)
    print(f"ratio {ratio}, {size}^3 blocks: MAE {c['val_loss']:.3f}, in-fill "
          f"{c['infill_loss']:.3f}, margin {c['infill_margin']:+.3f}")  # fmt: skip

# %% [markdown]
# ## Three slices with overlays
# Masked blocks tinted, the error as a heat map: move the sliders and toggle the overlays.

# %%
r = results[1]
show_slices(r.input, mask=r.mask, error=r.error, spacing=r.spacing_mm, title="ratio 0.75")
