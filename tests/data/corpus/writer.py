"""Collects the files, cases, defects and controls of one corpus; writes its manifests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.data.corpus.nifti import image, label, save
from tests.data.corpus.records import CHANNELS, DATASET, LABELS, PRETRAIN, Control, Defect

# --------------------------------------------------------------------------------------------------
# The corpus


class Writer:
    """Collects the files, cases, defects and controls of one corpus."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ds = root / DATASET
        self.cases: list[dict[str, Any]] = []
        self.pretrain_cases: list[dict[str, Any]] = []
        self.defects: list[Defect] = []
        self.controls: list[Control] = []
        self._seed = 10

    def rel(self, path: Path) -> str:
        """``path`` relative to the corpus folder (how the report, run from there, shows it)."""
        return path.relative_to(self.root).as_posix()

    def seed(self) -> int:
        self._seed += 1
        return self._seed

    def img_path(
        self, case: str, channel: int = 0, ending: str = ".nii.gz", split: str = "train"
    ) -> Path:
        folder = "imagesTs" if split == "test" else "imagesTr"
        return self.ds / folder / f"{case}_{channel:04d}{ending}"

    def lab_path(self, case: str, ending: str = ".nii.gz", split: str = "train") -> Path:
        return self.ds / ("labelsTs" if split == "test" else "labelsTr") / f"{case}{ending}"

    def case(
        self,
        cid: str,
        *,
        t1: Path | None = None,
        t2: Path | None = None,
        seg: Path | None | bool = True,
        split: str = "train",
        subject: str | None = None,
        write: bool = True,
    ) -> dict[str, Any]:
        """Add a case; missing files default to good ones named nnU-Net style.

        Test cases live in imagesTs/labelsTs, the others in imagesTr/labelsTr.
        """
        t1 = t1 or self.img_path(cid, 0, split=split)
        t2 = t2 or self.img_path(cid, 1, split=split)
        for path, ch in ((t1, 0), (t2, 1)):
            if write and path == self.img_path(cid, ch, split=split) and not path.exists():
                save(path, image(self.seed()))
        entry: dict[str, Any] = {"id": cid, "subject": subject or cid}
        entry["images"] = {"T1": self.manifest_path(t1), "T2": self.manifest_path(t2)}
        if seg is True:
            seg = self.lab_path(cid, split=split)
            if write and not seg.exists():
                save(seg, label())
        if isinstance(seg, Path):
            entry["label"] = self.manifest_path(seg)
        entry["split"] = split
        self.cases.append(entry)
        return entry

    def manifest_path(self, path: Path) -> str:
        return path.relative_to(self.ds).as_posix()

    def defect(self, name: str, family: str, expected: str, **kw: Any) -> None:
        file = kw.pop("file", None)
        if isinstance(file, Path):
            file = self.rel(file)
        self.defects.append(Defect(name, family, expected, file=file, **kw))

    def control(self, name: str, case: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
        """Record ``case`` (of corpus.yaml; of pretrain.yaml when it has no split) as a control."""
        images = case["images"]
        files = [images] if isinstance(images, str) else [*images.values()]
        files += [case["label"]] if "label" in case else []
        folder = DATASET if "split" in case else PRETRAIN
        rel = tuple(f"{folder}/{f}" for f in dict.fromkeys(files))
        self.controls.append(Control(name, case["id"], rel, allowed))

    def pretrain_case(self, cid: str, name: str) -> tuple[dict[str, Any], Path]:
        """Add a one-channel case of pretrain.yaml whose image is ``Pretrain/<name>``.

        Files that an nnU-Net folder cannot hold (``.nii`` in a ``.nii.gz`` dataset) go here, so
        that the check sees them whether or not the folder was imported first.
        """
        entry: dict[str, Any] = {"id": cid, "images": name}
        self.pretrain_cases.append(entry)
        path = self.root / PRETRAIN / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return entry, path


def write_manifest(
    path: Path,
    name: str,
    cases: list[dict[str, Any]],
    *,
    labels: Mapping[int, str] | None = None,
    channels: Sequence[str] = CHANNELS,
    root: str = DATASET,
) -> None:
    data: dict[str, Any] = {"name": name, "root": root, "channels": list(channels)}
    if labels is not None:
        data["labels"] = dict(labels)
    data["cases"] = cases
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_dataset_json(w: Writer) -> None:
    spec = {
        "channel_names": {str(i): ch for i, ch in enumerate(CHANNELS)},
        "labels": {name: value for value, name in LABELS.items()},
        # nnU-Net counts training cases by their files, not by manifest entries.
        # As nnU-Net's verify_dataset_integrity counts: identifiers of imagesTr files (not
        # folders) that end in file_ending, channel suffix _XXXX removed.
        "numTraining": len(
            {
                p.name[: -len(".nii.gz") - 5]
                for p in (w.ds / "imagesTr").iterdir()
                if p.is_file() and p.name.endswith(".nii.gz")
            }
        ),
        "file_ending": ".nii.gz",
    }
    (w.ds / "dataset.json").write_text(json.dumps(spec, indent=2))
