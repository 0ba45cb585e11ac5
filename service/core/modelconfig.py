"""The model repository contract: `<repo>/<name>/<version>/{model.onnx, config.json}` (Triton's layout).

`export/` writes `config.json`; the service reads it and must need nothing else to serve the model. The
same facts are mirrored in the ONNX file's `metadata_props` (key `omr.config`, the JSON below) so a bare
`.onnx` file describes itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

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


class VariantSpec(_Strict):
    """One ONNX file of this model version (fp32 / int8 / fp16)."""

    file: str
    precision: Literal["fp32", "int8", "fp16"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: parity of this file against the PyTorch model (max_abs_diff, argmax_agreement, batch sizes ...)
    parity: dict[str, float | int | str | list[int]] = Field(default_factory=dict)
    #: real-dev accuracy measured with this file, e.g. {"binary_accuracy": 0.998}
    metrics: dict[str, float | int] = Field(default_factory=dict)
    #: execution providers this variant is meant for
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


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
    variants: dict[str, VariantSpec]
    default_variant: str = "fp32"
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
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelArtifactError(f"invalid {path}: {exc}") from exc


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
    if digest != spec.sha256:
        raise ModelArtifactError(f"sha256 mismatch for {path}: config {spec.sha256[:12]}..., file {digest[:12]}...")
    return path


def list_versions(repository: Path, name: str) -> list[str]:
    """Versions of a model, numerically sorted where possible (Triton: highest is the latest)."""
    model_dir = repository / name
    if not model_dir.is_dir():
        return []
    versions = [p.name for p in model_dir.iterdir() if (p / CONFIG_FILE).is_file()]
    return sorted(versions, key=lambda v: (0, int(v)) if v.isdigit() else (1, v))
