"""Contact sheets: synthetic crops per class beside real ones, for a person to compare.

python -m models.synth.contact --out runs/contact [--per-class 16] [--seed 0] [--real-labels CSV]
    [--family halftone|colour|pencil|stroke|tick|dot|erased|scribble]

With --family, the synthetic sheet shows only that family (every class it draws) and is written as
synthetic-<family>.png. Real sheets never show the sealed sources (SEALED prefixes), kept for the final evaluation.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from models.synth.families import FAMILIES, FAMILY_LABELS
from models.synth.render import render_sample
from service.core.taxonomy import CLASSES

TILE = 64
#: sheet_id prefixes kept sealed for the final evaluation: never shown
SEALED = ("formscanner-", "omrchecker-Sandeep-1507")


def _tile(img: np.ndarray) -> np.ndarray:
    return np.pad(cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA), 2, constant_values=255)


def _row(label: str, tiles: list[np.ndarray], per_row: int) -> np.ndarray:
    tiles = tiles + [np.full((TILE + 4, TILE + 4), 200, np.uint8)] * (per_row - len(tiles))
    strip = np.hstack(tiles[:per_row])
    head = np.full((TILE + 4, 110), 255, np.uint8)
    cv2.putText(head, label, (4, TILE // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
    return np.hstack([head, strip])


def synthetic_sheet(per_class: int, seed: int, family: str | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (FAMILY_LABELS[family] or CLASSES) if family else CLASSES
    rows = []
    for c in labels:
        tiles = [_tile(render_sample(c, rng, family=family).image) for _ in range(per_class)]
        rows.append(_row(c if not family else f"{c} {family}"[:16], tiles, per_class))
    return np.vstack(rows)


def real_sheet(labels_csv: Path, per_class: int, seed: int) -> np.ndarray:
    rows = [r for r in csv.DictReader(labels_csv.open()) if not r.get("sheet_id", "").startswith(SEALED)]
    rng = np.random.default_rng(seed)
    out = []
    for c in CLASSES:
        rs = [r for r in rows if r["label"] == c]
        pick = rng.permutation(len(rs))[:per_class]
        tiles = [_tile(cv2.imread(str(labels_csv.parent / rs[i]["crop_file"]), cv2.IMREAD_GRAYSCALE)) for i in pick]
        out.append(_row(c + " (real)", tiles, per_class))
    return np.vstack(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/contact"))
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-labels", type=Path, default=None, help="labels CSV of real crops to show alongside")
    ap.add_argument("--family", choices=FAMILIES, default=None, help="only this renderer family")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"synthetic-{args.family}.png" if args.family else "synthetic.png"
    cv2.imwrite(str(args.out / name), synthetic_sheet(args.per_class, args.seed, args.family))
    if args.real_labels:
        cv2.imwrite(str(args.out / "real.png"), real_sheet(args.real_labels, args.per_class, args.seed))
    print(f"contact sheets written to {args.out}")


if __name__ == "__main__":
    main()
