"""Synthetic brains: determinism, anatomy, intensities, exact labels, data sets, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from toolkit.cli import main
from toolkit.cli import synth as synth_cli
from toolkit.data import synthetic
from toolkit.data.io import load_volume
from toolkit.data.manifest import load_manifest
from toolkit.data.synthetic import (
    CONTRASTS,
    CSF,
    GM,
    LESION,
    WM,
    subject_seed,
    synthesize_subject,
    synthetic_manifests,
    write_demo_manifests,
    write_synthetic_dataset,
)
from toolkit.data.synthetic import dataset as synth_dataset
from toolkit.data.synthetic import subject as synth_subject
from toolkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _axes_from_affine(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    assert np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine[:3, :3]))) == 0
    return [affine[i, 3] + affine[i, i] * np.arange(shape[i]) for i in range(3)]


def test_same_seed_gives_identical_subject_and_other_seed_differs() -> None:
    a = synthesize_subject(7, spacing_mm=4.0, lesions=True)
    b = synthesize_subject(7, spacing_mm=4.0, lesions=True)
    c = synthesize_subject(8, spacing_mm=4.0, lesions=True)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine) and a.contrast == b.contrast
    assert a.image.shape != c.image.shape or not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("seed", [0, 1])
def test_anatomy_is_plausible(seed: int) -> None:
    s = synthesize_subject(seed, spacing_mm=2.5, lesions=True)
    assert s.image.dtype == np.float32 and s.label.dtype == np.uint8
    assert s.image.shape == s.label.shape and s.affine.shape == (4, 4)
    assert set(np.unique(s.label)) == {0, 1, 2, 3, 4}
    voxel_ml = float(np.prod(s.spacing_mm)) / 1000.0
    counts = np.bincount(s.label.ravel(), minlength=5)
    brain_ml = counts[1:].sum() * voxel_ml
    assert 900 < brain_ml < 2200, brain_ml  # adult brain + CSF: about 1.2-1.8 L
    assert 0.25 < counts[GM] / (counts[GM] + counts[WM]) < 0.6
    assert 0.03 < counts[CSF] / counts[1:].sum() < 0.3
    # The head lies inside the field of view, and white matter (and lesions inside it) never
    # touches the background: it is wrapped in grey matter and CSF.
    for axis in range(3):
        assert not s.label.take([0, -1], axis=axis).any()
    near_background = ndimage.binary_dilation(s.label == 0)
    assert not (near_background & np.isin(s.label, (WM, LESION))).any()
    # Lesions only replace white matter: every lesion voxel has a white-matter voxel nearby.
    lesion_parts, n = ndimage.label(s.label == LESION)
    touched = np.unique(lesion_parts[ndimage.binary_dilation(s.label == WM) & (lesion_parts > 0)])
    assert n > 0 and set(touched.tolist()) == set(range(1, n + 1))


def test_no_lesion_label_without_lesions() -> None:
    s = synthesize_subject(0, spacing_mm=2.5)
    assert set(np.unique(s.label)) == {0, 1, 2, 3}
    assert LESION not in s.label_means


def test_label_map_is_the_geometry_at_the_voxel_centres() -> None:
    s = synthesize_subject(4, spacing_mm=(2.5, 2.9, 2.2), lesions=True)
    axes = _axes_from_affine(s.affine, s.label.shape)
    assert np.array_equal(s.geometry.labels_on(axes), s.label)


def test_clean_image_equals_label_means_away_from_boundaries() -> None:
    # At (2.5, 2.5, 5) mm the image is rendered twice finer along z and averaged back.
    s = synthesize_subject(5, spacing_mm=(2.5, 2.5, 5.0), lesions=True, artefacts=False)
    lut = np.zeros(5, np.float32)
    for k, v in s.label_means.items():
        lut[k] = v
    pure = ndimage.minimum_filter(s.label, 3) == ndimage.maximum_filter(s.label, 3)
    close = np.isclose(s.image[pure], lut[s.label[pure]], rtol=1e-5)
    assert close.mean() > 0.999
    # At boundaries partial volume mixes neighbouring tissues: values lie between their means.
    means = lut[s.label]
    low, high = ndimage.minimum_filter(means, 3), ndimage.maximum_filter(means, 3)
    edge = ~pure
    within = (s.image[edge] >= low[edge] - 1e-3) & (s.image[edge] <= high[edge] + 1e-3)
    assert within.mean() > 0.99
    assert np.mean(~np.isclose(s.image[edge], means[edge], rtol=1e-3)) > 0.1


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_label_means_follow_the_contrast(contrast: str) -> None:
    s = synthesize_subject(11, spacing_mm=2.0, contrast=contrast, lesions=True)
    assert s.contrast == contrast
    # Voxels whose six neighbours share their label: partial volume does not blur their tissue.
    mean = {}
    for k in range(5):
        pure = ndimage.binary_erosion(s.label == k)
        assert pure.sum() >= 5, f"label {k}: too few interior voxels to test"
        mean[k] = float(s.image[pure].mean())
    order = {"T1": [WM, GM, CSF], "T2": [CSF, GM, WM], "FLAIR": [LESION, GM, WM, CSF]}[contrast]
    assert all(mean[a] > mean[b] for a, b in zip(order, order[1:], strict=False)), mean
    assert float(s.image[s.label == 0].mean()) < 0.05 * mean[WM]
    for axis in range(3):  # background far from the head is exactly zero (crop-to-nonzero works)
        assert not s.image.take([0, -1], axis=axis).any()


def test_spacing_sets_affine_and_keeps_physical_size() -> None:
    iso = synthesize_subject(3, spacing_mm=2.5)
    aniso = synthesize_subject(3, spacing_mm=(2.2, 2.8, 4.5))
    assert np.allclose(np.diag(aniso.affine)[:3], (2.2, 2.8, 4.5))
    # Spacing changes the grid, not the anatomy: both grids cover the same head box, centred.
    assert iso.geometry.box_mm == aniso.geometry.box_mm
    assert np.array_equal(iso.geometry.rotation, aniso.geometry.rotation)
    lo, hi = (np.array(c) for c in iso.geometry.box_mm)
    for s in (iso, aniso):
        spacing = np.diag(s.affine)[:3]
        cover = (np.array(s.label.shape) - 1) * spacing
        assert np.all(hi - lo + 6 * spacing <= cover + 1e-6)
        assert np.all(cover < hi - lo + 7 * spacing)
        assert np.allclose(s.affine[:3, 3] + cover / 2, (lo + hi) / 2)


def test_drawn_spacing_is_mostly_isotropic_with_some_thick_slices() -> None:
    rng = np.random.default_rng(0)
    drawn = np.array([synth_subject._draw_spacing(rng) for _ in range(300)])
    assert drawn.min() >= 1.0 and drawn.max() <= 3.0
    thick = (drawn.max(axis=1) - drawn.min(axis=1)) > 0.5
    assert 0.15 < thick.mean() < 0.45
    assert np.all(drawn[~thick].max(axis=1) <= 1.6)


@pytest.mark.parametrize(
    "kwargs",
    [{"contrast": "PD"}, {"spacing_mm": -1.0}, {"spacing_mm": (1.0, 2.0)}, {"fine_mm": 0.0}],
)
def test_bad_subject_arguments_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        synthesize_subject(0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("counts", "workers"),
    [((2, 1), 1), ((-1, 2), 1), ((0, 0), 1), ((2, 2), 0)],
    ids=["one-labelled", "negative", "nothing", "no-workers"],
)
def test_bad_dataset_arguments_raise_config_error(
    tmp_path: Path, counts: tuple[int, int], workers: int
) -> None:
    with pytest.raises(ConfigError):
        write_synthetic_dataset(
            tmp_path, counts[0], counts[1], seed=0, workers=workers, progress=False
        )
    assert not list(tmp_path.iterdir())


def test_written_dataset_matches_manifests_and_subjects(tmp_path: Path) -> None:
    paths = write_synthetic_dataset(
        tmp_path, 1, 2, seed=5, spacing_mm=4.0, lesions=True, workers=1, progress=False
    )
    pre, lab = load_manifest(paths["pretrain"]), load_manifest(paths["labelled"])
    assert pre.root == tmp_path.resolve() and not pre.is_labelled
    assert lab.labels == {0: "background", 1: "csf", 2: "gm", 3: "wm", 4: "lesion"}
    assert not {c.subject for c in pre.cases} & {c.subject for c in lab.cases}
    assert {c.split for c in lab.cases} == {"train", "test"}
    assert all(c.label is None for c in pre.cases)
    planned = synthetic_manifests(1, 2, 5, lesions=True)
    assert pre.case_ids == planned["pretrain"].case_ids
    assert lab.case_ids == planned["labelled"].case_ids
    # Every file is the subject drawn from its derived seed.
    case = lab.cases[1]
    expected = synthesize_subject(subject_seed(5, "labelled", 1), spacing_mm=4.0, lesions=True)
    image = load_volume(lab.image_paths(case)[0])
    label_path = lab.label_path(case)
    assert label_path is not None
    assert np.array_equal(image.array, expected.image)
    assert np.array_equal(load_volume(label_path, dtype=np.uint8).array, expected.label)
    assert np.allclose(image.affine, expected.affine)
    table = paths["subjects"].read_text().splitlines()
    assert len(table) == 1 + 3 and table[0].startswith("subject\trole")


def test_process_pool_writes_the_same_files(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "a", 2, 0, seed=2, spacing_mm=5.0, workers=1, progress=False)
    write_synthetic_dataset(tmp_path / "b", 2, 0, seed=2, spacing_mm=5.0, workers=2, progress=False)
    for name in ("sub-001", "sub-002"):
        a = load_volume(tmp_path / f"a/images/{name}.nii.gz").array
        b = load_volume(tmp_path / f"b/images/{name}.nii.gz").array
        assert np.array_equal(a, b)
    assert (tmp_path / "a/subjects.tsv").read_text() == (tmp_path / "b/subjects.tsv").read_text()


def test_interrupted_run_leaves_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_synthetic_dataset(tmp_path, 2, 0, seed=0, spacing_mm=4.0, workers=1, progress=False)
    assert (tmp_path / "pretrain.yaml").is_file()
    real = synth_dataset._write_one
    calls = []

    def fail_second(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth_dataset, "_write_one", fail_second)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path, 2, 0, seed=1, spacing_mm=4.0, workers=1, progress=False)
    assert not (tmp_path / "pretrain.yaml").exists()


def test_data_manifests_describe_the_default_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = write_demo_manifests(tmp_path)
    for path in written.values():
        committed = REPO / "data_manifests" / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: regenerate it"
    monkeypatch.setenv("MAE3D_DEMO_DATA", str(tmp_path))
    pre = load_manifest(REPO / "data_manifests/demo_pretrain.yaml")
    lab = load_manifest(REPO / "data_manifests/demo_labelled.yaml")
    assert pre.root == tmp_path and len(pre.cases) == synthetic.DEMO_NUM_SUBJECTS
    assert len(lab.cases) == synthetic.DEMO_NUM_LABELLED
    assert not {c.subject for c in pre.cases} & {c.subject for c in lab.cases}
    # The CLI's defaults are literal copies (so `mae3d --help` stays light): keep them in step.
    assert synth_cli._DEMO_NUM_SUBJECTS == synthetic.DEMO_NUM_SUBJECTS
    assert synth_cli._DEMO_NUM_LABELLED == synthetic.DEMO_NUM_LABELLED
    assert synth_cli._DEMO_SEED == synthetic.DEMO_SEED
    assert float(synth_cli._DEMO_SPACING) == synthetic.DEMO_SPACING_MM
    assert synth_cli._DEMO_NAME == synthetic.DEMO_NAME
    assert synth_cli._DEMO_TEST_FRACTION == synthetic.DEMO_TEST_FRACTION


def test_cli_synth_writes_a_tiny_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "synth",
        "--out",
        str(tmp_path),
        "--subjects",
        "1",
        "--labelled",
        "2",
        "--seed",
        "3",
        "--spacing",
        "4",
        "--workers",
        "1",
        "--no-mni",
        "--no-progress",
        "--name",
        "t",
    ]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "3 subjects (1 pretrain, 2 labelled)" in out and "subjects/s" in out
    assert load_manifest(tmp_path / "labelled.yaml").name == "t_labelled"
    assert not (tmp_path / "mni152.yaml").exists()


@pytest.mark.parametrize("text", ["fast", "1,2", "1,,2"])
def test_cli_rejects_bad_spacing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path), "--spacing", text, "--no-mni"])
    assert exc.value.code == 2
    assert "error: --spacing" in capsys.readouterr().err


def test_parse_spacing() -> None:
    assert synth_cli.parse_spacing("random") is None
    assert synth_cli.parse_spacing("2.5") == 2.5
    assert synth_cli.parse_spacing("1,1,3") == (1.0, 1.0, 3.0)
