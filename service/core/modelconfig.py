"""The model repository contract: `<repo>/<name>/<version>/{model.onnx, config.json}` (Triton's layout).

`export/` writes `config.json`; the service reads it and must need nothing else to serve the model. The
same facts are mirrored in the ONNX file's `metadata_props` (key `omr.config`, the JSON below) so a bare
`.onnx` file describes itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "config.json"
METADATA_KEY = "omr.config"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """The single model input: a float tensor NCHW with a dynamic batch axis."""

    name: str = "input"
    dtype: Literal["float32", "float16"] = "float32"
    layout: Literal["NCHW"] = "NCHW"
    channels: Literal[1] = 1
    height: int = Field(32, ge=8, le=256)
    width: int = Field(32, ge=8, le=256)


class PreprocessSpec(_Strict):
    """How a decoded uint8 grayscale crop becomes model input (implemented in `preprocess.py`).

    resize: "area" when shrinking, "linear" when enlarging (OpenCV INTER_AREA / INTER_LINEAR), to
    (height, width) ignoring aspect ratio; then value = (pixel / 255 - mean) / std.
    """

    color: Literal["gray"] = "gray"
    resize: Literal["area_linear"] = "area_linear"
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class ReviewSpec(_Strict):
    """When a result is flagged for human review."""

    min_confidence: float = Field(0.80, ge=0, le=1)
    #: review when |marked_probability - 0.5| * 2 is below this
    min_binary_margin: float = Field(0.60, ge=0, le=1)
    #: review when TTA views disagree on the label (only when TTA ran)
    tta_disagreement: bool = True


class TTASpec(_Strict):
    default: bool = False
    #: names from `service.core.tta.VIEWS`
    views: tuple[str, ...] = ("identity", "shift_left", "shift_right", "shift_up", "shift_down")
    #: how TTA is used when it runs: "average" decides from the mean over the views' probabilities;
    #: "review" decides from the identity view alone, and the views' disagreement only feeds the review flag
    mode: Literal["average", "review"] = "average"

    @model_validator(mode="after")
    def _identity_for_review(self) -> TTASpec:
        if self.mode == "review" and "identity" not in self.views:
            raise ValueError('tta.mode "review" decides from the identity view: views must include "identity"')
        return self


class SheetSpec(_Strict):
    """Per-sheet adaptation of the binary decision (`service.core.sheet`): a request is one sheet.

    Within a request, crops of similar native size form a group; the group's *confident* crops
    (marked_probability <= confident_unmarked or >= confident_marked) give two reference levels of the
    inner-disc darkness. When at least `min_reference` crops stand on each side and the levels are at
    least `min_gap` apart, a *doubtful* crop (between the two confidence bounds) whose darkness is at or
    above `threshold` of the way from the unmarked level to the marked level is decided marked (and, with
    `move_to_unmarked`, a doubtful marked crop below it unmarked). With enough confident unmarked crops but
    too few confident marked ones, only a doubtful crop `jump_without_marked` darker than the unmarked level
    is decided marked. Otherwise the model decides alone (docs/api.md, "Decision and sheet context").
    """

    enabled: bool = True
    confident_unmarked: float = Field(0.05, ge=0, le=0.5)
    confident_marked: float = Field(0.95, ge=0.5, le=1)
    #: confident crops needed on each side before the two-level rule is used (unmarked side: before any)
    min_reference: int = Field(3, ge=1)
    #: least distance between the unmarked and marked reference darkness levels (darkness runs 0 to 1)
    min_gap: float = Field(0.10, ge=0, le=1)
    #: unmarked level = this quantile of the confident unmarked crops' darkness, marked level = 1 - it of
    #: the confident marked ones (near max / min: conservative)
    reference_quantile: float = Field(0.95, ge=0.5, le=1)
    #: where between the two levels the threshold sits (0 = unmarked level, 1 = marked level)
    threshold: float = Field(0.5, gt=0, lt=1)
    #: also un-mark doubtful marked crops that look like the sheet's empties (off by default: every binary
    #: error on unseen sheets so far was a missed mark, and thin ticks are light by this statistic)
    move_to_unmarked: bool = False
    #: with `move_to_unmarked`: a doubtful marked crop is un-marked only below this fraction of the way from
    #: the unmarked to the marked level (lower than `threshold`: it must look like the sheet's empties)
    unmark_threshold: float = Field(0.25, gt=0, lt=1)
    #: crops whose native sides (or aspect ratios) differ by more than this factor are separate groups
    size_ratio: float = Field(1.25, ge=1)
    #: a group with enough confident unmarked crops but too few confident marked ones (a sheet whose every
    #: mark is doubtful to the model): a doubtful crop at least this much darker than the unmarked level is
    #: decided marked. None: such groups keep the model's decisions
    jump_without_marked: float | None = Field(0.35, gt=0, le=1)


class VariantSpec(_Strict):
    """One ONNX file of this model version (fp32 / int8 / fp16)."""

    file: str
    precision: Literal["fp32", "int8", "fp16"]
    #: required in config.json (`load_config` refuses a variant without it); None only inside ONNX
    #: metadata, because a file cannot contain its own digest (see `metadata_payload`)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    #: parity of this file against the PyTorch model (max_abs_diff, argmax_agreement, batch sizes ...)
    parity: dict[str, float | int | str | list[int]] = Field(default_factory=dict)
    #: real-dev accuracy measured with this file, e.g. {"binary_accuracy": 0.998}
    metrics: dict[str, float | int] = Field(default_factory=dict)
    #: execution providers this variant is meant for
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    #: how the file was made (e.g. quantisation format, calibration data, fp16 conversion options)
    build: dict[str, object] = Field(default_factory=dict)
    #: speed measured at export on the export machine (machine-dependent: kept out of ONNX metadata)
    benchmark: dict[str, float | int | str] = Field(default_factory=dict)


class TensorRTSpec(_Strict):
    """TensorRT optimisation profile (batch dimension only; derived from max batch x TTA views)."""

    min_batch: int = 1
    opt_batch: int = 256
    max_batch: int = 1280
    fp16: bool = True


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    input: InputSpec = InputSpec()
    output_name: str = "logits"
    classes: tuple[str, ...] = Field(min_length=2)
    preprocess: PreprocessSpec = PreprocessSpec()
    #: profile -> {class -> marked}; every profile must cover every class
    profiles: dict[str, dict[str, bool]]
    default_profile: str = "ink"
    #: calibrated probability = softmax(logits / temperature)
    temperature: float = Field(1.0, gt=0)
    review: ReviewSpec = ReviewSpec()
    tta: TTASpec = TTASpec()
    sheet: SheetSpec = SheetSpec()
    variants: dict[str, VariantSpec]
    default_variant: str = "fp32"
    #: variants built but not offered, with the reason (e.g. INT8 lost real-dev binary accuracy)
    rejected_variants: dict[str, str] = Field(default_factory=dict)
    tensorrt: TensorRTSpec = TensorRTSpec()
    #: free-form provenance: training data description, architecture, MACs, params, seed ...
    training: dict[str, object] = Field(default_factory=dict)
    #: real-dev metrics of the default variant
    metrics: dict[str, object] = Field(default_factory=dict)
    #: exporter / opset / onnxruntime / torch versions
    versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        for pname, mapping in self.profiles.items():
            if set(mapping) != set(self.classes):
                raise ValueError(f"profile {pname!r} must map exactly the model's classes")
        if self.default_profile not in self.profiles:
            raise ValueError(f"default_profile {self.default_profile!r} is not a profile")
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not a variant")
        return self

    def marked_mask(self, profile: str) -> list[bool]:
        """Per output column: does this class count as marked under `profile`."""
        mapping = self.profiles[profile]
        return [mapping[c] for c in self.classes]


class ModelArtifactError(ValueError):
    """A model repository entry that must not be served (missing, corrupt, inconsistent)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_config(version_dir: Path) -> ModelConfig:
    """Read and validate `config.json` in a `<name>/<version>/` folder (no file hashing)."""
    path = version_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelArtifactError(f"missing {CONFIG_FILE} in {version_dir}")
    try:
        config = ModelConfig.model_validate(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelArtifactError(f"invalid {path}: {exc}") from exc
    unpinned = [name for name, spec in config.variants.items() if spec.sha256 is None]
    if unpinned:
        raise ModelArtifactError(f"invalid {path}: variants {unpinned} lack sha256 (config.json pins every file)")
    return config


def verified_model_path(version_dir: Path, config: ModelConfig, variant: str | None = None) -> Path:
    """The ONNX file of `variant` after checking it exists and its sha256 matches the config."""
    name = variant or config.default_variant
    if name not in config.variants:
        raise ModelArtifactError(f"model {config.name}/{config.version} has no variant {name!r}")
    spec = config.variants[name]
    path = version_dir / spec.file
    if not path.is_file():
        raise ModelArtifactError(f"missing model file {path}")
    digest = sha256_file(path)
    if spec.sha256 is None or digest != spec.sha256:
        pinned = f"{spec.sha256[:12]}..." if spec.sha256 else "none"
        raise ModelArtifactError(f"sha256 mismatch for {path}: config {pinned}, file {digest[:12]}...")
    return path


def list_versions(repository: Path, name: str) -> list[str]:
    """Versions of a model, numerically sorted where possible (Triton: highest is the latest)."""
    model_dir = repository / name
    if not model_dir.is_dir():
        return []
    versions = [p.name for p in model_dir.iterdir() if (p / CONFIG_FILE).is_file()]
    return sorted(versions, key=lambda v: (0, int(v)) if v.isdigit() else (1, v))


#: metadata_props keys besides METADATA_KEY: which variant a file is, and a note that its digest is absent
METADATA_VARIANT_KEY = "omr.variant"
METADATA_SHA256_KEY = "omr.sha256"
METADATA_SHA256_NOTE = "not applicable: a file cannot contain its own digest; it is pinned in config.json"


def metadata_payload(config: ModelConfig) -> str:
    """The config as stored in ONNX `metadata_props[METADATA_KEY]`.

    Every variant's `sha256` is None (a file cannot hold its own digest, and the variants' digests would
    depend on each other's metadata) and `benchmark` is empty (machine-dependent timings would make the
    file bytes differ from run to run). Everything else equals config.json.
    """
    variants = {k: v.model_copy(update={"sha256": None, "benchmark": {}}) for k, v in config.variants.items()}
    return config.model_copy(update={"variants": variants}).model_dump_json()


def config_from_metadata(raw: str) -> ModelConfig:
    """Parse a `metadata_payload` string back into a (digest-less) ModelConfig."""
    try:
        return ModelConfig.model_validate_json(raw)
    except ValueError as exc:
        raise ModelArtifactError(f"invalid {METADATA_KEY!r} ONNX metadata: {exc}") from exc


def verify_session(session: Any, config: ModelConfig, variant: str | None = None) -> None:
    """Refuse an ONNX Runtime session whose graph does not match `config` (input, output, class count).

    `session` is an `onnxruntime.InferenceSession` (duck-typed so this module needs no onnxruntime).
    Catches a file swapped under a re-pinned sha256, or a config edited to a different class list.
    """
    where = f"model {config.name}/{config.version} variant {variant or config.default_variant}"
    inputs = {i.name: i for i in session.get_inputs()}
    if list(inputs) != [config.input.name]:
        raise ModelArtifactError(f"{where}: ONNX inputs {list(inputs)}, config expects [{config.input.name!r}]")
    inp = inputs[config.input.name]
    want = [config.input.channels, config.input.height, config.input.width]
    if len(inp.shape) != 4 or list(inp.shape[1:]) != want or isinstance(inp.shape[0], int):
        raise ModelArtifactError(f"{where}: ONNX input shape {inp.shape}, config expects [batch, *{want}]")
    want_type = {"float32": "tensor(float)", "float16": "tensor(float16)"}[config.input.dtype]
    if inp.type != want_type:
        raise ModelArtifactError(f"{where}: ONNX input type {inp.type}, config expects {want_type}")
    outputs = {o.name: o for o in session.get_outputs()}
    if config.output_name not in outputs:
        raise ModelArtifactError(f"{where}: ONNX outputs {list(outputs)} lack {config.output_name!r}")
    n_out = outputs[config.output_name].shape[-1]
    if n_out != len(config.classes):
        raise ModelArtifactError(
            f"{where}: ONNX output has {n_out} classes, config lists {len(config.classes)} {list(config.classes)}"
        )
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY in meta:
        embedded = config_from_metadata(meta[METADATA_KEY])
        # name and version are not compared: as in Triton, they are the folder's (copying a file to a new
        # version or model folder is legitimate); what decides correctness is the output class order
        if embedded.classes != config.classes:
            raise ModelArtifactError(
                f"{where}: ONNX metadata lists classes {list(embedded.classes)}, config.json {list(config.classes)}"
            )
    if variant is not None and meta.get(METADATA_VARIANT_KEY, variant) != variant:
        raise ModelArtifactError(f"{where}: ONNX file is variant {meta[METADATA_VARIANT_KEY]!r}")
