"""The end-to-end demo (``make demo`` / ``mae3d demo``), split along its ideas.

* :mod:`toolkit.demo.settings` — :class:`DemoSettings`, :data:`QUICK`, the configs they make;
* :mod:`toolkit.demo.run` — :func:`run_demo`, the stages (see its docstring);
* :mod:`toolkit.demo.findings` — the sentences written from the numbers (in-fill check, probe
  gap, Dice findings) and the summary they lead;
* :mod:`toolkit.demo.report` — ``report.md``.

Timing, verdicts, the Dice table and the folder claim are shared with other studies in
:mod:`toolkit.study` (re-exported here for old imports).

Example:
    >>> from toolkit.demo import QUICK, settings_with
    >>> settings_with(QUICK, pretrain_steps=8).pretrain_patch
    40
"""

from toolkit.demo.findings import (
    contrast_finding,
    infill_finding,
    probe_finding,
    summary_lines,
    table_findings,
)
from toolkit.demo.report import write_demo_report
from toolkit.demo.run import DemoResult, run_demo
from toolkit.demo.settings import (
    DATASET_NAME,
    QUICK,
    DemoSettings,
    demo_config,
    finetune_config,
    settings_with,
)
from toolkit.study import ARMS, dice_table, format_dice_table

__all__ = [
    "ARMS",
    "DATASET_NAME",
    "QUICK",
    "DemoResult",
    "DemoSettings",
    "contrast_finding",
    "demo_config",
    "dice_table",
    "finetune_config",
    "format_dice_table",
    "infill_finding",
    "probe_finding",
    "run_demo",
    "settings_with",
    "summary_lines",
    "table_findings",
    "write_demo_report",
]
