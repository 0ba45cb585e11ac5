"""`Classification.stats`: the sheet context's measurement when it made one, else measured on first use."""

from __future__ import annotations

import numpy as np

from service.core.result import Classification
from service.core.sheet import crop_stats


def _result(rows: np.ndarray | None, measured: np.ndarray | None = None) -> Classification:
    n = 0 if rows is None else len(rows)
    probs = np.full((n, 8), 1 / 8, np.float32)
    return Classification(None, [str(i) for i in range(n)], [], probs, False, "fill", None, rows, measured)  # type: ignore[arg-type]


def test_stats_are_measured_on_the_rows_when_first_asked_for() -> None:
    rows = np.full((1, 32, 32), 230, np.uint8)
    rows[0, 12:20, 12:20] = 20  # a dark centre: inner darkness well above 0
    result = _result(rows)
    assert "stats" not in result.__dict__  # nothing measured until asked
    stats = result.stats
    np.testing.assert_array_equal(stats, crop_stats(rows))
    assert stats[0, 0] > 0.2
    assert result.stats is stats  # once


def test_the_sheet_contexts_measurement_is_used_as_is() -> None:
    rows = np.zeros((2, 32, 32), np.uint8)
    measured = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _result(rows, measured).stats is measured
    assert _result(None).stats is None
