"""python -m export CHECKPOINT --out models/repository [--name omr-bubble] [--version 1] [--force] ...

Exit status: 0 published; 1 a check failed (parity, onnx.checker, the service's loader): nothing written;
2 unusable input (missing checkpoint or real-dev labels, bad options).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from export.data import DEFAULT_REAL_DEV
    from export.pipeline import ALL_VARIANTS, ExportOptions

    d = ExportOptions()
    ap = argparse.ArgumentParser(prog="python -m export", description="Export a checkpoint to the model repository.")
    ap.add_argument("checkpoint", type=Path, help="a models.checkpoint file, e.g. runs/default/best.pt")
    ap.add_argument("--out", type=Path, required=True, help="model repository root, e.g. models/repository")
    ap.add_argument("--name", default=d.name, help="model name (folder under --out)")
    ap.add_argument("--version", default=d.version, help="model version (folder under <name>)")
    ap.add_argument(
        "--variants", default=",".join(d.variants), help=f"comma-separated subset of {','.join(ALL_VARIANTS)}"
    )
    ap.add_argument("--opset", type=int, default=d.opset, help="ONNX opset (>= 17)")
    ap.add_argument("--real-dev", type=Path, default=DEFAULT_REAL_DEV, help="labels.csv of the real-dev crops")
    ap.add_argument("--calibration-dir", type=Path, help="folder of PNG/JPEG crops for INT8 calibration")
    ap.add_argument("--calibration-count", type=int, default=d.calibration_count, help="calibration crops")
    ap.add_argument("--calibration-seed", type=int, default=d.calibration_seed, help="synthetic calibration seed")
    ap.add_argument("--max-batch", type=int, default=d.max_batch, help="the service's max batch (TensorRT opt)")
    ap.add_argument("--tta-default", action="store_true", help="serve with TTA when a request does not say")
    ap.add_argument("--serving", type=Path, help="review/TTA/sheet settings chosen by models.serving_fit (JSON)")
    ap.add_argument("--no-benchmark", action="store_true", help="skip the fp32 vs INT8 CPU timing")
    ap.add_argument("--threads", type=int, default=d.threads, help="ONNX Runtime threads for the checks (0 = all)")
    ap.add_argument("--force", action="store_true", help="replace an existing <name>/<version>")
    ap.add_argument("--json", action="store_true", help="print the written config.json to stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from export.pipeline import ExportOptions, export_checkpoint
    from export.torch_onnx import ExportError
    from models.labelled import LabelsError

    if not args.checkpoint.is_file():
        print(f"error: checkpoint not found: {args.checkpoint}", file=sys.stderr)
        return 2
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    opts = ExportOptions(
        name=args.name,
        version=args.version,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
        opset=args.opset,
        real_dev=args.real_dev,
        calibration_dir=args.calibration_dir,
        calibration_count=args.calibration_count,
        calibration_seed=args.calibration_seed,
        max_batch=args.max_batch,
        tta_default=args.tta_default,
        benchmark=not args.no_benchmark,
        serving=args.serving,
        threads=args.threads,
        force=args.force,
        log=log,
    )
    try:
        result = export_checkpoint(args.checkpoint, args.out, opts)
    except (LabelsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"export failed, nothing written: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.config.model_dump(mode="json"), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
