"""What a corpus promises: its defects and controls, and how a report is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SHAPE = (8, 8, 8)
DATASET = "Dataset999_Corpus"
CHANNELS = ("T1", "T2")
LABELS = {0: "background", 1: "csf", 2: "gm"}
MAIN = "corpus"
PRETRAIN = "Pretrain"


@dataclass(frozen=True)
class Defect:
    """One defect and the report line that must name it.

    Attributes:
        name: unique name (also the case id when the defect is about one case).
        family: header, voxels, geometry, labels, pairing, dataset or naming.
        expected: fragment of the message.
        manifest: the manifest name (or file, for manifests that cannot be loaded) the line starts
            with.
        case: the case id in the line, or None for manifest-level lines.
        file: path relative to the corpus folder that the line names, or None.
        severity: ``"error"`` or ``"warning"``.
    """

    name: str
    family: str
    expected: str
    manifest: str = MAIN
    case: str | None = None
    file: str | None = None
    severity: str = "error"


@dataclass(frozen=True)
class Control:
    """A valid but unusual case: it must get no error line and only the warnings it allows."""

    name: str
    case: str
    files: tuple[str, ...]
    allowed_warnings: tuple[str, ...] = ()


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote: folders, manifests (check them all in one run), records."""

    root: Path
    dataset_dir: Path
    manifests: list[Path]
    defects: list[Defect] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)


@dataclass(frozen=True)
class Score:
    """How a report fared against a corpus."""

    defects_named: int
    defects_made: int
    controls_clean: int
    controls_made: int
    tracebacks: int
    missed: tuple[Defect, ...]
    flagged: tuple[tuple[Control, str], ...]

    def summary(self) -> str:
        return (
            f"defects named {self.defects_named}/{self.defects_made}, controls clean "
            f"{self.controls_clean}/{self.controls_made}, tracebacks {self.tracebacks}"
        )


# --------------------------------------------------------------------------------------------------
# Scoring a report


def score_report(corpus: Corpus, output: str) -> Score:
    """Compare the printed report of one check run (stdout + stderr) with the corpus.

    A defect is named when one line starts with its manifest (after ``"warning: "`` for
    warnings), names its case (``"case ID: "``) and file, and holds its fragment. A control is
    flagged by any error line naming its case or one of its files, or any warning about it that
    is not in :attr:`Control.allowed_warnings`.
    """
    lines = output.splitlines()

    def names(d: Defect, line: str) -> bool:
        prefix = "warning: " if d.severity == "warning" else ""
        if not line.startswith(prefix + d.manifest + ":"):
            return False
        if d.case is not None and f": case {d.case}: " not in line:
            return False
        if d.file is not None and f": file {d.file}: " not in line:
            return False
        return d.expected in line

    missed = tuple(d for d in corpus.defects if not any(names(d, line) for line in lines))
    flagged: list[tuple[Control, str]] = []
    for c in corpus.controls:
        for line in lines:
            about = f": case {c.case}: " in line or any(f": file {f}: " in line for f in c.files)
            if not about:
                continue
            if line.startswith("warning: ") and any(a in line for a in c.allowed_warnings):
                continue
            flagged.append((c, line))
    flagged_names = {c.name for c, _ in flagged}
    return Score(
        defects_named=len(corpus.defects) - len(missed),
        defects_made=len(corpus.defects),
        controls_clean=sum(c.name not in flagged_names for c in corpus.controls),
        controls_made=len(corpus.controls),
        tracebacks=output.count("Traceback (most recent call last)"),
        missed=missed,
        flagged=tuple(flagged),
    )
