"""``mae3d manifest check`` and ``mae3d manifest import nnunet|nnssl|folder``.

``check`` prints one line per problem and per warning; any problem: exit code 1; warnings alone:
the warnings, then one summary line, exit code 0.
``import`` prints the manifest as YAML, with an absolute root, or with ``--out FILE`` writes it
atomically with the root relative to the file's folder. It lists every problem it finds, one line
each on stderr, then a summary line (imported, skipped and problem cases); with a problem it writes
nothing and exits 1, unless ``--keep-going`` (then the fine cases are written, exit 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from toolkit.cli.app import manifest_app

if TYPE_CHECKING:
    from toolkit.data.importers import ImportReport

import_app = typer.Typer(
    help="Make a manifest from an nnU-Net raw folder, an nnssl pretrain_data.json or a glob.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
manifest_app.add_typer(import_app, name="import")

_OUT = typer.Option(
    "--out",
    "-o",
    help="write the manifest here (root relative to this file) instead of printing it",
    dir_okay=False,
)
_FORCE = typer.Option("--force", help="overwrite --out if it exists")
_KEEP_GOING = typer.Option(
    "--keep-going",
    help="write the manifest of the fine cases even when others have problems (still listed)",
)
_ALLOW_OUTSIDE = typer.Option(
    "--allow-outside-root",
    help="accept paths that lead outside the dataset folder (../, absolute paths elsewhere)",
)


@manifest_app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="manifest files (YAML)", dir_okay=False)],
    pretrain: Annotated[
        list[Path] | None,
        typer.Option(
            "--pretrain",
            "-p",
            help="also a pretraining set (labelled manifests used without labels); repeatable",
            dir_okay=False,
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="threads reading files")
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar for many files")] = True,
    max_voxels: Annotated[
        int | None,
        typer.Option(
            "--max-voxels",
            min=1,
            help="largest voxel count a file may claim (default $MAE3D_MAX_VOXELS or 2**31)",
        ),
    ] = None,
) -> None:
    """Check manifests and all their files; print every problem and warning, one per line.

    Exit code 1 when there is any problem; warnings alone (anisotropy, no orientation, declared
    classes that never occur) keep exit code 0.
    """
    from toolkit.data.manifest import load_manifest
    from toolkit.data.validate import check_manifests, describe_manifests

    found = check_manifests(
        files,
        pretrain=pretrain,
        num_workers=workers,
        progress=progress,
        max_voxels=max_voxels,
        warnings=True,
    )
    for problem in found:
        typer.echo(str(problem))
    num_warnings = sum(p.is_warning for p in found)
    num_errors = len(found) - num_warnings
    if num_errors:
        also = f" and {num_warnings} warning(s)" if num_warnings else ""
        typer.echo(f"{num_errors} problem(s){also} found", err=True)
        raise typer.Exit(1)
    unique = list(dict.fromkeys(p.resolve() for p in [*files, *(pretrain or [])]))
    typer.echo(describe_manifests([load_manifest(p) for p in unique], 0, num_warnings))


@import_app.command("nnunet")
def import_nnunet_command(
    dataset_dir: Annotated[
        Path,
        typer.Argument(help="nnU-Net raw folder holding dataset.json", file_okay=False),
    ],
    out: Annotated[Path | None, _OUT] = None,
    force: Annotated[bool, _FORCE] = False,
    keep_going: Annotated[bool, _KEEP_GOING] = False,
    allow_outside_root: Annotated[bool, _ALLOW_OUTSIDE] = False,
) -> None:
    """Manifest of an nnU-Net raw dataset (imagesTr -> train, imagesTs -> test)."""
    from toolkit.data.importers import scan_nnunet

    _check_out(out, force)
    _emit(scan_nnunet(dataset_dir, allow_outside_root=allow_outside_root), out, keep_going)


@import_app.command("nnssl")
def import_nnssl_command(
    json_path: Annotated[Path, typer.Argument(help="nnssl pretrain_data.json", dir_okay=False)],
    out: Annotated[Path | None, _OUT] = None,
    force: Annotated[bool, _FORCE] = False,
    keep_going: Annotated[bool, _KEEP_GOING] = False,
    allow_outside_root: Annotated[bool, _ALLOW_OUTSIDE] = False,
) -> None:
    """Manifest of an nnssl pretrain_data.json (one case per image, unlabelled)."""
    from toolkit.data.importers import scan_nnssl

    _check_out(out, force)
    _emit(scan_nnssl(json_path, allow_outside_root=allow_outside_root), out, keep_going)


@import_app.command("folder")
def import_folder_command(
    pattern: Annotated[str, typer.Argument(help="glob of NIfTI files, quoted; ** recurses")],
    name: Annotated[str, typer.Option("--name", "-n", help="dataset name")],
    out: Annotated[Path | None, _OUT] = None,
    force: Annotated[bool, _FORCE] = False,
    keep_going: Annotated[bool, _KEEP_GOING] = False,
) -> None:
    """Manifest of unlabelled NIfTI files matching a glob (subject from the file name)."""
    from toolkit.data.importers import scan_folder

    _check_out(out, force)
    _emit(scan_folder(pattern, name), out, keep_going)


def _check_out(out: Path | None, force: bool) -> None:
    from toolkit.errors import ManifestError

    if out is not None and out.exists() and not force:
        raise ManifestError(f"{out}: already exists (use --force to overwrite)")


def _emit(report: ImportReport, out: Path | None, keep_going: bool) -> None:
    """Problem lines and the summary on stderr (stdout may carry the YAML); exit 1 if unwritten."""
    import yaml

    from toolkit.data.importers import rebase_root
    from toolkit.data.manifest import manifest_to_dict, save_manifest

    for problem in report.problems:
        typer.echo(str(problem), err=True)
    manifest = report.manifest
    if manifest is None or not (report.ok or keep_going):
        if manifest is None:
            why = "the problems above leave no manifest to write"
        else:
            why = "fix the problems, or pass --keep-going to write the fine cases only"
        typer.echo(f"{report.summary()}; nothing written: {why}", err=True)
        raise typer.Exit(1)
    if out is None:
        typer.echo(yaml.safe_dump(manifest_to_dict(manifest), sort_keys=False), nl=False)
        where = "printed"
    else:
        save_manifest(rebase_root(manifest, out), out)
        where = f"wrote {out}"
    note = "" if report.ok else "; --keep-going: the problem cases are left out"
    check = f"; check it with: mae3d manifest check {out}" if out is not None else ""
    typer.echo(f"{report.summary(written=True)}; {where}{note}{check}", err=True)
