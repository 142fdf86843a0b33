"""A generated defect corpus for ``mae3d manifest check`` (issue 10, item 6).

:func:`build_corpus` writes, under one folder, an nnU-Net raw dataset (``Dataset999_Corpus`` with
``dataset.json``, ``imagesTr``/``labelsTr``, and ``imagesTs``/``labelsTs`` for the test cases)
holding tiny 8³ volumes, and the manifests that list it (written directly, not through an
importer):

- ``corpus.yaml``: the labelled two-channel (T1, T2) dataset: good cases, valid-but-unusual
  controls and, with ``defects=True``, one case (or file) per defect;
- ``pretrain.yaml``: an unlabelled pretraining set in ``Pretrain/`` (leakage target; with
  ``defects=True`` one case with a label file);
- with ``defects=True`` also ``gaps.yaml`` (declared labels 0, 1, 3: not consecutive, 3 never
  occurs), ``broken.yaml`` (schema error) and ``noroot.yaml`` (data root missing).

Every :class:`Defect` says which line must name it (manifest, case, file, message fragment,
severity); every :class:`Control` lists its case and files and the warnings it may get. Decision
documented here and in the test: the 0.1 × 0.1 × 10 mm control *is* extremely anisotropic, so it
may carry the anisotropy warning (a warning keeps exit code 0) and nothing else; any error line
or other warning about a control counts as flagging it.

:func:`score_report` reads the printed report and counts defects named / made, controls clean /
made and tracebacks, so a test (or the lead, combining this with an importer run) can quote them.
Some defects live only in the manifests, because an nnU-Net folder cannot express them: subjects
(split and pretraining leakage), duplicate ids and an id with ``/``, a label file that is an image,
and everything in ``gaps.yaml``, ``broken.yaml``, ``noroot.yaml`` and ``pretrain.yaml`` (which
also holds the ``.nii`` files a ``.nii.gz`` dataset cannot). An importer run over the folder meets,
on purpose, layout defects it should name itself (a ``.mha`` file, a folder named like an image, a
missing image, labels without images, files differing only in letter case); with
``--keep-going`` it leaves those cases out and the check names the rest.
Nothing here allocates more than a few kB: the oversized headers come with 2 kB of data.

Modules: ``records`` (Defect, Control, Corpus, Score, score_report), ``nifti`` (file writers),
``writer`` (the collector and the manifest / dataset.json writers), ``controls``, ``defects``.

Example:
    >>> corpus = build_corpus(tmp_path)  # doctest: +SKIP
    >>> out = run("mae3d manifest check " + " ".join(map(str, corpus.manifests)))  # doctest: +SKIP
    >>> score_report(corpus, out).summary()  # doctest: +SKIP
    'defects named 61/61, controls clean 17/17, tracebacks 0'
"""

from __future__ import annotations

from pathlib import Path

from tests.data.corpus.controls import add_controls
from tests.data.corpus.defects import (
    dataset_defects,
    geometry_defects,
    header_defects,
    label_defects,
    pairing_and_naming_defects,
    voxel_defects,
)
from tests.data.corpus.nifti import image, label, raw_nifti, save
from tests.data.corpus.records import (
    DATASET,
    LABELS,
    MAIN,
    PRETRAIN,
    SHAPE,
    Control,
    Corpus,
    Defect,
    Score,
    score_report,
)
from tests.data.corpus.writer import Writer, write_dataset_json, write_manifest

__all__ = [
    "DATASET",
    "SHAPE",
    "Control",
    "Corpus",
    "Defect",
    "Score",
    "build_corpus",
    "image",
    "label",
    "raw_nifti",
    "save",
    "score_report",
]


def build_corpus(root: Path, *, defects: bool = True) -> Corpus:
    """Write the corpus under ``root`` (created) and return what must be found in its report.

    Args:
        root: an empty or new folder; run the check from here so files show relative to it.
        defects: False writes only the good cases and the controls (the report must be clean).

    Returns:
        The manifests to check in one ``mae3d manifest check`` run, the defects, the controls.
    """
    w = Writer(Path(root))
    w.ds.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        w.case(f"good_{i:03d}")
    # The pretraining set lives next to the nnU-Net folder, not in it (an importer sees only
    # the layout defects made on purpose).
    w.pretrain_cases = [
        {"id": f"pre_{i}", "subject": f"pre-subject-{i}", "images": f"pre_{i}.nii.gz"}
        for i in range(2)
    ]
    for i in range(2):
        save(w.root / PRETRAIN / f"pre_{i}.nii.gz", image(100 + i))
    add_controls(w)
    manifests = [w.root / "corpus.yaml", w.root / "pretrain.yaml"]
    if defects:
        header_defects(w)
        voxel_defects(w)
        geometry_defects(w)
        label_defects(w)
        pairing_and_naming_defects(w)
        manifests += dataset_defects(w)
    write_manifest(w.root / "corpus.yaml", MAIN, w.cases, labels=LABELS)
    write_manifest(
        w.root / "pretrain.yaml", "pretrain", w.pretrain_cases, channels=("T1",), root=PRETRAIN
    )
    write_dataset_json(w)
    names = [d.name for d in w.defects]
    assert len(names) == len(set(names)), "defect names must be unique"
    return Corpus(w.root, w.ds, manifests, w.defects, w.controls)
