"""One ``mae3d manifest check`` run over the generated defect corpus (issue 10, item 6).

The run names every defect, flags no control, prints no traceback and exits 1; the same corpus
without its defects checks clean (exit 0, only the documented anisotropy warning of the
0.1 x 0.1 x 10 mm control). The counts are printed (``pytest -s``) and recorded as junit
properties, so they can be quoted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.data.corpus import Corpus, build_corpus, score_report

FAMILIES = {"header", "voxels", "geometry", "labels", "pairing", "dataset", "naming"}


def _check(corpus: Corpus) -> tuple[int, str]:
    """Run the real command line once over every manifest of the corpus, from its folder."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    env.pop("MAE3D_MAX_VOXELS", None)
    argv = [sys.executable, "-m", "toolkit.cli", "manifest", "check", "--no-progress"]
    argv += [str(m.relative_to(corpus.root)) for m in corpus.manifests]
    done = subprocess.run(
        argv, cwd=corpus.root, env=env, capture_output=True, text=True, encoding="utf-8"
    )
    return done.returncode, done.stdout + done.stderr


def test_one_check_names_every_defect_and_no_control(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    corpus = build_corpus(tmp_path)
    assert len(corpus.defects) >= 40 and len(corpus.controls) >= 10
    assert {d.family for d in corpus.defects} == FAMILIES
    code, output = _check(corpus)
    score = score_report(corpus, output)
    print(f"\ncorpus: {score.summary()}, exit code {code}")
    print("defects per family:", dict(sorted(Counter(d.family for d in corpus.defects).items())))
    for key in ("defects_named", "defects_made", "controls_clean", "controls_made", "tracebacks"):
        record_property(key, getattr(score, key))
    assert score.missed == (), "\n".join(
        [f"not named: {d}" for d in score.missed] + ["--- report:", output]
    )
    assert score.flagged == (), "\n".join(f"{c.name}: {line}" for c, line in score.flagged)
    assert score.tracebacks == 0 and "Traceback" not in output
    assert code == 1
    errors = [line for line in output.splitlines() if line and not line.startswith("warning: ")]
    assert errors[-1].endswith("warning(s) found")


def test_the_corpus_without_defects_checks_clean(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path, defects=False)
    assert corpus.defects == [] and len(corpus.controls) >= 10
    code, output = _check(corpus)
    score = score_report(corpus, output)
    print(f"\nclean corpus: {score.summary()}, exit code {code}")
    assert score.flagged == () and score.tracebacks == 0, output
    assert code == 0, output
    lines = output.splitlines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 2 and all("case ctl_thin_slices: " in w for w in warnings), output
    assert lines[-1].startswith("2 manifests, ") and ", 0 problems, 2 warnings (" in lines[-1]


def test_the_score_can_fail(tmp_path: Path) -> None:
    """score_report is not a test that cannot fail: a missing line or a stray one is counted."""
    corpus = build_corpus(tmp_path)
    d = corpus.defects[0]
    named = f"{d.manifest}: case {d.case}: file {d.file}: {d.expected}"
    score = score_report(corpus, named)
    assert score.defects_named == 1 and len(score.missed) == score.defects_made - 1
    assert score_report(corpus, "warning: " + named).defects_named == 0  # wrong severity
    c = corpus.controls[0]
    stray = f"corpus: case {c.case}: file {c.files[0]}: image is zero everywhere"
    score = score_report(corpus, stray + "\nTraceback (most recent call last):")
    assert score.controls_clean == score.controls_made - 1 and score.flagged[0][0] is c
    assert score.tracebacks == 1
