"""`export_checkpoint`: checkpoint -> checked ONNX variants -> a published model repository entry.

Order of work (each step must pass before the next; nothing is written until all have):
  1. load the checkpoint (eval mode) and build the config skeleton from its metadata;
  2. fp32 export + onnx.checker + parity vs PyTorch (random and real crops, batches 1/7/64/513);
  3. fp16 (parity with a looser tolerance) and INT8 static QDQ (agreement + the real-dev binary gate);
  4. real-dev metrics per variant, through the service's preprocessing and postprocessing;
  5. single-thread CPU timing of fp32 vs INT8 at batch 256;
  6. write files + config.json atomically and re-check them through the service's loaders.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import bench, data, parity, variants
from export.repository import FILES, Built, write_version
from export.torch_onnx import INPUT_NAME, OUTPUT_NAME, ExportError, to_onnx
from models.checkpoint import load_checkpoint
from service.core.modelconfig import (
    InputSpec,
    ModelConfig,
    PreprocessSpec,
    ReviewSpec,
    SheetSpec,
    TTASpec,
    VariantSpec,
)
from service.core.taxonomy import DEFAULT_PROFILE, profile_maps
from service.core.trt_cache import tensorrt_spec
from service.settings import Settings

ALL_VARIANTS = ("fp32", "int8", "fp16")
PROVIDERS = {
    "fp32": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "int8": ("CPUExecutionProvider",),
    "fp16": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
}
#: INT8 argmax agreement with PyTorch on real crops; the binding rule is the real-dev binary gate
INT8 = parity.Tolerance(atol=None, min_agreement=0.95, enforce_random_agreement=False)


@dataclass
class ExportOptions:
    name: str = "omr-bubble"
    version: str = "1"
    variants: Sequence[str] = ALL_VARIANTS
    opset: int = 18
    real_dev: Path = data.DEFAULT_REAL_DEV
    calibration_dir: Path | None = None
    calibration_count: int = 1024
    calibration_seed: int = 7
    #: the service's max batch (rows); TensorRT's opt shape, and x TTA views its max shape
    max_batch: int = Settings.model_fields["max_batch_size"].default
    tta_default: bool = False
    #: INT8 is offered only if its real-dev binary accuracy is at most this far below fp32's (0.1 point)
    int8_max_binary_drop: float = 0.001
    benchmark: bool = True
    #: serving decisions chosen on out-of-fold evidence (`models.serving_fit`): a JSON object with optional
    #: "review", "tta" and "sheet" blocks of the model config; None = the config's defaults
    serving: Path | None = None
    threads: int = 0
    force: bool = False
    log: Callable[[str], None] = field(default=print)


@dataclass(frozen=True)
class ExportResult:
    version_dir: Path
    config: ModelConfig


def export_checkpoint(checkpoint: Path, repository: Path, opts: ExportOptions | None = None) -> ExportResult:
    """Export, check and publish `checkpoint` as `<repository>/<name>/<version>/`; ExportError if a check fails."""
    opts = opts or ExportOptions()
    threads = torch.get_num_threads()
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    try:
        return _export(checkpoint, repository, opts)
    finally:
        torch.set_num_threads(threads)


def _export(checkpoint: Path, repository: Path, opts: ExportOptions) -> ExportResult:
    unknown = set(opts.variants) - set(ALL_VARIANTS)
    if "fp32" not in opts.variants or unknown:
        raise ExportError(f"variants must include fp32 and be among {ALL_VARIANTS}; got {list(opts.variants)}")
    if (repository / opts.name / opts.version).exists() and not opts.force:
        raise ExportError(f"{repository / opts.name / opts.version} exists; pass --force to replace it")
    log = opts.log
    model, meta = load_checkpoint(checkpoint)
    classes = tuple(meta["classes"])
    inp = InputSpec(name=INPUT_NAME, height=model.input_size, width=model.input_size)
    pre = PreprocessSpec()
    real = data.load_labelled(opts.real_dev, classes, inp, pre)
    probe = {"random": data.random_inputs(max(parity.BATCH_SIZES), inp), "real": real.x}

    @torch.no_grad()
    def reference(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    config = _skeleton(opts, meta, classes, inp, pre, checkpoint)
    built: dict[str, Built] = {}
    specs: dict[str, VariantSpec] = {}
    rejected: dict[str, str] = {}

    fp32 = to_onnx(model, model.input_size, opts.opset)
    specs["fp32"] = _check("fp32", fp32, reference, probe, parity.FP32, real, config, opts, built, {})
    log(f"fp32: parity ok {_brief(specs['fp32'])}")
    if "fp16" in opts.variants:
        build = {"method": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}
        specs["fp16"] = _check(
            "fp16", variants.to_fp16(fp32), reference, probe, parity.FP16, real, config, opts, built, build
        )
        log(f"fp16: parity ok {_brief(specs['fp16'])}")
    timed = {"fp32": fp32}
    if "int8" in opts.variants:
        spec, reason, timed["int8"] = _int8(fp32, reference, probe, real, config, opts, built, specs["fp32"])
        if spec is None:
            rejected["int8"] = reason
            log(f"int8: NOT offered: {reason}")
        else:
            specs["int8"] = spec
            log(f"int8: offered {_brief(spec)}")
    if opts.benchmark:
        timings = bench.measure(timed, log)
        specs = {k: v.model_copy(update={"benchmark": timings[k]}) if k in timings else v for k, v in specs.items()}
        if "int8" in rejected and "int8" in timings:
            rejected["int8"] += f" (it ran x{timings['int8']['speedup_vs_fp32']} the speed of fp32 on this CPU)"

    config = config.model_copy(
        update={
            "variants": specs,
            "rejected_variants": rejected,
            "tensorrt": tensorrt_spec(opts.max_batch, len(config.tta.views), fp16="fp16" in specs),
            "metrics": _metrics_block(_real_dev_report(built["fp32"].probe_logits, real, config), meta),
        }
    )
    ModelConfig.model_validate(config.model_dump())  # re-run validators on the assembled config
    version_dir, config = write_version(repository, config, {k: built[k] for k in specs}, real.x, opts.force)
    log(f"wrote {version_dir} ({', '.join(f'{k}={v.file}' for k, v in config.variants.items())})")
    return ExportResult(version_dir, config)


def _check(name, proto, reference, probe, tol, real, config, opts, built, build) -> VariantSpec:
    """Parity-check one variant, measure it on real-dev, remember its probe logits; raise if it fails."""
    sess = parity.session(proto.SerializeToString(), opts.threads)
    result = parity.check(sess, reference, probe, tol)
    if not result.passed:
        raise ExportError(f"{name} parity failed: {'; '.join(result.problems)}")
    (logits,) = sess.run([OUTPUT_NAME], {INPUT_NAME: real.x})
    built[name] = Built(proto, np.asarray(logits))
    return VariantSpec(
        file=FILES[name],
        precision=name,
        parity=result.report,
        metrics=_variant_metrics(np.asarray(logits), real, config),
        providers=PROVIDERS[name],
        build=build,
    )


def _int8(
    fp32, reference, probe, real, config, opts, built, fp32_spec
) -> tuple[VariantSpec | None, str, onnx.ModelProto]:
    """Quantise, pick per-channel or per-tensor, check; (spec, "", proto) or (None, why not offered, proto)."""
    calib, source = data.calibration_crops(
        opts.calibration_count, opts.calibration_seed, config.input, config.preprocess, opts.calibration_dir
    )
    heldout, _ = data.calibration_crops(512, opts.calibration_seed + 1, config.input, config.preprocess)
    ref_top = reference(heldout).argmax(1)
    candidates, agreement = {}, {}
    for method in variants.CALIBRATION_METHODS:
        for per_channel in (True, False):
            proto = variants.quantize_int8(fp32, calib, per_channel, method)
            sess = parity.session(proto.SerializeToString(), opts.threads)
            (logits,) = sess.run([OUTPUT_NAME], {INPUT_NAME: heldout})
            key = f"{method}/{'per_channel' if per_channel else 'per_tensor'}"
            candidates[key], agreement[key] = proto, float((np.asarray(logits).argmax(1) == ref_top).mean())
    best = max(candidates, key=lambda k: agreement[k])  # first listed wins a tie: MinMax, per-channel
    method, granularity = best.split("/")
    build = variants.int8_settings(granularity == "per_channel", method, source, agreement)
    try:
        spec = _check("int8", candidates[best], reference, probe, INT8, real, config, opts, built, build)
    except ExportError as exc:
        return None, str(exc), candidates[best]
    drop = float(fp32_spec.metrics["binary_accuracy"]) - float(spec.metrics["binary_accuracy"])
    if drop > opts.int8_max_binary_drop + 1e-12:
        built.pop("int8")
        return (
            None,
            (
                f"real-dev binary accuracy {spec.metrics['binary_accuracy']:.4f} vs fp32 "
                f"{fp32_spec.metrics['binary_accuracy']:.4f}: drop {100 * drop:.2f} points > "
                f"{100 * opts.int8_max_binary_drop:.2f}"
            ),
            candidates[best],
        )
    return spec, "", candidates[best]


def _metrics_block(report: dict[str, object], meta: dict[str, object]) -> dict[str, object]:
    """Real-dev figures, labelled honestly: once the checkpoint was fine-tuned on real-dev, accuracy measured on
    it is training accuracy, and the generalisation estimate is the checkpoint's cross-validation."""
    ckpt_metrics = meta.get("metrics") or {}
    assert isinstance(ckpt_metrics, dict)
    trained_on = "real_dev_cv" in ckpt_metrics
    block: dict[str, object] = {
        "real_dev": {**report, "variant": "fp32"},
        "real_dev_is_training_data": trained_on,
    }
    if trained_on:
        block["real_dev_leave_one_source_out"] = ckpt_metrics["real_dev_cv"]
    return block


def _real_dev_report(logits: np.ndarray, real: data.LabelledSet, config: ModelConfig) -> dict[str, object]:
    """The full real-dev report of `models.evaluate` (one metrics implementation for the whole project)."""
    from models.evaluate import evaluate_arrays

    report = evaluate_arrays(logits, real.y, config, DEFAULT_PROFILE, real.binary, real.stats, real.sizes, real.sheets)
    report.update(source=real.source, profile=DEFAULT_PROFILE, tta=False, temperature=config.temperature)
    return report


def _variant_metrics(logits: np.ndarray, real: data.LabelledSet, config: ModelConfig) -> dict[str, float | int]:
    r = _real_dev_report(logits, real, config)
    keys = ("n", "accuracy", "binary_accuracy", "macro_f1_present", "ece", "nll", "review_flagged")
    return {k: r[k] for k in keys if k in r}  # type: ignore[misc]


def _brief(spec: VariantSpec) -> str:
    p, m = spec.parity, spec.metrics
    return (
        f"(real max|diff| {p.get('real_max_abs_diff', 0):.2e}, real argmax agreement {p.get('real_argmax_agreement')}, "
        f"real-dev binary acc {m.get('binary_accuracy', 0):.4f}, acc {m.get('accuracy', 0):.4f})"
    )


def _skeleton(opts, meta, classes, inp, pre, checkpoint: Path) -> ModelConfig:
    """Everything but the variants' results: taken from the checkpoint and the project's defaults."""
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    training = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": digest,
        "arch": meta.get("arch"),
        "data": meta.get("data", "unknown"),
        "macs_per_crop": meta.get("macs"),
        "params": meta.get("params"),
        "train_config": meta.get("config", {}),
        "checkpoint_metrics": meta.get("metrics", {}),
        "serving_evidence": json.loads(opts.serving.read_text()).get("evidence") if opts.serving else None,
    }
    versions = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": str(opts.opset),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
    }
    return ModelConfig(
        name=opts.name,
        version=opts.version,
        input=inp,
        output_name=OUTPUT_NAME,
        classes=classes,
        preprocess=pre,
        profiles=profile_maps(classes),
        default_profile=DEFAULT_PROFILE,
        temperature=float(meta.get("temperature", 1.0)),
        **_serving(opts),
        variants={"fp32": VariantSpec(file=FILES["fp32"], precision="fp32")},
        training=training,
        versions=versions,
    )


def _serving(opts: ExportOptions) -> dict[str, object]:
    """The review / TTA / sheet blocks: defaults, overridden by the serving JSON (`--tta-default` wins)."""
    chosen = json.loads(opts.serving.read_text()) if opts.serving is not None else {}
    unknown = set(chosen) - {"review", "tta", "sheet", "evidence"}
    if unknown:
        raise ExportError(f"{opts.serving}: unknown serving block(s) {sorted(unknown)}")
    tta = {**chosen.get("tta", {}), "default": opts.tta_default or bool(chosen.get("tta", {}).get("default", False))}
    return {
        "review": ReviewSpec(**chosen.get("review", {})),
        "tta": TTASpec(**tta),
        "sheet": SheetSpec(**chosen.get("sheet", {})),
    }
