"""Balanced synthetic datasets at model input size, rendered in parallel worker processes.

Each chunk of crops has its own seed derived from (seed, chunk index), so a dataset is identical whatever
the number of workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from models.synth.render import render_sample
from service.core.preprocess import resize
from service.core.taxonomy import CLASSES

CHUNK = 512


def _chunk(args: tuple[int, int, int, tuple[str, ...], int]) -> tuple[np.ndarray, np.ndarray]:
    seed, index, count, classes, side = args
    rng = np.random.default_rng([seed, index])
    x = np.empty((count, side, side), np.uint8)
    y = np.empty(count, np.int64)
    for i in range(count):
        k = (index * CHUNK + i) % len(classes)  # round-robin: exactly balanced classes
        x[i] = resize(render_sample(classes[k], rng).image, side, side)
        y[i] = k
    return x, y


def render_dataset(
    n: int, seed: int, classes: Sequence[str] = CLASSES, side: int = 32, workers: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """n class-balanced crops resized exactly as the service does: (uint8 [n,side,side], int64 [n])."""
    jobs = [(seed, i, min(CHUNK, n - i * CHUNK), tuple(classes), side) for i in range((n + CHUNK - 1) // CHUNK)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_chunk, jobs))
    else:
        parts = [_chunk(j) for j in jobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def sample_crops(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n,32,32] model-size synthetic crops of all classes (no labels), e.g. for INT8 calibration."""
    return render_dataset(n, seed, workers=1)[0]
