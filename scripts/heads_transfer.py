"""Do phantom-trained networks transfer to heads, and does brain extraction help? Prints tables.

Two measurements (small sizes; run with ``OMP_NUM_THREADS=1`` on a shared machine):

``--masks``: Dice of each brain-extraction variant (:data:`toolkit.data.brain_mask.VARIANTS`)
against the true brain mask (``label > 0``) on held-out phantom heads (``--num-heads`` per
contrast, seeds 50 000 + i, never used for training), on brain-only phantoms and on MNI152
(already skull-stripped: the mask should be the non-zero region).

default: fine-tune the ``tiny`` network from scratch as the demo's arms do (``--steps`` steps,
peak lr 1e-2, warm-up + poly) on (a) phantom brains without a head and on (b) phantom heads with
``data.brain_extraction=otsu``; score Dice on held-out phantom heads with and without brain
extraction, on held-out brains, and on MNI152. Everything is written under ``--out``; a finished
run is reused.

Measured (``--steps 120 --num-heads 4``, one seed, one thread on a shared 2-core machine; mean
Dice csf / gm / wm; MNI152 and held-out brains scored without extraction)::

    run                  heads, none     heads, otsu     brains          MNI152
    brains               .13 / .09 / .44 .36 / .23 / .45 .41 / .23 / .47 .37 / .28 / .40
    heads + otsu         .07 / .05 / .18 .17 / .38 / .38 .18 / .14 / .35 .38 / .40 / .31

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/heads_transfer.py --masks --num-heads 6
    OMP_NUM_THREADS=1 .venv/bin/python scripts/heads_transfer.py --out heads_out --steps 120
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from toolkit.data.brain_mask import VARIANTS, extract_brain_mask, mask_dice
from toolkit.data.synthetic import CONTRASTS, synthesize_subject

HELD_OUT_SEED = 50_000


def measure_masks(num_heads: int, spacing_mm: float) -> None:
    """Print mean (min) Dice of every variant on heads per contrast, brains, and MNI152."""
    from toolkit.data.mni import load_mni152_case

    cases: dict[str, list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]] = {}
    for contrast in CONTRASTS:
        cases[f"head {contrast}"] = []
        for i in range(num_heads):
            s = synthesize_subject(
                HELD_OUT_SEED + i, spacing_mm=spacing_mm, contrast=contrast, head=True
            )
            cases[f"head {contrast}"].append((s.image, s.brain_mask, s.spacing_mm))
    cases["brain only"] = []
    for i in range(num_heads):
        s = synthesize_subject(HELD_OUT_SEED + 100 + i, spacing_mm=spacing_mm)
        cases["brain only"].append((s.image, s.brain_mask, s.spacing_mm))
    image, _, affine = load_mni152_case()
    spacing = tuple(float(x) for x in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    cases["MNI152 (non-zero)"] = [(image, image > 0, spacing)]

    print(f"Dice of the extracted mask vs the true brain mask ({spacing_mm} mm; mean [min])")
    print("| variant | " + " | ".join(cases) + " | seconds |")
    print("|---" * (len(cases) + 2) + "|")
    for name, settings in VARIANTS.items():
        start = time.perf_counter()
        cells = []
        for group in cases.values():
            d = [
                mask_dice(extract_brain_mask(img, sp, "otsu", settings=settings), truth)
                for img, truth, sp in group
            ]
            cells.append(f"{np.mean(d):.3f} [{np.min(d):.3f}]")
        seconds = time.perf_counter() - start
        print(f"| {name} {settings} | " + " | ".join(cells) + f" | {seconds:.1f} |")


def _evaluate(run: Path, manifest: Path, extraction: str | None) -> dict[str, float]:
    """Mean Dice per tissue of ``run`` on every case of ``manifest``.

    ``extraction`` overrides the brain-extraction step the run's plan records (None: keep it), to
    score a network trained on brains on heads with and without the step.
    """
    import toolkit.evaluate as ev

    original = ev.evaluation_cache

    def with_step(manifest_, cfg, plan, run_dir, **kwargs):  # type: ignore[no-untyped-def]
        plan = dict(plan or {})
        if extraction is not None:
            plan["brain_extraction"] = extraction
        return original(manifest_, cfg, plan, run_dir, **kwargs)

    name = f"{manifest.parent.name}-{extraction or 'plan'}"
    ev.evaluation_cache = with_step  # type: ignore[assignment]
    try:
        table = ev.evaluate(
            run,
            manifest,
            out_dir=run / "evaluation" / name,
            write_predictions=False,
            progress=False,
        )
    finally:
        ev.evaluation_cache = original  # type: ignore[assignment]
    table = table[table["label_name"] != "background"]
    return {str(k): float(v) for k, v in table.groupby("label_name")["dice"].mean().items()}


def measure_transfer(out: Path, steps: int, num_heads: int, spacing_mm: float) -> None:
    """Fine-tune on brains and on heads (with extraction); print Dice on held-out sets."""
    from toolkit.config import load_config
    from toolkit.data.mni import write_mni152_case
    from toolkit.data.synthetic import write_synthetic_dataset
    from toolkit.finetune import finetune_or_reuse

    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    for name, heads, seed in (("brains", False, 0), ("heads", True, 0)):
        if not (out / name / "labelled.yaml").is_file():
            write_synthetic_dataset(
                out / name,
                0,
                6,
                seed,
                heads=heads,
                spacing_mm=spacing_mm,
                workers=1,
                progress=False,
            )
        sets[name] = out / name / "labelled.yaml"
    for name, heads in (("heldout_heads", True), ("heldout_brains", False)):
        if not (out / name / "labelled.yaml").is_file():
            write_synthetic_dataset(
                out / name,
                0,
                num_heads,
                1,
                heads=heads,
                spacing_mm=spacing_mm,
                workers=1,
                progress=False,
            )
        sets[name] = out / name / "labelled.yaml"
    if not (out / "mni" / "mni152.yaml").is_file():
        write_mni152_case(out / "mni")
    sets["mni152"] = out / "mni" / "mni152.yaml"

    def config(train: str, extraction: str):  # type: ignore[no-untyped-def]
        return load_config(
            "tiny",
            {
                "data.finetune_manifest": str(sets[train]),
                "data.cache_dir": str(out / f"cache-{extraction}"),
                "data.target_spacing_mm": [2.5, 2.5, 2.5],
                "data.patch_size": [32, 32, 32],
                "data.val_fraction": 0.25,
                "data.num_workers": 0,
                "data.brain_extraction": extraction,
                "finetune.steps": steps,
                "finetune.val_every": max(1, steps // 4),
                "finetune.checkpoint_every": steps,
                "finetune.log_every": max(1, steps // 10),
                "finetune.batch_size": 2,
                "finetune.num_train_cases": 3,
                "finetune.optim.lr_scratch": 1e-2,
                "evaluate.overlap": 0.5,
                "evaluate.sw_batch_size": 2,
                "runtime.device": "cpu",
                "runtime.precision": "fp32",
                "runtime.seed": 0,
            },
        )

    runs = {
        "trained on brains": finetune_or_reuse(
            config("brains", "none"), out / "run-brains", pretrained=None, progress=False
        ),
        "trained on heads + otsu": finetune_or_reuse(
            config("heads", "otsu"), out / "run-heads-otsu", pretrained=None, progress=False
        ),
    }
    columns = [
        ("held-out heads, no extraction", "heldout_heads", "none"),
        ("held-out heads, otsu", "heldout_heads", "otsu"),
        ("held-out brains", "heldout_brains", "none"),
        ("MNI152", "mni152", "none"),
    ]
    print(f"Mean Dice csf / gm / wm ({steps} steps, tiny, scratch, {spacing_mm} mm phantoms)")
    print("| run | " + " | ".join(c[0] for c in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for run_name, run in runs.items():
        cells = []
        for _, key, extraction in columns:
            d = _evaluate(Path(run), sets[key], extraction)
            cells.append(" / ".join(f"{d.get(t, float('nan')):.2f}" for t in ("csf", "gm", "wm")))
        print(f"| {run_name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", action="store_true", help="compare brain-extraction variants")
    parser.add_argument("--num-heads", type=int, default=6, help="held-out heads per contrast")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom spacing, mm")
    parser.add_argument("--out", type=Path, default=Path("heads_out"), help="output folder")
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps")
    args = parser.parse_args()
    if args.masks:
        measure_masks(args.num_heads, args.spacing)
    else:
        measure_transfer(args.out, args.steps, args.num_heads, args.spacing)


if __name__ == "__main__":
    main()
