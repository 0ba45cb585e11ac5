"""Request/response schemas of `POST /classify` (validation + the OpenAPI document)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Crop(_Strict):
    id: str | None = Field(None, max_length=256, description="Echoed back; default: the crop's index.")
    image: str = Field(description="Standard base64 (RFC 4648, no whitespace) of a PNG/JPEG/BMP/TIFF/WebP image.")
    question: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The question this crop is an option of; crops naming one question are its options.",
    )


class QuestionSettings(_Strict):
    max_marks: int = Field(ge=1, description="How many options this question admits (overrides the request's).")


class ClassifyRequest(_Strict):
    crops: list[Crop] = Field(
        min_length=1, description="Crops to classify; each side 8-512 px, resized per the model config."
    )
    tta: bool | None = Field(None, description="Test-time augmentation; default from settings/model config.")
    profile: str | None = Field(
        None, max_length=64, description="Which classes count as marked (e.g. ink, fill, check-correct)."
    )
    model: str | None = Field(None, max_length=128, description="Model name; default OMR_DEFAULT_MODEL.")
    version: str | None = Field(
        None, max_length=64, description="Model version; default the configured or highest one."
    )
    sheet: str | None = Field(
        None, max_length=256, description="Names the sheet these crops come from (a request is one sheet); echoed."
    )
    sheet_context: bool | None = Field(
        None, description="Decide doubtful crops relative to this sheet's confident ones (default on; docs/api.md)."
    )
    max_marks: int | None = Field(
        None, ge=1, description="Options a question admits (default 1); only with crops that name a question."
    )
    questions: dict[str, QuestionSettings] | None = Field(
        None, description='Per-question settings by question id, e.g. {"q12": {"max_marks": 2}}.'
    )


class ModelRef(BaseModel):
    name: str
    version: str
    provider: str


class CropResult(BaseModel):
    id: str
    label: str
    confidence: float = Field(description="Calibrated probability of `label` (best class on the decided side).")
    marked: bool
    marked_probability: float = Field(description="Sum of the profile's marked classes' probabilities.")
    probabilities: dict[str, float]
    review: bool
    review_reasons: list[str] = Field(
        description="low_confidence, small_binary_margin, tta_disagreement, sheet_context, label_marked_conflict"
    )
    decided_by: Literal["model", "sheet"] = Field(
        description="Who decided `marked`: the model alone, or the sheet context (docs/api.md, Sheet context)."
    )


class QuestionResult(BaseModel):
    id: str
    status: Literal["blank", "answered", "multiple", "ambiguous"]
    marked: list[str] = Field(description="Crop ids counted as marked (ambiguous: the per-crop reading).")
    candidates: list[str] = Field(description="Crop ids in doubt: weak marks and rivals of a mark.")
    confidence: float = Field(description="P(exactly these options marked) from the options' probabilities.")
    decided_by: Literal["crops", "context"]
    review: bool
    review_reasons: list[str] = Field(
        description="weak_mark, weak_extra_mark, possible_second_mark, low_confidence (docs/api.md, Questions)"
    )


class ClassifyResponse(BaseModel):
    model: ModelRef
    profile: str
    tta: bool
    sheet: str | None = Field(None, description="The request's `sheet`, echoed.")
    results: list[CropResult]
    questions: list[QuestionResult] | None = Field(None, description="Only when crops name questions.")


class ErrorBody(BaseModel):
    error: str
    code: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses` entries for the JSON errors a route can answer (see `service.errors`)."""
    text = {
        400: "malformed request", 401: "missing/wrong bearer token", 404: "unknown model or version",
        413: "body or crop count over the limit", 415: "unsupported content type",
        422: "crops that cannot be used, each named", 429: "overloaded (Retry-After)", 499: "client disconnected",
        500: "inference failed", 503: "not ready (Retry-After)", 504: "request timed out",
    }  # fmt: skip
    return {code: {"model": ErrorBody, "description": text[code]} for code in statuses}
