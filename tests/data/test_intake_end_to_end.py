"""Issue 10's end-to-end check: the whole defect corpus as one nnU-Net folder, imported with
``--keep-going`` and checked with one ``mae3d manifest check`` run.

The importer names the defects that are about the folder's layout (it leaves those cases out);
the check names everything else in the imported cases and the corpus's other manifests. Together
they name every defect a folder can hold, flag no control and print no traceback; the defects a
folder cannot express (duplicate or unusable ids, subjects leaking across splits) are named by
``tests/data/test_corpus.py`` on the hand-written manifest. The same folder without defects
imports and checks clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.data.corpus import Corpus, build_corpus, score_report
from tests.data.corpus.records import MAIN

# Defect -> what the importer says about it (file name, message fragment).
NAMED_BY_IMPORTER = {
    "file_unknown_ending": ("file_unknown_ending_0000.mha", "unknown extension"),
    "file_is_folder": ("file_is_folder_0000.nii.gz", "a directory where a .nii.gz file belongs"),
    "file_missing_image": ("file_missing_image_0000.nii.gz", "missing channel 0"),
    "lab_missing_train": ("lab_missing_train.nii.gz", "image without label"),
    "lab_file_missing": ("lab_file_missing.nii.gz", "image without label"),
    "pair_label_is_image": ("pair_label_is_image.nii.gz", "image without label"),
    "path_letter_case": ("PATH_CASE_0000.nii.gz", "missing channel 0"),
}
# Only a hand-written manifest can hold these: nnU-Net file names carry no subject, and a folder
# cannot hold two cases of one id or an id with a slash.
MANIFEST_ONLY = {
    "id_duplicate",
    "id_not_a_file_name",
    "subject_in_two_splits",
    "test_subject_in_pretraining",
}


def _mae3d(args: list[str], cwd: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    env.pop("MAE3D_MAX_VOXELS", None)
    done = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    return done.returncode, done.stdout + done.stderr


def _import_and_check(corpus: Corpus, *extra: str) -> tuple[int, str, int, str]:
    folder = str(corpus.dataset_dir.relative_to(corpus.root))
    args = ["manifest", "import", "nnunet", folder, "--out", "imported.yaml", *extra]
    import_code, import_out = _mae3d(args, corpus.root)
    manifest = corpus.root / "imported.yaml"
    assert manifest.is_file(), import_out
    # The corpus's records name the labelled manifest MAIN; the importer names it after the folder.
    data = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    data["name"] = MAIN
    manifest.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
    others = [str(m.relative_to(corpus.root)) for m in corpus.manifests if m.name != "corpus.yaml"]
    check = ["manifest", "check", "--no-progress", "imported.yaml", *others]
    check_code, check_out = _mae3d(check, corpus.root)
    return import_code, import_out, check_code, check_out


def test_the_corpus_folder_imported_and_checked_names_every_defect(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    import_code, import_out, check_code, check_out = _import_and_check(corpus, "--keep-going")
    assert import_code == 0, import_out
    assert "Traceback" not in import_out + check_out
    score = score_report(corpus, import_out + check_out)
    assert score.flagged == (), score.flagged
    missed = {d.name for d in score.missed}
    assert missed == set(NAMED_BY_IMPORTER) | MANIFEST_ONLY, check_out
    lines = import_out.splitlines()
    for name, (file_name, fragment) in NAMED_BY_IMPORTER.items():
        assert any(f"/{file_name}: {fragment}" in line for line in lines), (name, import_out)
    named = score.defects_named + len(NAMED_BY_IMPORTER)
    print(
        f"\nfolder: {named}/{score.defects_made - len(MANIFEST_ONLY)} defects named "
        f"({len(NAMED_BY_IMPORTER)} by the importer), {score.controls_clean}/"
        f"{score.controls_made} controls clean, tracebacks {score.tracebacks}"
    )
    assert check_code == 1


def test_the_corpus_folder_without_defects_imports_and_checks_clean(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path, defects=False)
    import_code, import_out, check_code, check_out = _import_and_check(corpus)
    assert import_code == 0 and " 0 problem cases (0 problems" in import_out, import_out
    score = score_report(corpus, import_out + check_out)
    assert score.flagged == () and score.tracebacks == 0, check_out
    assert check_code == 0, check_out
