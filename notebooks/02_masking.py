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
# # 02 · Masking: what the MAE hides, dense vs S3D, on a real brain
#
# MAE pretraining hides most of an image and trains the network to fill it in. Here you will
# learn
#
# * how block masks are drawn: a coarse grid over the patch (16³-voxel blocks on a 160³ patch in
#   the paper), an *exact* number of masked blocks per sample, ratio fixed (75 %) or drawn per
#   sample from a range (U[60 %, 90 %] tied with 75 % in the paper);
# * what the two variants feed the encoder: **dense** (input × mask) and **S3D** (sparse
#   convolutions that ignore masked voxels at every scale, with mask tokens and densification);
# * how to carry the settings you like into a config.
#
# The volume is the MNI152 template (a real T1 brain shipped inside nilearn), preprocessed the way
# training data are. Move the sliders: the mask, the masked volume and the masked fraction update.

# %%
import os

from IPython.display import display

from toolkit.config import load_config
from widgets.masking import MaskingExplorer, stage_masks
from widgets.slices import show_slices
from widgets.volumes import load_example

PROFILE = os.environ.get("TOOLKIT_PROFILE", "demo")  # "tiny": small and fast (CI)
# "demo" shows the paper's geometry: 1 mm, a 160^3 patch, 16^3 blocks, ResEnc-L strides.
SETTINGS = {
    "tiny": {"spacing": 5.0, "model": "resenc_tiny", "patch": 32, "block": 4},
    "demo": {"spacing": 1.0, "model": "resenc_l", "patch": 160, "block": 16},
}[PROFILE]
spacing = (SETTINGS["spacing"],) * 3

# %% [markdown]
# ## The brain, preprocessed
# Cropped to the head, z-scored on the brain, resampled; tissue labels (CSF, grey and white
# matter) from the template's probability maps.

# %%
example = load_example("mni152", spacing_mm=spacing)
show_slices(example.image, labels=example.label, spacing=example.spacing_mm, title=example.name)

# %% [markdown]
# ## The masking explorer
# Top: the patch with masked blocks tinted. Middle: the masked input of the dense variant. Bottom:
# the mask as each encoder stage of the S3D variant sees it.

# %%
explorer = MaskingExplorer(
    source="mni152",
    spacing_mm=spacing,
    model=SETTINGS["model"],
    patch_size=SETTINGS["patch"],
    block_size=SETTINGS["block"],
    ratio=0.75,
)
display(explorer)

# %% [markdown]
# Widgets can be set from code too. The count is exact: `round(ratio × blocks)` blocks are
# masked in every sample, so the masked fraction only differs from the ratio by rounding.

# %%
for ratio in (0.3, 0.6, 0.75, 0.9):
    explorer.ratio.value = ratio
    print(f"ratio {ratio:.2f} -> masked fraction {explorer.masked_fraction:.3f}")

# %% [markdown]
# With a range, every sample draws its own ratio (here: one sample per seed).

# %%
explorer.mode.value = "range"
explorer.ratio_range.value = (0.6, 0.9)
for seed in range(5):
    explorer.seed.value = seed
    print(f"seed {seed}: masked fraction {explorer.masked_fraction:.3f}")

# %% [markdown]
# ## Dense vs S3D
# **Dense**: the network sees `input × mask`. After z-scoring, zero is the mean intensity, so a
# masked block looks like flat, average tissue, and every convolution mixes those fake values
# into its neighbours; the statistics of instance norm include them too.
#
# **S3D** (sparse, SparK-style): every encoder convolution output is multiplied by the mask at its
# resolution, so masked positions never leak into visible ones, and instance-norm statistics are
# taken over visible voxels only. Before features go to the decoder, masked positions are filled
# with a learned token per scale and a 3³ *densification* convolution runs. Where a feature voxel
# is coarser than a block the mask cannot be represented and the stage sees everything (the 5³
# bottleneck of ResEnc-L with 16³ blocks on 160³ patches).

# %%
explorer.mode.value = "fixed"
explorer.ratio.value = 0.75
explorer.variant.value = "s3d"
strides = (1, 2, 2, 2) if SETTINGS["model"] == "resenc_tiny" else (1, 2, 2, 2, 2, 2)
for stage, size, mask, exact in stage_masks(explorer.mask, (explorer.patch.value,) * 3, strides):
    state = "exact" if exact else "all visible"
    print(f"stage {stage}: {size[0]}^3 features, visible {mask.mean():.2f} ({state})")

# %% [markdown]
# ## Into a config
# The explorer's settings as dotted overrides, ready for `load_config`, the config form
# (`03_pretraining`) or the command line (`mae3d pretrain paper mask.ratio=0.75 ...`).

# %%
overrides = explorer.overrides()
cfg = load_config("paper", overrides)
print(overrides)
print(cfg.mask)
