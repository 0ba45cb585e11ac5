"""The renderer: every class, the intended coverage, determinism, sizes, and the dataset contract."""

from __future__ import annotations

import numpy as np
import pytest

from models.synth import render_dataset, render_sample, sample_crops
from models.synth.marks import COVERAGE
from models.synth.measure import mark_darkness, pixel_coverage
from service.core.taxonomy import CLASSES

#: coverage measured on the pixels may stray a little from the class band (anti-aliased, grainy edges)
_SLACK = 0.06


@pytest.mark.parametrize("label", CLASSES)
def test_render_sample_each_class_has_intended_coverage(label: str) -> None:
    """Coverage measured on the rendered canvas pixels (marked vs unmarked), not the renderer's own number."""
    rng = np.random.default_rng(123)
    for _ in range(25):
        s = render_sample(label, rng)
        assert s.label == label
        assert s.image.dtype == np.uint8 and s.image.ndim == 2
        assert 16 <= s.image.shape[0] <= 128 and s.image.shape[0] == s.image.shape[1]
        cov = pixel_coverage(s)
        if label in COVERAGE:
            lo, hi = COVERAGE[label]
            assert lo - _SLACK <= cov <= hi + _SLACK, (label, cov)
        elif label in ("empty", "no_bubble"):
            assert mark_darkness(s).max() == 0.0  # no respondent ink at all
        elif label == "erased":
            assert np.percentile(mark_darkness(s)[s.info["interior"]], 95) <= 0.3  # only faint residue


def test_render_sample_filled_is_darker_than_empty_on_average() -> None:
    rng = np.random.default_rng(7)
    filled = np.mean([render_sample("filled", rng, native=32).image.mean() for _ in range(40)])
    empty = np.mean([render_sample("empty", rng, native=32).image.mean() for _ in range(40)])
    assert filled < empty - 20


def test_render_dataset_same_seed_same_data_any_worker_count() -> None:
    x1, y1 = render_dataset(1100, seed=5, workers=1)
    x2, y2 = render_dataset(1100, seed=5, workers=2)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = render_dataset(1100, seed=6, workers=1)
    assert not np.array_equal(x1, x3)


def test_render_dataset_is_class_balanced_at_model_size() -> None:
    x, y = render_dataset(len(CLASSES) * 20, seed=1, workers=1)
    assert x.shape == (len(CLASSES) * 20, 32, 32) and x.dtype == np.uint8
    assert np.bincount(y, minlength=len(CLASSES)).tolist() == [20] * len(CLASSES)


def test_sample_crops_returns_model_size_uint8() -> None:
    x = sample_crops(16, seed=0)
    assert x.shape == (16, 32, 32) and x.dtype == np.uint8 and x.std() > 0


def test_capture_sharpening_overshoots_at_an_edge_and_keeps_flat_paper() -> None:
    """Unsharp masking gives a step edge a dark and a light halo, as phone photos show; flat areas stay flat."""
    from models.synth.capture import _sharpen

    img = np.full((64, 64), 0.9, np.float32)
    img[:, 32:] = 0.3
    out = _sharpen(img, np.random.default_rng(0))
    assert out[:, 28:32].max() > 0.9 + 0.02  # light halo on the paper side
    assert out[:, 32:36].min() < 0.3 - 0.02  # dark halo on the ink side
    assert np.allclose(out[:, :16], 0.9, atol=1e-3) and np.allclose(out[:, 48:], 0.3, atol=1e-3)
