"""The synthetic question-row study runs end to end and its rates add up per kind of row."""

from __future__ import annotations

from models import questions_synth as qs
from service.settings import BUNDLED_REPOSITORY


def test_questions_synth_rates_add_up_per_kind() -> None:
    out = qs.study(BUNDLED_REPOSITORY / "omr-bubble" / "1", n_empty=30, n_hard=3, rows=40, options=4, seed=0)
    assert out["options"] == 4 and out["crops"]["hard marks"] == 3 * len(qs.HARD)
    for name in qs.VARIANTS:
        for key in (name, f"{name} + pixels"):
            rates = out[key]
            for kind in ("blank", "strong"):
                total = sum(v for k, v in rates.items() if k.startswith(f"{kind}:") and not k.endswith("context"))
                assert abs(total - 1.0) < 1e-3, (key, kind, rates)
            assert rates.get("strong: context", 0.0) == 0.0  # a row with a clear mark is never decided by context
