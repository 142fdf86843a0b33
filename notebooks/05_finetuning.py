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
# # 05 · Fine-tuning: transfer, pretrained vs scratch, label efficiency
#
# The point of pretraining is a better segmenter from few labels. You will learn how to
#
# * check what a pretraining checkpoint transfers into a segmentation network *before* training
#   (architecture match, keys loaded / missing / mismatched, channels, patch size, spacing);
# * start from a published nnssl checkpoint (the OpenMind-pretrained ResEnc-L), whose adaptation
#   plan says which network to build;
# * fine-tune from pretrained weights and from scratch on 1, 2, ... labelled subjects and plot
#   Dice against the number of labelled subjects (the question a researcher asks first);
# * look at a segmentation next to its reference, with false positives and negatives marked.
#
# Set `MAE3D_CHECKPOINT` to a pretraining `final.pt` to use your own; otherwise a small model is
# pretrained here first. At `TOOLKIT_PROFILE=tiny` every run is a few steps: the Dice values
# then say nothing, the path is the same.

# %%
import os
import shutil
from pathlib import Path

from toolkit.config import load_config
from toolkit.data.synthetic import write_synthetic_dataset
from toolkit.label_efficiency import run_label_efficiency, run_name
from toolkit.pretrain import pretrain
from toolkit.report import plot_dice_vs_k
from toolkit.transfer import export_checkpoint, inspect_transfer, read_pretrained
from widgets import show_run
from widgets.inline import show_figures

PROFILE = os.environ.get("TOOLKIT_PROFILE", "demo")  # "tiny": seconds (CI); "demo": minutes
SIZES = {
    "tiny": {"subjects": 3, "labelled": 4, "spacing": 5.0, "patch": 16, "block": 4,
             "pretrain_steps": 3, "finetune_steps": 5, "ks": (0,), "seeds": (0,), "overlap": 0.0},
    "demo": {"subjects": 12, "labelled": 10, "spacing": 2.5, "patch": 48, "block": 8,
             "pretrain_steps": 300, "finetune_steps": 150, "ks": (1, 3, 0), "seeds": (0, 1),
             "overlap": 0.5},
}[PROFILE]  # fmt: skip
WORK = Path("runs") / "05_finetuning"
shutil.rmtree(WORK, ignore_errors=True)

paths = write_synthetic_dataset(
    WORK / "data",
    num_subjects=SIZES["subjects"],
    num_labelled=SIZES["labelled"],
    seed=0,
    spacing_mm=SIZES["spacing"],
    workers=1,
    progress=False,
)
size = SIZES["patch"]
cfg = load_config(
    "tiny",
    {
        "data.pretrain_manifest": str(paths["pretrain"]),
        "data.finetune_manifest": str(paths["labelled"]),
        "data.cache_dir": str(WORK / "cache"),
        "data.target_spacing_mm": [SIZES["spacing"]] * 3,
        "data.patch_size": [size, size, size],
        "data.num_workers": 0,
        "mask.block_size": SIZES["block"],
        "pretrain.steps": SIZES["pretrain_steps"],
        "pretrain.val_every": SIZES["pretrain_steps"],
        "pretrain.snapshot_every": SIZES["pretrain_steps"],
        "pretrain.checkpoint_every": SIZES["pretrain_steps"],
        "finetune.steps": SIZES["finetune_steps"],
        "finetune.val_every": SIZES["finetune_steps"],
        "finetune.checkpoint_every": SIZES["finetune_steps"],
        # The paper's 1e-3 is tuned for 250k steps; `make demo` sweeps the lr of short runs.
        "finetune.optim.lr": 1e-2,
        # Sliding windows (validation, evaluation): overlap 0 is fast, 0.5 the default.
        "evaluate.overlap": SIZES["overlap"],
        "evaluate.sw_batch_size": 4,
        "runtime.device": "cpu",
    },
)
checkpoint = Path(os.environ.get("MAE3D_CHECKPOINT", WORK / "mae" / "checkpoints" / "final.pt"))
if not checkpoint.is_file():
    pretrain(cfg, WORK / "mae", progress=False)

# %% [markdown]
# ## What transfers
# Encoder stem and stages by default (the decoder starts fresh unless
# `finetune.transfer_decoder=true`); a mismatch is listed key by key before any training.

# %%
report = inspect_transfer(checkpoint, cfg)
print(report.format())

# %% [markdown]
# ## From a published nnssl checkpoint (OpenMind ResEnc-L)
# nnssl saves a dict with `network_weights` and an `nnssl_adaptation_plan` that names the
# pretrained network (`ResEncL`, or `ResidualEncoderUNet` with its kwargs), the pretraining
# spacing and patch size, and where stem and encoder live. The OpenMind-pretrained ResEnc-L is
# published in that format. This notebook downloads nothing: fetch the checkpoint yourself and set
# `NNSSL_CHECKPOINT` to its `.pth` file. The fine-tuning network is then built from the plan
# (`ResEncL` -> `resenc_l`, ~102 M parameters, whatever `model.name` says), so the report is the
# real one. From the command line:
#
# ```
# mae3d check-transfer /path/to/checkpoint_final.pth paper data.finetune_manifest=my.yaml
# mae3d finetune paper data.finetune_manifest=my.yaml --pretrained /path/to/checkpoint_final.pth
# ```
#
# Without `NNSSL_CHECKPOINT`, the cell exports this notebook's checkpoint in nnssl's format
# (`mae3d export --format nnssl`) and reads it back through the same path.

# %%
nnssl_file = os.environ.get("NNSSL_CHECKPOINT")
if nnssl_file:
    target = load_config("paper", {"data.finetune_manifest": str(paths["labelled"])})
else:
    nnssl_file = export_checkpoint(checkpoint, WORK / "mae3d_nnssl.pth", fmt="nnssl")
    target = cfg
source = read_pretrained(nnssl_file)
print(
    f"{source.source_format} checkpoint: {source.arch_class_name} -> {source.model_candidates[0]}, "
    f"pretrained on {source.patch_size} voxel patches at {source.spacing_mm} mm"
)
print(inspect_transfer(source, target).format(max_keys=5))

# %% [markdown]
# ## Pretrained vs scratch, by number of labelled subjects
# Every (k, arm, seed) is one fine-tuning run scored on the test subjects; k = 0 means all
# training subjects. Finished runs are reused if you run the cell again.

# %%
table = run_label_efficiency(
    cfg,
    checkpoint,
    ks=SIZES["ks"],
    seeds=SIZES["seeds"],
    out_dir=WORK / "label_efficiency",
    progress=False,
)
print(table.groupby(["k", "arm"])["dice"].mean().unstack("arm").round(3))
show_figures([plot_dice_vs_k(table, title="Dice on the test subjects")])

# %% [markdown]
# ## A segmentation, case by case
# Reference and prediction in the same colours; errors: false positives red, false negatives
# blue, wrong class yellow. With a display this opens napari (try `mae3d view` on the run, too).

# %%
k = SIZES["ks"][-1]
run = WORK / "label_efficiency" / "runs" / run_name(k, "pretrained", SIZES["seeds"][0])
view = show_run(run, manifest=paths["labelled"])
