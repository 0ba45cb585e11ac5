"""The crops an export is checked and calibrated on, all through the service's own preprocessing.

- real-dev: labelled real crops (decode_image -> prepare -> normalize, exactly the served path); used for
  parity and for the metrics recorded in the config. Never used for calibration or any choice.
- calibration: synthetic renderer crops (`models.synth.sample_crops`) or a folder of PNG/JPEG crops.
- random: uniform [0, 1) tensors, which exercise the graph away from the data distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.labelled import decode_crops, read_labels
from service.core.context import crop_stats
from service.core.modelconfig import InputSpec, PreprocessSpec
from service.core.preprocess import CropError, decode_image, normalize, prepare

DEFAULT_REAL_DEV = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-dev" / "labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class LabelledSet:
    x: np.ndarray  # float32 [N,1,H,W], model input
    y: np.ndarray  # int64 [N], index into the model's classes
    binary: np.ndarray  # bool [N], "ink" truth (the CSV's binary column, else derived from the label)
    source: str
    #: what the served decision needs beside the logits (each sheet is one request, with its sheet context)
    stats: np.ndarray | None = None  # float32 [N, k], `context.crop_stats` of the model-size rows
    sizes: np.ndarray | None = None  # [N, 2] native crop (height, width)
    sheets: list[str | None] | None = None  # sheet id per crop


def load_labelled(labels_csv: Path, classes: tuple[str, ...], inp: InputSpec, pre: PreprocessSpec) -> LabelledSet:
    """A labels CSV (see `models.labelled`) -> model input, class indices and binary truth."""
    from service.core.taxonomy import PROFILES

    items = read_labels(labels_csv, classes)
    crops = decode_crops(items)
    rows = prepare(crops, inp)
    x = normalize(rows, pre, inp.dtype)
    y = np.array([classes.index(it.label) for it in items], np.int64)
    ink = PROFILES["ink"]
    binary = np.array([it.binary if it.binary is not None else it.label in ink for it in items], bool)
    sizes = np.array([c.shape[:2] for c in crops], np.float64)
    return LabelledSet(x, y, binary, str(labels_csv), crop_stats(rows), sizes, [it.sheet_id for it in items])


def calibration_crops(
    count: int, seed: int, inp: InputSpec, pre: PreprocessSpec, folder: Path | None = None
) -> tuple[np.ndarray, str]:
    """Calibration input float32 [N,1,H,W] and a one-line description of where it came from."""
    if folder is not None:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
        files = files[:count]
        crops = []
        for f in files:
            try:
                crops.append(decode_image(f.read_bytes()))
            except CropError as exc:
                raise ValueError(f"calibration crop {f}: {exc.message}") from exc
        return normalize(prepare(crops, inp), pre, inp.dtype), f"{len(files)} crops from {folder}"
    from models.synth import sample_crops

    u8 = sample_crops(count, seed)  # uint8 [count,32,32]
    if u8.shape[1:] != (inp.height, inp.width):
        u8 = prepare(list(u8), inp)
    return normalize(u8, pre, inp.dtype), f"{count} synthetic crops (models.synth.sample_crops, seed {seed})"


def random_inputs(n: int, inp: InputSpec, seed: int = 0) -> np.ndarray:
    """float32 [n,1,H,W] uniform in [0, 1): the range of pixel/255."""
    rng = np.random.default_rng(seed)
    return rng.random((n, inp.channels, inp.height, inp.width), dtype=np.float32)
