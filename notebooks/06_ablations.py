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
# # 06 · Ablations: sweeps, mean rank and the ablation explorer
#
# The paper's findings are ablations — mask ratio, block size, S3D parts, schedule length,
# fine-tuning schedule, network size — compared by mean Dice and by *mean rank* across datasets.
# You will learn how to
#
# * write a sweep spec: a base config, axes over any config fields, downstream sets, seeds and a
#   from-scratch baseline; see how it expands into runs (pretraining once per pretraining config)
#   and what they will cost, before running anything;
# * run it — resumable: run the cell again after an interruption and finished runs are skipped;
# * read the one tidy results table and the paper-style table (mean Dice per dataset, mean rank,
#   difference to scratch);
# * explore it with the ablation explorer: x axis, hue, facet, metric, filters, mean or mean rank,
#   and export the plot and its table.
#
# The same from a terminal: `mae3d sweep SPEC.yaml --out DIR [--dry-run]` and
# `mae3d sweep-report DIR --baseline scratch`. At `TOOLKIT_PROFILE=tiny` (CI) the sweep is a
# handful of few-step runs and its numbers mean nothing; the default `demo` profile runs the
# shipped example `data_manifests/sweeps/example_mask_ratio.yaml` (26 small runs, minutes on a
# CPU; at that size, too, the numbers show the machinery, not the paper's result).

# %%
import os
import shutil
from pathlib import Path

import yaml
from IPython.display import display

import toolkit
from toolkit.report import dataframe_to_markdown
from toolkit.results import load_results, summary_table
from toolkit.sweep import (
    estimate_sweep,
    expand_sweep,
    format_estimates,
    parse_sweep_spec,
    run_sweep,
)
from widgets.explorer import AblationExplorer
from widgets.inline import show_figures

PROFILE = os.environ.get("TOOLKIT_PROFILE", "demo")  # "tiny": seconds (CI); "demo": minutes
# The shipped example, found next to the toolkit package in the repository.
REPO = Path(toolkit.__file__).resolve().parents[1]
EXAMPLE = REPO / "data_manifests" / "sweeps" / "example_mask_ratio.yaml"
WORK = Path("runs") / "06_ablations"
FRESH = PROFILE == "tiny"  # CI starts from scratch; otherwise finished runs are kept and reused
if FRESH:
    shutil.rmtree(WORK, ignore_errors=True)

# %% [markdown]
# ## The sweep spec
# A spec is a small YAML file. `axes` name dotted config fields; every combination is one
# configuration. Axes under `finetune.` / `evaluate.` only change fine-tuning, all others change
# pretraining — so each pretraining configuration is pretrained once and fine-tuned on every
# dataset with every seed. `scratch: true` adds the from-scratch baseline per dataset and seed.

# %%
spec_data = yaml.safe_load(EXAMPLE.read_text())
if PROFILE == "tiny":
    spec_data["overrides"].update(
        {"data.patch_size": [16, 16, 16], "data.target_spacing_mm": [5.0, 5.0, 5.0]}
    )
    for stage, steps in (("pretrain", 2), ("finetune", 4)):  # sawtooth needs 4 steps
        for key in ("steps", "val_every", "checkpoint_every", "log_every"):
            spec_data["overrides"][f"{stage}.{key}"] = steps
    spec_data["overrides"]["pretrain.snapshot_every"] = 2
    spec_data["overrides"]["mask.block_size"] = 4
    spec_data["overrides"]["evaluate.overlap"] = 0.25
    spec_data["axes"] = {}  # one pretrained configuration against scratch: 3 runs
    spec_data["pretrain_data"] = {"synthetic": {"subjects": 2, "seed": 0, "spacing_mm": 5.0}}
    spec_data["datasets"] = [{"name": "synthA", "synthetic": {"labelled": 3, "seed": 1}}]
    spec_data["datasets"][0]["synthetic"]["spacing_mm"] = 5.0
print(yaml.safe_dump(spec_data, sort_keys=False))
spec = parse_sweep_spec(spec_data, source=EXAMPLE)

# %% [markdown]
# ## Dry run: the runs and what they cost
# Names are built from the axis values, so a run's folder says what it is. Times are measured:
# a couple of training steps per distinct network / mask variant / patch / batch on this machine,
# times the planned steps (preprocessing and evaluation not included).

# %%
plan = expand_sweep(spec, WORK)
print(format_estimates(estimate_sweep(plan, measure_steps=1), measure_steps=1))

# %% [markdown]
# ## Run it
# Each run writes `config.yaml` first and `done.json` last. Interrupt the cell (or create a
# `STOP` file in a run folder) and run it again: finished runs are skipped, an interrupted one
# continues from its last checkpoint, and a run that crashes is retried once and then listed in
# `failures.csv` with the runs it blocks — never dropped silently.

# %%
report = run_sweep(spec, WORK, progress=True)
print("\n".join(report.lines()))

# %% [markdown]
# ## The results table
# One row per fine-tuning run × test case × label: every swept field as a column (empty where it
# does not apply, e.g. the mask ratio of a scratch run), the arm, dataset and seed, Dice, HD95,
# parameters and training time. It is `results.csv` in the sweep folder; `load_results` reads the
# run folders afresh, so it also works on a sweep that is still running.

# %%
table = load_results(WORK)
display(table.head())

# %% [markdown]
# ## The paper's table: mean Dice per dataset, mean rank, difference to scratch
# Per dataset, configurations are ranked by their mean Dice (1 = best; ties share the average of
# their ranks); the mean rank averages those ranks over datasets. `diff` is the mean difference to
# the scratch baseline, paired by dataset and seed (`diff_std`: its spread over seeds).

# %%
summary = summary_table(table, "dice", baseline="scratch")
print(dataframe_to_markdown(summary))

# %% [markdown]
# ## The ablation explorer
# Choose the x axis, hue and facet among the swept fields (and config, arm, dataset, seed,
# structure), the metric, the aggregation (mean over runs with their spread, or mean rank), and
# filter any field. The table under the plot is what the plot shows; *export* writes both.
# *Reload* re-reads the sweep folder — useful while a sweep is still running.

# %%
explorer = AblationExplorer(WORK)  # x: the first swept field, hue: the second (or the arm)
display(explorer)

# %% [markdown]
# The controls are ordinary widgets: code can set them too. Here: mean rank of the pretrained
# configurations against the mask ratio, then the plot and its table exported.

# %%
explorer.filters["arm"].value = ("pretrained",)
explorer.aggregation.value = "mean rank"
png, csv = explorer.export(WORK / "explorer")
print(f"exported {png.name} and {csv.name}")
display(explorer.summary)

# %% [markdown]
# Without a live kernel (a rendered notebook, CI) the widgets do not draw; the figure they hold is
# an ordinary matplotlib figure:

# %%
show_figures([explorer.figure])
