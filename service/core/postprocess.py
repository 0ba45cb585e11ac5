"""Logits -> calibrated decisions. Shared by the service and `models.evaluate` (served = measured)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from service.core.modelconfig import ModelConfig


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) in float64-free, numerically stable form: [N, C] -> [N, C] float32."""
    z = logits.astype(np.float32, copy=False) / np.float32(temperature)
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


@dataclass(slots=True)
class Decision:
    """One crop's answer (the service adds the id).

    Not frozen, though nothing changes one after `decide`: a frozen dataclass's __init__ sets each field
    through object.__setattr__, 1.4 vs 0.36 us a decision, and a 500-crop sheet makes 500 of them."""

    label: str
    confidence: float
    marked: bool
    marked_probability: float
    probabilities: dict[str, float]
    review_reasons: list[str] = field(default_factory=list)
    #: "model": marked_probability >= 0.5 decided; "sheet": the sheet context moved it (`service.core.sheet`)
    decided_by: str = "model"

    @property
    def review(self) -> bool:
        return bool(self.review_reasons)


_MASKS: dict[tuple[int, str], tuple[ModelConfig, np.ndarray]] = {}


def marked_mask_array(config: ModelConfig, profile: str) -> np.ndarray:
    """`config.marked_mask(profile)` as a bool array, made once per (config, profile): decide runs per request."""
    key = (id(config), profile)
    hit = _MASKS.get(key)
    if hit is None or hit[0] is not config:  # the config is kept in the entry, so its id cannot be reused
        mask = np.asarray(config.marked_mask(profile), dtype=bool)
        mask.setflags(write=False)
        if len(_MASKS) >= 64:  # a process serves a handful of configs; tests build many
            _MASKS.clear()
        _MASKS[key] = hit = (config, mask)
    return hit[1]


def decide(
    probs: np.ndarray,
    config: ModelConfig,
    profile: str,
    tta_agree: np.ndarray | None = None,
    sheet_moved: np.ndarray | None = None,
) -> list[Decision]:
    """Calibrated probabilities [N, C] -> one Decision per row under a binary `profile`.

    marked_probability sums the profile's marked classes; the model decides `marked` =
    marked_probability >= 0.5, and `sheet_moved` [N] bool (from `service.core.sheet.sheet_moves`) flips
    the rows the sheet context decided otherwise (`decided_by: "sheet"`, review reason `sheet_context`).

    One decision, one story: `label` is the most probable class on the decided side (a marked class when
    `marked`, else an unmarked one) and `confidence` its probability. When the model's overall top class
    lies on the other side (mass split, or a sheet move), the response says so with the review reason
    `label_marked_conflict`; such a row never has confidence >= 0.5, so it is already in review for
    `low_confidence` unless the thresholds are set below 0.5.
    """
    if probs.shape[1] != len(config.classes):  # once here, not per row (zip's strict check: ~0.2 us a crop)
        raise ValueError(f"probabilities have {probs.shape[1]} columns for {len(config.classes)} classes")
    mask = marked_mask_array(config, profile)
    marked_p = np.minimum(probs[:, mask].sum(axis=1), 1.0)
    marked = marked_p >= 0.5
    if sheet_moved is not None:
        marked ^= np.asarray(sheet_moved, bool)
    top = probs.argmax(axis=1)
    # best class on the decided side: -1 pushes the other side's classes below every probability
    label = np.where(marked[:, None] == mask[None, :], probs, -1.0).argmax(axis=1)
    conf = probs[np.arange(len(probs)), label]
    rv = config.review
    out: list[Decision] = []
    classes = config.classes
    # python floats once, up front: per-element numpy scalar conversion dominated this loop for big requests
    rows = probs.tolist()
    conf_l = conf.tolist()
    marked_l = marked_p.tolist()
    decided_l = marked.tolist()
    moved_l = [False] * len(probs) if sheet_moved is None else np.asarray(sheet_moved, bool).tolist()
    conflict_l = (label != top).tolist()
    label_l = label.tolist()
    agree_l = tta_agree.tolist() if tta_agree is not None and rv.tta_disagreement else None
    for i, row in enumerate(rows):
        reasons: list[str] = []
        if conf_l[i] < rv.min_confidence:
            reasons.append("low_confidence")
        if abs(marked_l[i] - 0.5) * 2.0 < rv.min_binary_margin:
            reasons.append("small_binary_margin")
        if agree_l is not None and not agree_l[i]:
            reasons.append("tta_disagreement")
        if moved_l[i]:
            reasons.append("sheet_context")
        if conflict_l[i]:
            reasons.append("label_marked_conflict")
        out.append(
            Decision(
                label=classes[label_l[i]],
                confidence=conf_l[i],
                marked=decided_l[i],
                marked_probability=marked_l[i],
                probabilities=dict(zip(classes, row, strict=False)),  # widths checked once, above
                review_reasons=reasons,
                decided_by="sheet" if moved_l[i] else "model",
            )
        )
    return out
