"""The typer application object; command modules in this package attach their commands to it.

Heavy imports (torch, nibabel, ...) happen inside command functions so ``mae3d --help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mae3d",
    help="MAE pretraining and fine-tuning of 3D U-Nets on brain MRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    # a fixed width so `mae3d --help` shows each command's first sentence whole, tty or not
    context_settings={"terminal_width": 120, "max_content_width": 120},
)
manifest_app = typer.Typer(
    help="Validate dataset manifests and import nnU-Net / nnssl / folders.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(manifest_app, name="manifest")
