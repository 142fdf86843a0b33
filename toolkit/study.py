"""Pieces every comparison study shares: stage timing, verdicts, tables and its output folder.

The demo (:mod:`toolkit.demo`) and benchmarks that compare a pretrained arm with a from-scratch
arm over a few seeds need the same small tools:

* :class:`StageTimer` — wall and CPU seconds per named stage (on a shared machine the CPU time,
  not the wall time, says what a stage costs);
* :func:`verdict` — words for a difference judged against its seed spread;
* :func:`format_pm` — ``mean ± sd``, or the mean alone when there is no spread (one seed);
* :func:`dice_table` / :func:`format_dice_table` — per-arm mean Dice ± sd over seeds, and the
  difference pretrained - scratch;
* :func:`write_json` — atomic JSON with NaN written as ``null``;
* :func:`claim_folder` — record a study's settings in its folder, refuse one made with others.

Example:
    >>> verdict(0.05, 0.01, "pretrained", "scratch")
    'pretrained ahead'
    >>> format_pm(0.5, float("nan"))
    '0.500'
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.config import Config

PathLike = str | os.PathLike[str]

#: The two arms of a transfer study, in table order.
ARMS = ("pretrained", "scratch")
#: File in a study folder that records the settings it was made with.
SETTINGS_FILE = "demo_settings.json"


class StageTimer:
    """Wall and CPU seconds per stage (CPU time of this process: run the stages in it).

    Example:
        >>> timer = StageTimer(echo=lambda line: None)
        >>> with timer.stage("work"):
        ...     _ = sum(range(1000))
        >>> list(timer.seconds) == list(timer.cpu_seconds) == ["work"]
        True
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        """Args:
        echo: where the ``== stage`` and timing lines go.
        """
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.echo = echo

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (recorded even if it raises)."""
        self.echo(f"== {name}")
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            self.cpu_seconds[name] = time.process_time() - start_cpu
            self.echo(
                f"   {name}: {self.seconds[name]:.0f} s wall, {self.cpu_seconds[name]:.0f} s CPU"
            )

    def markdown(self, total_seconds: float, total_cpu_seconds: float) -> str:
        """A Markdown table of the stages' wall and CPU seconds with a total row."""
        rows = [
            f"| {k} | {v:.0f} | {self.cpu_seconds.get(k, math.nan):.0f} |"
            for k, v in self.seconds.items()
        ]
        return (
            "| stage | wall s | CPU s |\n|---|---:|---:|\n"
            + "\n".join(rows)
            + f"\n| **total** | **{total_seconds:.0f}** | **{total_cpu_seconds:.0f}** |"
        )


def verdict(difference: float, spread: float, ahead: str, behind: str) -> str:
    """Words for ``difference`` = ahead - behind judged against the seed sd ``spread``.

    Args:
        difference: e.g. pretrained - scratch mean Dice (NaN if a run diverged).
        spread: the seed standard deviation to judge it by (NaN with one seed).
        ahead: name of the first term.
        behind: name of the second term.

    Returns:
        ``"<ahead> ahead"`` / ``"<behind> ahead"`` when ``|difference|`` exceeds ``spread``,
        ``"within the seed spread"`` otherwise, or why it cannot be judged.

    Example:
        >>> verdict(-0.02, 0.05, "pretrained", "scratch")
        'within the seed spread'
        >>> verdict(0.1, float("nan"), "pretrained", "scratch")
        'one seed, so no spread to judge it by'
    """
    if math.isnan(difference):
        return "not comparable (a run diverged)"
    if math.isnan(spread):
        return "one seed, so no spread to judge it by"
    if abs(difference) <= spread:
        return "within the seed spread"
    return f"{ahead} ahead" if difference > 0 else f"{behind} ahead"


def format_pm(mean: float, sd: float, *, sign: bool = False, digits: int = 3) -> str:
    """``mean ± sd``, or ``mean`` alone when ``sd`` is NaN (one seed: no spread to show).

    Example:
        >>> format_pm(0.1234, 0.01, sign=True)
        '+0.123 ± 0.010'
    """
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text if math.isnan(sd) else f"{text} ± {sd:.{digits}f}"


def dice_table(metrics: pd.DataFrame, arms: Sequence[str] = ARMS) -> pd.DataFrame:
    """Mean Dice per test set and label for each arm, its spread over seeds, and the difference.

    Each seed's Dice is first averaged over test cases; the table gives the mean and standard
    deviation of those per-seed values (NaN with one seed: there is no spread), plus a ``mean``
    row per test set (averaged over labels too) and ``difference`` = first arm - second arm.

    Args:
        metrics: tidy evaluation rows with columns ``dataset``, ``label_name``, ``arm``, ``dice``
            and optionally ``seed``.
        arms: the arms in column order; the difference is ``arms[0] - arms[1]``.

    Returns:
        Columns ``dataset``, ``label``, then ``<arm>`` and ``<arm>_sd`` per arm present,
        ``difference`` when both of the first two arms are.
    """
    import pandas as pd

    df = metrics if "seed" in metrics.columns else metrics.assign(seed=0)
    per_label = df.groupby(["dataset", "label_name", "arm", "seed"], sort=False)["dice"].mean()
    per_set = df.groupby(["dataset", "arm", "seed"], sort=False)["dice"].mean()
    per_set = per_set.reset_index().assign(label_name="mean")
    seeds = pd.concat([per_label.reset_index(), per_set], ignore_index=True)
    stats = seeds.groupby(["dataset", "label_name", "arm"], sort=False)["dice"].agg(["mean", "std"])
    wide = stats["mean"].unstack("arm")
    spread = stats["std"].unstack("arm").add_suffix("_sd")
    table = pd.concat([wide, spread], axis=1).reset_index()
    table = table.sort_values("dataset", kind="stable").reset_index(drop=True)
    present = [a for a in arms if a in wide.columns]
    ordered = ["dataset", "label_name"] + [c for a in present for c in (a, f"{a}_sd")]
    table = table[ordered]
    if len(arms) >= 2 and {arms[0], arms[1]} <= set(present):
        table["difference"] = table[arms[0]] - table[arms[1]]
    return table.rename(columns={"label_name": "label"})


def format_dice_table(table: pd.DataFrame, arms: Sequence[str] = ARMS) -> str:
    """:func:`dice_table` as Markdown with ``mean ± sd`` cells (the mean alone with one seed)."""
    present = [a for a in arms if a in table.columns]
    header = ["test set", "label", *present] + (["difference"] if "difference" in table else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in table.to_dict(orient="records"):
        cells = [str(row["dataset"]), str(row["label"])]
        cells += [format_pm(row[a], row[f"{a}_sd"]) for a in present]
        if "difference" in row:
            cells.append(f"{row['difference']:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (a temporary file, then a rename).

    Non-finite floats become ``null`` (strict JSON has no NaN); other non-JSON values are
    written as their ``str``.

    Returns:
        The path written.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    plain = json.loads(json.dumps(data, default=str))  # numpy scalars etc. -> plain values
    text = json.dumps(_jsonable(plain), indent=1, allow_nan=False, ensure_ascii=False)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    return target


def claim_folder(out: PathLike, settings: Any, name: str = SETTINGS_FILE) -> None:
    """Record ``settings`` in folder ``out``; refuse a folder made with other settings.

    Finished runs in a study folder are reused (an interrupted study continues), which is only
    right when they were made with the same settings.

    Args:
        out: the study folder (created if missing).
        settings: a dataclass or a JSON-able mapping.
        name: the settings file inside ``out``.

    Raises:
        ConfigError: ``out`` holds a study with different settings.
    """
    folder = Path(out)
    is_instance = is_dataclass(settings) and not isinstance(settings, type)
    raw = asdict(settings) if is_instance else settings
    wanted = _jsonable(json.loads(json.dumps(raw, default=str)))
    path = folder / name
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if found != wanted:
            raise ConfigError(
                f"--out: {folder} holds a study made with other settings ({path}); choose another "
                "folder or delete it"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)


def write_study_data(
    out: PathLike,
    *,
    num_pretrain_subjects: int,
    num_labelled: int,
    data_seed: int,
    spacing_mm: float,
    test_fraction: float,
    name: str,
    progress: bool = False,
) -> dict[str, Path]:
    """Synthetic pretraining and labelled subjects plus the MNI152 case, checked.

    Returns:
        Manifest paths keyed ``pretrain``, ``labelled`` and ``mni152``.

    Raises:
        DataError: the written data fail :func:`toolkit.data.validate.check_manifests`.
    """
    from toolkit.data.mni import write_mni152_case
    from toolkit.data.synthetic import write_synthetic_dataset
    from toolkit.data.validate import check_manifests
    from toolkit.errors import DataError

    folder = Path(out)
    paths = write_synthetic_dataset(
        folder,
        num_pretrain_subjects,
        num_labelled,
        data_seed,
        spacing_mm=spacing_mm,
        test_fraction=test_fraction,
        name=name,
        workers=1,
        progress=progress,
    )
    manifests = {
        "pretrain": paths["pretrain"],
        "labelled": paths["labelled"],
        "mni152": write_mni152_case(folder),
    }
    problems = check_manifests(list(manifests.values()), progress=False)
    if problems:
        raise DataError(
            f"{folder}: generated data failed the manifest check:\n" + "\n".join(map(str, problems))
        )
    return manifests


def preprocess_all(
    manifests: Mapping[str, Path], cache_root: PathLike, cfg: Config, *, progress: bool = False
) -> None:
    """Preprocess every manifest into ``cache_root/<manifest name>`` with ``cfg.data``'s plan."""
    from toolkit.data.manifest import load_manifest
    from toolkit.data.preprocess import preprocess_manifest

    for path in manifests.values():
        manifest = load_manifest(path)
        preprocess_manifest(
            manifest,
            Path(cache_root) / manifest.name,
            target_spacing_mm=cfg.data.target_spacing_mm,
            image_order=cfg.data.image_order,
            workers=0,
            progress=progress,
        )


__all__ = [
    "preprocess_all",
    "write_study_data",
    "ARMS",
    "SETTINGS_FILE",
    "StageTimer",
    "claim_folder",
    "dice_table",
    "format_dice_table",
    "format_pm",
    "verdict",
    "write_json",
]
