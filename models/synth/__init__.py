"""Synthetic bubble crops that look like real scans and phone photos (numpy + OpenCV, seeded).

Public API:
    render_sample(label, rng) -> Sample            one native-size crop with its coverage
    render_dataset(n, seed, classes) -> (X, y)      class-balanced, model-size uint8 [n,32,32] + int labels
    sample_crops(n, seed) -> X                      model-size uint8 [n,32,32] (e.g. INT8 calibration)
"""

from __future__ import annotations

from models.synth.dataset import render_dataset, sample_crops
from models.synth.render import Sample, render_sample

__all__ = ["Sample", "render_dataset", "render_sample", "sample_crops"]
