"""The preprocessing plan of a cache (``plan.json``) and its dataset fingerprint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.data.preprocess.case import CACHE_FORMAT_VERSION


@dataclass(frozen=True)
class Plan:
    """What :func:`preprocess_manifest` did; ``to_dict()`` is the content of ``plan.json``.

    Attributes:
        dataset: manifest name.
        manifest: path of the manifest file (or "" for an in-memory manifest).
        channels: modality names in channel order.
        labels: label value -> name, or None for an unlabelled set.
        target_spacing_mm: (3,) requested spacing of the cache grid.
        image_order: spline order used for images (labels: nearest neighbour).
        cases: one dict per case: ``id``, ``dir`` (folder under ``cases/``), ``subject``,
            ``session``, ``split``, ``fold``, ``shape`` (cache grid), ``labelled``.
        fingerprint: per-case original spacing and shape, medians, pooled intensity statistics per
            channel and label statistics.
        toolkit_version: version of the toolkit that wrote the cache.
        last_run: ``processed``, ``reused``, ``remade`` and ``seconds`` of the run that made this
            plan. Kept in memory only (not in ``plan.json``), so the same inputs and settings give
            a byte-identical cache however the run was split or timed.
        brain_extraction: ``none`` or the brain-extraction method every case went through
            (:mod:`toolkit.data.brain_mask`); evaluation and inference repeat it.
    """

    dataset: str
    manifest: str
    channels: tuple[str, ...]
    labels: dict[int, str] | None
    target_spacing_mm: tuple[float, float, float]
    image_order: int
    cases: tuple[dict[str, Any], ...]
    fingerprint: dict[str, Any]
    toolkit_version: str
    last_run: dict[str, Any] = field(default_factory=dict, compare=False)
    normalization: str = "zscore_nonzero_region"
    label_order: int = 0
    format_version: int = CACHE_FORMAT_VERSION
    brain_extraction: str = "none"

    @property
    def case_ids(self) -> list[str]:
        return [c["id"] for c in self.cases]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (label keys become strings in JSON)."""
        return {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "manifest": self.manifest,
            "channels": list(self.channels),
            "labels": None if self.labels is None else {int(k): v for k, v in self.labels.items()},
            "target_spacing_mm": list(self.target_spacing_mm),
            "image_order": self.image_order,
            "label_order": self.label_order,
            "normalization": self.normalization,
            "brain_extraction": self.brain_extraction,
            "toolkit_version": self.toolkit_version,
            "fingerprint": self.fingerprint,
            "cases": [dict(c) for c in self.cases],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict` (accepts the string label keys JSON produces)."""
        labels = data.get("labels")
        return cls(
            dataset=str(data["dataset"]),
            manifest=str(data.get("manifest", "")),
            channels=tuple(data["channels"]),
            labels=None if labels is None else {int(k): str(v) for k, v in labels.items()},
            target_spacing_mm=_triple(data["target_spacing_mm"]),
            image_order=int(data["image_order"]),
            cases=tuple(dict(c) for c in data["cases"]),
            fingerprint=dict(data.get("fingerprint", {})),
            toolkit_version=str(data.get("toolkit_version", "")),
            normalization=str(data.get("normalization", "zscore_nonzero_region")),
            label_order=int(data.get("label_order", 0)),
            format_version=int(data.get("format_version", CACHE_FORMAT_VERSION)),
            brain_extraction=str(data.get("brain_extraction", "none")),
        )


def _triple(values: Sequence[Any]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def _fingerprint(props: Mapping[str, Mapping[str, Any]], channels: Sequence[str]) -> dict[str, Any]:
    """Dataset statistics from the per-case properties (nnU-Net's dataset fingerprint, slimmed)."""
    spacing = {cid: p["original_spacing_mm"] for cid, p in props.items()}
    shapes = {cid: p["original_shape"] for cid, p in props.items()}
    intensity = {}
    for c, name in enumerate(channels):
        per_case = [p["intensity"][c] for p in props.values()]
        n = np.array([s["num_voxels"] for s in per_case], float)
        means = np.array([s["mean"] for s in per_case])
        stds = np.array([s["std"] for s in per_case])
        mean = float((n * means).sum() / n.sum())
        # pooled variance: E[x^2] - E[x]^2 over all region voxels of all cases
        second = float((n * (stds**2 + means**2)).sum() / n.sum())
        intensity[name] = {
            "mean": mean,
            "std": float(np.sqrt(max(second - mean**2, 0.0))),
            "percentile_00_5": float(np.median([s["percentile_00_5"] for s in per_case])),
            "percentile_99_5": float(np.median([s["percentile_99_5"] for s in per_case])),
            "min": float(min(s["min"] for s in per_case)),
            "max": float(max(s["max"] for s in per_case)),
        }
    label_cases: dict[str, int] = {}
    for p in props.values():
        for v in p["label_values"] or []:
            label_cases[str(v)] = label_cases.get(str(v), 0) + 1
    return {
        "num_cases": len(props),
        "spacing_mm": spacing,
        "shape": shapes,
        "median_spacing_mm": np.median(list(spacing.values()), axis=0).tolist(),
        "median_shape": np.median(list(shapes.values()), axis=0).tolist(),
        "median_resampled_shape": np.median(
            [p["resampled_shape"] for p in props.values()], axis=0
        ).tolist(),
        "intensity": intensity,
        "label_cases": label_cases,
    }
