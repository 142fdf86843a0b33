"""The guided notebooks: each runs top to bottom at ``TOOLKIT_PROFILE=tiny``; sources stay paired.

The jupytext ``py:percent`` files are the source of truth (notebooks/README.md); the ``.ipynb``
next to each must hold the same cells and no outputs. Execution uses the ``.py`` source through
jupytext and nbclient, in a temporary working folder, with the inline viewer (no napari windows),
and fails on the first cell that raises.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
#: The tutorials this suite must find (06_ablations belongs to the ablation explorer).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
EXPECTED = ["01_quickstart", "02_masking", "03_pretraining", "04_reconstructions", "05_finetuning"]


def _cells(notebook: object) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in notebook.cells]  # type: ignore[attr-defined]


def test_every_tutorial_is_there() -> None:
    names = [p.stem for p in SOURCES]
    assert [n for n in EXPECTED if n not in names] == []


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_ipynb_is_paired_and_stripped(source: Path) -> None:
    ipynb = source.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run `jupytext --update --to ipynb {source}`"
    paired = jupytext.read(ipynb)
    assert _cells(paired) == _cells(jupytext.read(source)), (
        f"{ipynb.name} differs from {source.name}: run `jupytext --update --to ipynb {source}`"
    )
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{ipynb.name}: outputs"


def test_first_cell_is_a_title_with_what_you_will_learn() -> None:
    for source in SOURCES:
        first = jupytext.read(source).cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), source.name
        assert "learn" in first.source, f"{source.name}: say what the reader will learn"


@pytest.mark.parametrize(
    "source",
    SOURCES,
    ids=[p.stem for p in SOURCES],
)
def test_notebook_runs_top_to_bottom(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TOOLKIT_PROFILE", "tiny")
    monkeypatch.setenv("MAE3D_VIEWER", "inline")
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOKS.parent))  # the kernel imports this checkout
    notebook = jupytext.read(source)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nnotebook {source.stem}: {seconds:.0f} s at TOOLKIT_PROFILE=tiny")
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors
    shown = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if {"image/png", WIDGET_VIEW} & set(o.get("data", {}))
    ]
    assert shown, f"{source.name} displayed neither a figure nor a widget"
