"""Labelled crop folders: a `labels.csv` whose `crop_file` paths are relative to the CSV's own folder.

Columns: `crop_file` and `label` (required); `binary` (optional, 0/1: the marked truth under the "ink"
reading, see `../shared/data/real-dev/README.md`); `sheet_id` (optional: crops of one sheet belong together,
so splits are made by sheet, never by crop). Other columns are kept in `LabelledCrop.extra`.

Problems are collected and reported together (every bad row named), so a user fixes a CSV in one pass.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.core.modelconfig import ModelConfig
from service.core.preprocess import CropError, decode_image

REQUIRED = ("crop_file", "label")


class LabelsError(ValueError):
    """A labels CSV (or a crop it names) that cannot be used; the message lists every problem found."""


@dataclass(frozen=True)
class LabelledCrop:
    path: Path
    #: `crop_file` exactly as written in the CSV (relative to the CSV's folder)
    crop_file: str
    label: str
    binary: bool | None = None
    sheet_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def _fail(csv_path: Path, problems: Sequence[str]) -> LabelsError:
    shown = "\n  ".join(problems[:20])
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return LabelsError(f"{csv_path}: {len(problems)} problem(s):\n  {shown}{more}")


def read_labels(csv_path: Path, classes: Sequence[str] | None = None) -> list[LabelledCrop]:
    """Parse and check a labels CSV. With `classes`, a label outside them is an error (named by row)."""
    if not csv_path.is_file():
        raise LabelsError(f"labels CSV not found: {csv_path}")
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise LabelsError(f"{csv_path}: missing column(s) {missing}; found {header}")
        rows = list(reader)
    if not rows:
        raise LabelsError(f"{csv_path}: no rows")
    root = csv_path.parent
    problems: list[str] = []
    out: list[LabelledCrop] = []
    known = set(classes) if classes is not None else None
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        name = (row.get("crop_file") or "").strip()
        label = (row.get("label") or "").strip()
        where = f"line {line} ({name or 'no crop_file'})"
        if not name:
            problems.append(f"{where}: empty crop_file")
            continue
        path = root / name
        if not path.is_file():
            problems.append(f"{where}: file not found: {path}")
        if not label:
            problems.append(f"{where}: empty label")
        elif known is not None and label not in known:
            problems.append(f"{where}: label {label!r} is not a model class {sorted(known)}")
        raw_binary = (row.get("binary") or "").strip()
        binary: bool | None = None
        if raw_binary:
            if raw_binary not in ("0", "1"):
                problems.append(f"{where}: binary must be 0 or 1, got {raw_binary!r}")
            binary = raw_binary == "1"
        sheet = (row.get("sheet_id") or "").strip() or None
        extra = {k: v for k, v in row.items() if k not in (*REQUIRED, "binary", "sheet_id") and k is not None}
        out.append(LabelledCrop(path, name, label, binary, sheet, extra))
    if problems:
        raise _fail(csv_path, problems)
    return out


def decode_crops(items: Sequence[LabelledCrop]) -> list[np.ndarray]:
    """Each crop's PNG/JPEG bytes -> uint8 grayscale, by the service's own `decode_image`.

    A crop the service would refuse is an error here too (all of them named), not silently skipped:
    skipping would make the measured accuracy describe a different set than the one labelled.
    """
    crops: list[np.ndarray] = []
    problems: list[str] = []
    for item in items:
        try:
            crops.append(decode_image(item.path.read_bytes()))
        except CropError as exc:
            problems.append(f"{item.crop_file}: {exc.reason}: {exc.message}")
    if problems:
        raise LabelsError(f"{len(problems)} crop(s) cannot be decoded:\n  " + "\n  ".join(problems))
    return crops


def binary_truth(items: Sequence[LabelledCrop], config: ModelConfig, profile: str) -> tuple[np.ndarray, str]:
    """Per crop: the CSV's `binary` value (it is the "ink" reading) where given and profile is ink, else the
    label's marking under `profile`. Returns the truth and a description of where it came from."""
    mapping = config.profiles[profile]
    use_csv = [profile == "ink" and it.binary is not None for it in items]
    truth = np.array([it.binary if csv_ else mapping[it.label] for it, csv_ in zip(items, use_csv, strict=True)])
    source = (
        "csv binary column"
        if all(use_csv)
        else f"labels under profile {profile!r}"
        if not any(use_csv)
        else "csv binary column where given, else labels under profile 'ink'"
    )
    return truth.astype(bool), source


def label_binary_conflicts(items: Sequence[LabelledCrop], config: ModelConfig) -> list[str]:
    """Crops whose CSV `binary` contradicts their own label under "ink" (a labelling error either way)."""
    ink = config.profiles.get("ink")
    if ink is None:
        return []
    return [it.crop_file for it in items if it.binary is not None and it.binary != ink[it.label]]
