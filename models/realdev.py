"""Real labelled crops as model-size arrays, decoded and resized by the service's own preprocessing.

Sources. Accuracy on sheets the model never saw is estimated by leaving one *source* out at a time, so a
source must be what a new customer's sheets differ by: the scanner or camera, the form, the pens. Sheets are
grouped by origin (`amc-*`, `quexf-*`, `formscanner-*`: each the work of one author with one set of
scanners), and OMRChecker's user samples by contributor (`omrchecker-<contributor>-...`: different people,
phones and scanners). Any other sheet id falls back to its name without a trailing number
(`x-form_1`, `x-form_2` -> `x-form`).

Sealed sources are held out of all tuning and looked at only in the final evaluation, so that the report can
say how far the leave-one-source-out estimate drifted on sources nobody tuned against. Training and
fine-tuning monitors skip them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.labelled import decode_crops, read_labels
from service.core.modelconfig import InputSpec
from service.core.preprocess import prepare

#: origins whose sheets form one source each (one author, one family of scanners)
ORIGINS = ("amc", "quexf", "formscanner")
#: held out of all tuning; only the final evaluation reads them (see the module docstring)
SEALED: tuple[str, ...] = ("formscanner", "omrchecker-Sandeep-1507")


def source_of(sheet_id: str) -> str:
    """The source a sheet belongs to (see the module docstring)."""
    head = sheet_id.split("-", 1)[0]
    if head in ORIGINS:
        return head
    if head == "omrchecker" and "-" in sheet_id:
        rest = sheet_id.split("-", 1)[1]
        contributor = "Sandeep-1507" if rest.startswith("Sandeep-1507") else rest.split("-", 1)[0]
        return f"omrchecker-{contributor}"
    return re.sub(r"[_-]?\d+$", "", sheet_id)


def parse_sources(spec: str | Sequence[str]) -> tuple[str, ...]:
    """ "a,b" or ["a", "b"] -> ("a", "b"); empty -> ()."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(s.strip() for s in items if s.strip())


@dataclass
class RealSet:
    x: np.ndarray  # uint8 [N, side, side]
    y: np.ndarray  # int64 [N] class index
    files: list[Path]
    groups: list[str]  # sheet ids (split by sheet, never by crop)

    @property
    def sources(self) -> np.ndarray:
        return np.array([source_of(g) for g in self.groups])

    def subset(self, keep: np.ndarray) -> RealSet:
        idx = np.flatnonzero(keep)
        return RealSet(self.x[idx], self.y[idx], [self.files[i] for i in idx], [self.groups[i] for i in idx])

    def without(self, sources: Sequence[str]) -> RealSet:
        """The crops of every other source (e.g. `real.without(SEALED)` for tuning)."""
        return self.subset(~np.isin(self.sources, list(sources)))


def load_real_set(labels_csv: Path, classes: list[str], side: int = 32, exclude: Sequence[str] = ()) -> RealSet:
    """Decode and resize every crop of a labels CSV; `exclude` drops whole sources (e.g. the sealed ones)."""
    items = read_labels(labels_csv, classes)
    if exclude:
        items = [it for it in items if source_of(it.sheet_id or "") not in set(exclude)]
    x = prepare(decode_crops(items), InputSpec(height=side, width=side))  # the service's resize path
    y = np.array([classes.index(it.label) for it in items], np.int64)
    return RealSet(x, y, [it.path for it in items], [it.sheet_id or "" for it in items])
