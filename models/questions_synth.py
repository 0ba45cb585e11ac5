"""The question rule on rows of synthetic crops: how often context helps, and how often it errs.

    python -m models.questions_synth --model models/repository/omr-bubble/1

Crops come from `models.synth` (empties; hard marks: pencil fills and partials, ticks, single strokes, halftoned
fills; clear fills), each classified alone (context-free) by the service's code path (`models.evaluate.predict`).
Rows of `--options` options are drawn from them: blank rows (all empty), rows whose only mark its crop missed,
rows with one strong mark. Every crop of a row is rendered independently (its own print, paper and capture),
so rows are far less alike than a real sheet's: the rates are pessimistic for any rule that compares options.
Each rule variant is scored on the same rows. Not a substitute for out-of-fold real rows (`models.questions_eval
--folds`), but it shows the trade-off of each parameter.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.evaluate import load_model, predict
from models.synth.render import render_sample
from service.core.preprocess import prepare
from service.core.questions import DEFAULT_RULE, QuestionRule, decide_question
from service.core.sheet import crop_stats

HARD = (("filled", "pencil"), ("partial", "pencil"), ("cross", "tick"), ("cross", "stroke"), ("filled", "halftone"))
VARIANTS: dict[str, QuestionRule] = {
    "default": DEFAULT_RULE,
    "no flag_context": replace(DEFAULT_RULE, flag_context=False),
    "darkness_gap 0.10": replace(DEFAULT_RULE, darkness_gap=0.10),
    "outlier_min_p 0.2, gap 4, clean 0.02": replace(DEFAULT_RULE, outlier_min_p=0.2, outlier_gap=4.0, clean_p=0.02),
}


def _classified(model, samples):
    imgs = [s.image for s in samples]
    pred = predict(model, imgs, False, model.config.default_profile)  # no sheets: every crop alone
    return pred.decisions, crop_stats(prepare(imgs, model.config.input))[:, 0].tolist()


def study(model_dir: Path, n_empty: int, n_hard: int, rows: int, options: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    model = load_model(model_dir)
    empty, e_dark = _classified(model, [render_sample("empty", rng) for _ in range(n_empty)])
    hard, h_dark = _classified(model, [render_sample(lab, rng, family=f) for lab, f in HARD for _ in range(n_hard)])
    fills, f_dark = _classified(model, [render_sample("filled", rng) for _ in range(n_hard)])
    missed = [j for j, d in enumerate(hard) if not d.marked]
    strong = [j for j, d in enumerate(fills) if d.marked_probability >= DEFAULT_RULE.strong_p]
    draw = np.random.default_rng(seed + 1)
    cases = []  # (kind, options, darkness, position of the true mark or None)
    for kind, pool, dark, picks in (("blank", None, None, None), ("missed", hard, h_dark, missed),
                                    ("strong", fills, f_dark, strong)):  # fmt: skip
        for _ in range(rows if picks is None or picks else 0):
            idx = draw.choice(len(empty), options - (picks is not None), replace=False).tolist()
            opts, dk, pos = [empty[i] for i in idx], [e_dark[i] for i in idx], None
            if picks is not None:
                j, pos = picks[int(draw.integers(len(picks)))], int(draw.integers(options))
                opts.insert(pos, pool[j])
                dk.insert(pos, dark[j])
            cases.append((kind, opts, dk, pos))
    out: dict[str, object] = {
        "crops": {"empty": n_empty, "hard marks": len(hard), "hard marks missed alone": len(missed)},
        "rows_per_kind": rows,
        "options": options,
    }
    for name, rule in VARIANTS.items():
        for px in (False, True):
            tally: collections.Counter[str] = collections.Counter()
            for kind, opts, dk, pos in cases:
                status, marked, _, _, decided_by, reasons = decide_question(opts, 1, rule, dk if px else None)
                right = marked == ([] if pos is None else [pos]) and status == ("blank" if pos is None else "answered")
                tally[f"{kind}: {'right' if right else 'wrong'}{' flagged' if reasons else ''}"] += 1
                tally[f"{kind}: context"] += decided_by == "context"
            per_kind = collections.Counter(kind for kind, *_ in cases)
            out[f"{name}{' + pixels' if px else ''}"] = {
                k: round(v / per_kind[k.split(":")[0]], 4) for k, v in sorted(tally.items())
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/repository/omr-bubble/1"))
    ap.add_argument("--empty", type=int, default=1500, help="empty crops rendered")
    ap.add_argument("--hard", type=int, default=60, help="crops rendered per hard-mark family")
    ap.add_argument("--rows", type=int, default=3000, help="rows drawn per kind")
    ap.add_argument("--options", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    if args.empty < args.options or min(args.hard, args.rows) < 1 or args.options < 2:
        ap.error("need --empty >= --options >= 2 and --hard, --rows >= 1")
    print(json.dumps(study(args.model, args.empty, args.hard, args.rows, args.options, args.seed), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
