"""Ablation sweeps: a grid over config fields, expanded into resumable pretrain/fine-tune runs.

The package follows the life of a sweep, one idea per module:

* :mod:`~toolkit.sweep.spec` — the YAML spec (base config, axes, data, seeds) and its checks;
* :mod:`~toolkit.sweep.plan` — expansion into runs: pretraining once per pretraining config, its
  fine-tuning runs depending on it, deterministic folder names;
* :mod:`~toolkit.sweep.execute` — what one run does (pretrain, or fine-tune and evaluate) and how
  an attempt is recorded;
* :mod:`~toolkit.sweep.executors` — where runs run: ``inline`` (default), ``local`` subprocesses
  or ``slurm`` jobs, both through submitit;
* :mod:`~toolkit.sweep.runner` — :func:`run_sweep`, the loop over runs (dependencies, retries,
  ``max_parallel``);
* :mod:`~toolkit.sweep.status` — run states, ``status.csv``, ``failures.csv``, ``report.md``;
* :mod:`~toolkit.sweep.estimate` — the dry run's time estimates;
* :mod:`~toolkit.sweep.layout` — file names and readers of the folder, the one interface
  :mod:`toolkit.results` uses (so results and sweeps do not import each other).

**Layout of the sweep folder** (run names are built from the axis values)::

    SWEEP_DIR/spec.yaml  plan.json  status.csv  failures.csv  report.md  results.csv
    SWEEP_DIR/data/<name>/           synthetic data sets (written once)
    SWEEP_DIR/cache/<manifest>/      preprocessed caches shared by every run
    SWEEP_DIR/jobs/                  submitit's job files (local and slurm executors)
    SWEEP_DIR/pt_mask.ratio=0.6_mask.variant=s3d/             a pretraining run
    SWEEP_DIR/ft_<dataset>_pt_mask.ratio=0.6_mask.variant=s3d_seed0/   fine-tuning + evaluation
    SWEEP_DIR/ft_<dataset>_scratch_seed0/                     the from-scratch baseline

Each run folder holds its ``config.yaml`` (written before it starts), ``attempts.jsonl`` (one line
per attempt, with the error of a failed one) and, written last, ``done.json``. Rerunning a sweep
skips runs with ``done.json``, resumes an interrupted run from its ``latest`` checkpoint, and
retries a failed run once per invocation; a run that still fails is listed in ``failures.csv``
(with the fine-tuning runs it blocks), never dropped silently. A run whose saved config differs
from the spec is an error, so one folder never mixes two versions of a sweep.

Example:
    >>> spec = load_sweep_spec("data_manifests/sweeps/example_mask_ratio.yaml")  # doctest: +SKIP
    >>> plan = expand_sweep(spec, "sweeps/mask_ratio")  # doctest: +SKIP
    >>> len(plan.pretrain_runs), len(plan.finetune_runs)  # doctest: +SKIP
    (8, 18)
    >>> report = run_sweep(spec, "sweeps/mask_ratio")  # doctest: +SKIP
    >>> report = run_sweep(spec, "sweeps/mask_ratio",
    ...                    jobs=JobOptions(executor="local", max_parallel=2))  # doctest: +SKIP
"""

from toolkit.sweep.estimate import RunEstimate, estimate_sweep, format_duration, format_estimates
from toolkit.sweep.execute import (
    RunExecutor,
    RunStopped,
    attempt_run,
    count_checkpoint_parameters,
    execute_run,
    prepare_caches,
    prepare_data,
)
from toolkit.sweep.executors import EXECUTORS, JobOptions, sbatch_script, slurm_parameters
from toolkit.sweep.layout import (
    ATTEMPTS_FILE,
    CONFIG_FILE,
    DATA_DIR,
    DONE_FILE,
    EVAL_DIR,
    EVAL_METRICS,
    FAILURES_FILE,
    JOBS_DIR,
    PLAN_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    SPEC_FILE,
    STATUS_FILE,
    format_value,
    read_attempts,
    read_done,
)
from toolkit.sweep.plan import Run, SweepPlan, expand_sweep
from toolkit.sweep.runner import run_sweep
from toolkit.sweep.spec import (
    FINETUNE_SECTIONS,
    DatasetSpec,
    PretrainData,
    SweepSpec,
    SyntheticData,
    get_field,
    is_finetune_field,
    load_sweep_spec,
    parse_sweep_spec,
)
from toolkit.sweep.status import (
    SweepReport,
    check_existing_configs,
    run_state,
    view_command,
    write_status,
)

__all__ = [
    "ATTEMPTS_FILE",
    "CONFIG_FILE",
    "DATA_DIR",
    "DONE_FILE",
    "EVAL_DIR",
    "EVAL_METRICS",
    "EXECUTORS",
    "FAILURES_FILE",
    "FINETUNE_SECTIONS",
    "JOBS_DIR",
    "PLAN_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SPEC_FILE",
    "STATUS_FILE",
    "DatasetSpec",
    "JobOptions",
    "PretrainData",
    "Run",
    "RunEstimate",
    "RunExecutor",
    "RunStopped",
    "SweepPlan",
    "SweepReport",
    "SweepSpec",
    "SyntheticData",
    "attempt_run",
    "check_existing_configs",
    "count_checkpoint_parameters",
    "estimate_sweep",
    "execute_run",
    "expand_sweep",
    "format_duration",
    "format_estimates",
    "format_value",
    "get_field",
    "is_finetune_field",
    "load_sweep_spec",
    "parse_sweep_spec",
    "prepare_caches",
    "prepare_data",
    "read_attempts",
    "read_done",
    "run_state",
    "run_sweep",
    "sbatch_script",
    "slurm_parameters",
    "view_command",
    "write_status",
]
