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
# # 03 · Pretraining: configure, run, watch, stop and resume
#
# You will learn how to
#
# * pick a preset, an architecture, masking and optimisation in a form and see the config it
#   makes (the same YAML every run folder keeps), with its parameter count and FLOPs;
# * measure what a config costs on your machine before a long run;
# * start pretraining in the background, follow the loss and the reconstructions, stop it cleanly
#   and resume it exactly where it stopped;
# * check that the MAE beats the parameter-free in-fill baseline (its sanity gate).
#
# The form runs `toolkit.pretrain.pretrain` in a thread; *Stop* writes `RUN_DIR/STOP`, which the
# training loop checks after every step (the command-line equivalent is
# `mae3d pretrain ... --out RUN_DIR` and `touch RUN_DIR/STOP`).

# %%
import os
import shutil
from pathlib import Path

from IPython.display import display

from toolkit.data.synthetic import write_synthetic_dataset
from toolkit.engine.logging import read_history
from toolkit.infill_gate import infill_verdict
from widgets import show_run
from widgets.config_form import ConfigForm

PROFILE = os.environ.get("TOOLKIT_PROFILE", "demo")  # "tiny": seconds (CI); "demo": minutes
SIZES = {
    "tiny": {"subjects": 3, "spacing": 5.0, "patch": 16, "block": 4, "steps": 6},
    "demo": {"subjects": 12, "spacing": 2.5, "patch": 48, "block": 8, "steps": 300},
}[PROFILE]
WORK = Path("runs") / "03_pretraining"
shutil.rmtree(WORK, ignore_errors=True)

paths = write_synthetic_dataset(
    WORK / "data",
    num_subjects=SIZES["subjects"],
    num_labelled=0,
    seed=0,
    spacing_mm=SIZES["spacing"],
    workers=1,
    progress=False,
)

# %% [markdown]
# ## The form
# Fixed here: where the data are and a few logging intervals; everything else is yours. An
# invalid combination (try block size 5) is explained in red and disables *Run*.

# %%
form = ConfigForm(
    "tiny",
    {
        "data.target_spacing_mm": [SIZES["spacing"]] * 3,
        "data.num_workers": 0,
        "pretrain.log_every": 1,
        "pretrain.val_every": SIZES["steps"],
        "pretrain.snapshot_every": SIZES["steps"],
        "pretrain.checkpoint_every": SIZES["steps"],
        "runtime.device": "cpu",
    },
    run_dir=WORK / "mae",
)
form.manifest.value = str(paths["pretrain"])  # preprocessed into runs/03_pretraining/cache
form.patch.value = SIZES["patch"]
form.block.value = SIZES["block"]
form.steps.value = SIZES["steps"]
display(form)

# %% [markdown]
# What would the paper's network cost here? *Estimate* measures a few real steps of the current
# config on this machine (step time, peak memory) and extrapolates the run.

# %%
form.run_estimate(steps=1, block=True)
print(form.size.value.replace("<b>", "").replace("</b>", "").replace("<sup>3</sup>", "^3"))
print(form.estimate.value.removeprefix("<pre>").removesuffix("</pre>"))

# %% [markdown]
# ## Run, stop, resume
# Press *Run* (or call `form.start()`); the progress bar and the loss plot follow `metrics.csv`.
# Here the run is stopped half-way, as *Stop* would: the step in progress finishes, `latest.pt` is
# saved and *Resume* becomes available.

# %%
form.start()
form.wait_for_step(SIZES["steps"] // 2)
form.stop()
run_dir = form.wait()
print(form.status.value)

# %% [markdown]
# *Resume* restores model, optimiser, schedule and random state from `latest.pt`: crops, masks
# and augmentation continue as if the run had never stopped, so the loss curve is the one an
# uninterrupted run draws.

# %%
form.start(resume=True)
form.wait()
print(form.status.value)
print([round(r["loss"], 4) for r in read_history(run_dir) if "loss" in r])

# %%
view = show_run(run_dir)  # loss curves and the last reconstruction snapshot

# %% [markdown]
# ## Did the MAE learn more than a blur?
# Every validation also fills the masked voxels of the same crops with a parameter-free
# Gaussian in-fill of the visible voxels (`toolkit.infill`) and logs its loss as `infill_loss`,
# with `infill_margin = infill_loss - val_loss`: **positive means the MAE is better**. The dashed
# line on the loss plot and the in-fill column of the reconstruction figure show the same
# baseline; `mae3d pretrain` ends with this sentence. A run that has not beaten it has learnt
# nothing a blur could not do — train longer or change the settings before fine-tuning with it.

# %%
verdict = infill_verdict(run_dir)
print(verdict["message"])
print(f"best val_loss {verdict['best_val_loss']:.3g} at step {verdict['best_step']}")
