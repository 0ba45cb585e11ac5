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


@dataclass(frozen=True, slots=True)
class Decision:
    """One crop's answer (the service adds the id)."""

    label: str
    confidence: float
    marked: bool
    marked_probability: float
    probabilities: dict[str, float]
    review_reasons: list[str] = field(default_factory=list)

    @property
    def review(self) -> bool:
        return bool(self.review_reasons)


def decide(probs: np.ndarray, config: ModelConfig, profile: str, tta_agree: np.ndarray | None = None) -> list[Decision]:
    """Calibrated probabilities [N, C] -> one Decision per row under a binary `profile`.

    marked_probability sums the profile's marked classes; `marked` is marked_probability >= 0.5 (so the
    binary decision can differ from "is the top class a marked class" when mass is split, by design).
    """
    mask = np.asarray(config.marked_mask(profile), dtype=bool)
    marked_p = probs[:, mask].sum(axis=1)
    top = probs.argmax(axis=1)
    conf = probs[np.arange(len(probs)), top]
    rv = config.review
    out: list[Decision] = []
    classes = config.classes
    # python floats once, up front: per-element numpy scalar conversion dominated this loop for big requests
    rows = probs.tolist()
    conf_l = conf.tolist()
    marked_l = np.minimum(marked_p, 1.0).tolist()
    top_l = top.tolist()
    agree_l = tta_agree.tolist() if tta_agree is not None and rv.tta_disagreement else None
    for i, row in enumerate(rows):
        reasons: list[str] = []
        if conf_l[i] < rv.min_confidence:
            reasons.append("low_confidence")
        if abs(marked_l[i] - 0.5) * 2.0 < rv.min_binary_margin:
            reasons.append("small_binary_margin")
        if agree_l is not None and not agree_l[i]:
            reasons.append("tta_disagreement")
        mp = marked_l[i]
        out.append(
            Decision(
                label=classes[top_l[i]],
                confidence=conf_l[i],
                marked=mp >= 0.5,
                marked_probability=mp,
                probabilities=dict(zip(classes, row, strict=True)),
                review_reasons=reasons,
            )
        )
    return out
