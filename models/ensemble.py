"""Combine separately trained checkpoints into one ensemble checkpoint (served as one ONNX graph).

    python -m models.ensemble runs/seed0/best.pt runs/seed1/best.pt --out runs/ens/best.pt

Members must share the architecture and the class list. Each was trained on its own synthetic render
(its own seed), so their errors on real crops are partly independent and averaging removes them; the
zero-shot real-dev figures of every member and of the ensemble are recorded (monitoring only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from models.calibrate import fit_temperature
from models.checkpoint import load_checkpoint, save_checkpoint
from models.net import BubbleNet, Ensemble
from models.realdev import SEALED, load_real_set
from models.synth import render_dataset
from models.train import DEFAULT_REAL, predict_logits, scores


def combine(paths: list[Path]) -> tuple[Ensemble, list[dict[str, Any]]]:
    """The members as one Ensemble, and each member checkpoint's metadata."""
    members: list[BubbleNet] = []
    metas: list[dict[str, Any]] = []
    for p in paths:
        model, meta = load_checkpoint(p)
        if not isinstance(model, BubbleNet):
            raise ValueError(f"{p}: already an ensemble ({meta['arch']}); combine single models")
        if metas and (meta["arch"], meta["classes"]) != (metas[0]["arch"], metas[0]["classes"]):
            raise ValueError(f"{p}: arch/classes {meta['arch']}/{meta['classes']} differ from the first member's")
        members.append(model)
        metas.append(meta)
    return Ensemble(members).eval(), metas


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("members", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--real-labels", type=Path, default=DEFAULT_REAL)
    ap.add_argument("--val-size", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=99)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model, metas = combine(args.members)
    first = metas[0]
    classes = list(first["classes"])
    arch = f"{first['arch']}*{len(args.members)}"
    x_va, y_va = render_dataset(args.val_size, seed=args.seed, classes=classes)
    val_logits = predict_logits(model, x_va)
    metrics: dict[str, object] = {"synthetic_val": scores(val_logits, y_va, classes)}
    if args.real_labels.is_file():
        real = load_real_set(args.real_labels, classes, exclude=SEALED)  # sealed: final evaluation only
        metrics["real_dev"] = scores(predict_logits(model, real.x), real.y, classes)
    metrics["members"] = [m.get("metrics") for m in metas]
    save_checkpoint(
        args.out,
        model,
        arch,
        classes,
        temperature=fit_temperature(val_logits, y_va),
        metrics=metrics,
        config={"ensemble_of": [str(p) for p in args.members], "member_config": first.get("config")},
        macs=sum(int(m.get("macs") or 0) for m in metas) or None,
        params=sum(p.numel() for p in model.parameters()),
        data="ensemble of " + " | ".join(f"[{m.get('data', '?')}]" for m in metas),
    )
    print(f"saved {args.out} ({arch}): {json.dumps({k: v for k, v in metrics.items() if k != 'members'})}", flush=True)


if __name__ == "__main__":
    main()
