"""Question-level evaluation: group labelled crops into questions and judge the service's question layer.

    python -m models.questions_eval --model models/repository/omr-bubble/1 --labels ../shared/data/real-dev/labels.csv
    python -m models.questions_eval --model ... --labels ... --exclude-sources '' --json   # sealed sources too

A question is a `(sheet_id, field)` pair from the labels' `notes` (`field=<id> option=<option>`), used only where
it is *complete* (every option of it was labelled): either every crop of it was kept by a full selection
(`selection=all` / `all-detected`), or its options are all the options that the sheet's fields of the same
family (same name with digits replaced, e.g. `q12` -> `q#`) show, where that family has at least
`MIN_FAMILY` fields on the sheet (so the union of a sampled sheet's options is the real option set; a family of
a few fields, like a 10-digit ID column sampled 4 times, is not trusted). Crops without a field (`field=?`)
are left out.

Each sheet's crops are classified together (as one request would be, so sheet context is measured too) by
`models.evaluate.predict`, the service's own code path, and each question is decided by
`service.core.questions.decide_question`. Truth: the sheet's binary truth per option (the CSV `binary`
column under "ink"); 0 marked = blank, 1..max_marks = answered, more = multiple. A question is *right* when
the status and the marked options both match; *flagged* when its `review` is set. The context-free reading
(status from the per-crop `marked` alone) is reported beside it, so the layer's own effect shows.

Sealed sources are excluded by default (`--exclude-sources`, sheet-id prefixes); excluded sheets are never
decoded. Exit status 2 on unusable input.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.evaluate import OnnxModel, load_model, predict
from models.labelled import LabelledCrop, LabelsError, binary_truth, decode_crops, read_labels
from service.core.modelconfig import ModelArtifactError
from service.core.postprocess import Decision
from service.core.preprocess import prepare
from service.core.questions import DEFAULT_RULE, QuestionRule, decide_question
from service.core.sheet import crop_stats

#: sources the lead keeps sealed until the final evaluation (sheet_id prefixes)
SEALED = ("formscanner-", "omrchecker-Sandeep-1507")
FULL_SELECTIONS = {"all", "all-detected"}
MIN_FAMILY = 10

_FIELD = re.compile(r"(?:^|;\s*)field=(.*?) option=([^;]*)")
_SELECTION = re.compile(r"selection=([^;]+)")


def parse_field(notes: str) -> tuple[str, str] | None:
    """`field=<id> option=<opt>` from a labels row's notes; None where unknown (`?`) or absent."""
    m = _FIELD.search(notes)
    if m is None:
        return None
    field, option = m.group(1).strip(), m.group(2).strip()
    return None if field in ("", "?") or option in ("", "?") else (field, option)


def _family(field: str) -> str:
    return re.sub(r"\d+", "#", field)


@dataclass(frozen=True)
class LabelledQuestion:
    sheet_id: str
    field: str
    options: tuple[str, ...]
    crops: tuple[LabelledCrop, ...]


def excluded(sheet_id: str | None, prefixes: Sequence[str]) -> bool:
    return any(p and (sheet_id or "").startswith(p) for p in prefixes)


def group_questions(items: Iterable[LabelledCrop]) -> list[LabelledQuestion]:
    """Complete questions, in the CSV's order of first appearance (see the module docstring for 'complete')."""
    groups: dict[tuple[str, str], list[tuple[str, LabelledCrop]]] = {}
    for it in items:
        parsed = parse_field(it.extra.get("notes", ""))
        if parsed is None or it.sheet_id is None:
            continue
        groups.setdefault((it.sheet_id, parsed[0]), []).append((parsed[1], it))
    family_options: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    family_size: collections.Counter[tuple[str, str]] = collections.Counter()
    for (sheet, field), opts in groups.items():
        family_options[sheet, _family(field)].update(o for o, _ in opts)
        family_size[sheet, _family(field)] += 1
    out: list[LabelledQuestion] = []
    for (sheet, field), opts in groups.items():
        options = [o for o, _ in opts]
        if len(set(options)) != len(options):
            continue  # one option labelled twice: not a clean question
        full = all(
            (m := _SELECTION.search(it.extra.get("notes", ""))) is not None and m.group(1).strip() in FULL_SELECTIONS
            for _, it in opts
        )
        fam = (sheet, _family(field))
        if full or (family_size[fam] >= MIN_FAMILY and set(options) == family_options[fam]):
            out.append(LabelledQuestion(sheet, field, tuple(options), tuple(it for _, it in opts)))
    return out


def _status(n_marked: int, max_marks: int) -> str:
    return "blank" if n_marked == 0 else "answered" if n_marked <= max_marks else "multiple"


def question_rows(
    model: OnnxModel,
    items: Sequence[LabelledCrop],
    *,
    tta: bool,
    profile: str,
    max_marks: int = 1,
    rule: QuestionRule = DEFAULT_RULE,
    folds: Path | None = None,
    sealed: bool = False,
) -> list[dict[str, object]]:
    """One row per complete question: truth, the question layer's answer and the context-free reading.

    Each sheet's labelled crops (all of them, not only the complete questions') are classified together, by
    `model` itself, or with `folds` (a `models.finetune` folds folder) out of fold: each source by the fold
    model that never saw it (`sealed`: the sealed fold's sources instead of the tuning ones)."""
    questions = group_questions(items)
    if folds is not None:  # only the sheets the chosen folds (tuning or sealed) hold out can be scored
        from models.folds import read_manifest
        from models.realdev import source_of

        held = {s for fm in read_manifest(folds)[0] if fm.fold.sealed == sealed for s in fm.fold.held_out}
        questions = [q for q in questions if source_of(q.sheet_id) in held]
    sheets = {q.sheet_id for q in questions}
    used = [it for it in items if it.sheet_id in sheets]  # only sheets with complete questions are decoded
    if not used:  # e.g. the sealed sources hold no complete question: nothing to score, not an error
        return []
    crops = decode_crops(used)
    if folds is None:
        pred = predict(model, crops, tta, profile, sheets=[it.sheet_id for it in used])
        decided = list(zip(used, pred.decisions, strict=True))
    else:
        from models import loso  # out of fold: each sheet predicted by the fold model that never saw its source

        oof = loso.out_of_fold(folds, used, crops, model.config, tta, profile, sealed)
        decided = [(used[i], d) for i, d in zip(oof.index.tolist(), oof.pred.decisions, strict=True)]
    marked_truth, _ = binary_truth([it for it, _ in decided], model.config, profile)
    decisions = {it.crop_file: d for it, d in decided}
    truth = {it.crop_file: bool(t) for (it, _), t in zip(decided, marked_truth, strict=True)}
    # the pixel statistics the service computes in its decode pass, on the same model-size rows
    inner = crop_stats(prepare(crops, model.config.input))[:, 0].tolist() if crops else []
    darkness = {it.crop_file: d for it, d in zip(used, inner, strict=True)}
    return score_questions([q for q in questions if all(c.crop_file in decisions for c in q.crops)],
                           decisions, truth, max_marks, rule, darkness)  # fmt: skip


def score_questions(
    questions: Sequence[LabelledQuestion],
    decisions: Mapping[str, Decision],
    truth: Mapping[str, bool],
    max_marks: int = 1,
    rule: QuestionRule = DEFAULT_RULE,
    darkness: Mapping[str, float] | None = None,
) -> list[dict[str, object]]:
    """Rows for `question_report` from per-crop decisions and truths keyed by `crop_file`: the entry point for
    decisions made elsewhere (e.g. out-of-fold predictions of `models.evaluate`, each sheet classified
    together). darkness: `crop_stats(...)[:, 0]` per crop_file, as the service passes it (None: without)."""
    rows: list[dict[str, object]] = []
    for q in questions:
        options = [decisions[c.crop_file] for c in q.crops]
        dark = None if darkness is None else [darkness[c.crop_file] for c in q.crops]
        status, marked, candidates, confidence, decided_by, reasons = decide_question(options, max_marks, rule, dark)
        true_marked = sorted(o for o, c in zip(q.options, q.crops, strict=True) if truth[c.crop_file])
        crop_marked = sorted(o for o, d in zip(q.options, options, strict=True) if d.marked)
        got = sorted(q.options[i] for i in marked)
        true_status, crop_status = _status(len(true_marked), max_marks), _status(len(crop_marked), max_marks)
        rows.append(
            {
                "sheet_id": q.sheet_id,
                "question": q.field,
                "options": len(q.options),
                "truth_status": true_status,
                "truth_marked": true_marked,
                "status": status,
                "marked": got,
                "candidates": sorted(q.options[i] for i in candidates),
                "confidence": round(confidence, 4),
                "decided_by": decided_by,
                "review": bool(reasons),
                "review_reasons": reasons,
                "right": status == true_status and got == true_marked,
                "crop_status": crop_status,
                "crop_right": crop_status == true_status and crop_marked == true_marked,
                "marked_probability": {
                    o: round(d.marked_probability, 4) for o, d in zip(q.options, options, strict=True)
                },
            }
        )
    return rows


def _detection(rows: Sequence[dict[str, object]], status: str) -> dict[str, object]:
    truly = [r for r in rows if r["truth_status"] == status]
    called = [r for r in rows if r["status"] == status]
    hit = sum(r["status"] == status for r in truly)
    return {
        "support": len(truly),
        "predicted": len(called),
        "recall": hit / len(truly) if truly else None,
        "precision": sum(r["truth_status"] == status for r in called) / len(called) if called else None,
    }


def question_report(rows: Sequence[dict[str, object]]) -> dict[str, object]:
    """Question-level figures from `question_rows` (the lead's `models.evaluate` may call this too)."""
    n = len(rows)
    right = sum(bool(r["right"]) for r in rows)
    flagged = sum(bool(r["review"]) for r in rows)
    wrong_unflagged = [f"{r['sheet_id']}/{r['question']}" for r in rows if not r["right"] and not r["review"]]
    confusion: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in rows:
        confusion[str(r["truth_status"])][str(r["status"])] += 1
    per_sheet: dict[str, dict[str, int]] = {}
    for r in rows:
        s = per_sheet.setdefault(str(r["sheet_id"]), {"questions": 0, "right": 0, "flagged": 0, "crop_right": 0})
        s["questions"] += 1
        s["right"] += int(bool(r["right"]))
        s["flagged"] += int(bool(r["review"]))
        s["crop_right"] += int(bool(r["crop_right"]))
    return {
        "questions": n,
        "sheets": len(per_sheet),
        "accuracy": right / n if n else None,
        "right_or_flagged": sum(bool(r["right"]) or bool(r["review"]) for r in rows) / n if n else None,
        "review_rate": flagged / n if n else None,
        "flagged": flagged,
        "flagged_right": sum(bool(r["review"]) and bool(r["right"]) for r in rows),
        "wrong": n - right,
        "wrong_unflagged": wrong_unflagged,
        "context_decisions": sum(r["decided_by"] == "context" for r in rows),
        "crop_reading_accuracy": sum(bool(r["crop_right"]) for r in rows) / n if n else None,
        "blank": _detection(rows, "blank"),
        "multiple": _detection(rows, "multiple"),
        "answered": _detection(rows, "answered"),
        "status_confusion_truth_pred": {k: dict(v) for k, v in confusion.items()},
        "per_sheet": per_sheet,
    }


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f} %"


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"questions {r['questions']} on {r['sheets']} sheets (complete questions only); {r.get('predictions', '')}",
        f"question accuracy       {_pct(r['accuracy'])}  (context-free per-crop reading: "
        f"{_pct(r['crop_reading_accuracy'])})",
        f"right or flagged        {_pct(r['right_or_flagged'])}",
        f"flagged for review      {_pct(r['review_rate'])}  ({r['flagged']}, of which right {r['flagged_right']})",
        f"decided by context      {r['context_decisions']}",
        f"wrong and not flagged   {len(r['wrong_unflagged'])}  {r['wrong_unflagged'][:10]}",
    ]
    for status in ("blank", "answered", "multiple"):
        d = r[status]
        lines.append(
            f"{status:<9} support {d['support']:>3}  predicted {d['predicted']:>3}  "
            f"recall {_pct(d['recall'])}  precision {_pct(d['precision'])}"
        )
    lines.append(f"status confusion (truth -> predicted): {r['status_confusion_truth_pred']}")
    for sheet, s in r["per_sheet"].items():
        lines.append(
            f"  {sheet:<40} {s['right']}/{s['questions']} right, {s['flagged']} flagged (per-crop {s['crop_right']})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="model version folder or bare .onnx file")
    ap.add_argument("--labels", type=Path, required=True, help="labels CSV with sheet_id and notes field=/option=")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="default: the config's")
    ap.add_argument("--profile", default=None, help="binary reading (default: the config's default_profile)")
    ap.add_argument("--max-marks", type=int, default=1, help="marks a question admits (real-dev: single choice)")
    ap.add_argument(
        "--exclude-sources",
        default=",".join(SEALED),
        help=f"comma-separated sheet_id prefixes never decoded (default: the sealed {','.join(SEALED)}; '' = none)",
    )
    ap.add_argument("--folds", type=Path, default=None, help="models.finetune folds folder: out-of-fold predictions")
    ap.add_argument("--sealed", action="store_true", help="with --folds: score the sealed fold (the final evaluation)")
    ap.add_argument("--out", type=Path, default=None, help="write questions.json (rows + report) here")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)
    prefixes = [p.strip() for p in args.exclude_sources.split(",") if p.strip()]
    try:
        if args.max_marks < 1:
            raise LabelsError(f"--max-marks must be >= 1, got {args.max_marks}")
        model = load_model(args.model)
        cfg = model.config
        profile = args.profile or cfg.default_profile
        if profile not in cfg.profiles:
            raise LabelsError(f"unknown profile {profile!r}; the model has {sorted(cfg.profiles)}")
        items = [it for it in read_labels(args.labels, cfg.classes) if not excluded(it.sheet_id, prefixes)]
        tta = cfg.tta.default if args.tta is None else args.tta
        if args.sealed and (args.folds is None or prefixes):
            raise LabelsError("--sealed needs --folds and --exclude-sources '' (the sealed sources must be read)")
        rows = question_rows(
            model, items, tta=tta, profile=profile, max_marks=args.max_marks, folds=args.folds, sealed=args.sealed
        )
    except (LabelsError, ModelArtifactError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {**question_report(rows), "model": f"{cfg.name}/{cfg.version}", "tta": tta, "profile": profile}
    report["excluded_sources"] = prefixes
    report["predictions"] = (
        "bundled model (trained on real-dev: NOT an estimate)"
        if args.folds is None
        else (f"out of fold ({'sealed' if args.sealed else 'tuning'} folds of {args.folds})")
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "questions.json").write_text(json.dumps({"report": report, "rows": rows}, indent=1))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
