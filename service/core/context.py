"""The one entry point from a request's probabilities to its decisions, for the service AND `models.evaluate`.

    view_probs [N, V, C] --combine_views(mode)--> probs [N, C], agree [N]
    rows uint8 [N, H, W] --crop_stats-----------> stats [N, k]
    decide_request(probs, stats, config, profile, agree, sizes) -> [Decision] * N

Measured == served only if both call exactly these functions with a request (a sheet) at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.modelconfig import ModelConfig
from service.core.postprocess import Decision, decide, marked_mask_array
from service.core.sheet import crop_stats, sheet_moves, size_groups

__all__ = ["combine_views", "crop_stats", "decide_by_sheet", "decide_request"]


def combine_views(view_probs: np.ndarray, config: ModelConfig, views: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated per-view probabilities [N, V, C] (V = len(views)) -> (probs [N, C], views agree [N] bool).

    `config.tta.mode` "average": the mean over the views decides; "review": the identity view decides and
    the views' label agreement only feeds the review flag. With one view both are that view.
    """
    if view_probs.shape[1] == 1:  # no TTA: the one view is the answer (the common case, kept cheap)
        return view_probs[:, 0], np.ones(len(view_probs), bool)
    labels = view_probs.argmax(axis=-1)  # [N, V]
    agree = (labels == labels[:, :1]).all(axis=1)
    if config.tta.mode == "review" and "identity" in views:
        return view_probs[:, views.index("identity")], agree
    return view_probs.mean(axis=1), agree


def decide_request(
    probs: np.ndarray,
    stats: np.ndarray | None,
    config: ModelConfig,
    profile: str,
    tta_agree: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    sheet_context: bool = True,
) -> list[Decision]:
    """One request's (one sheet's) calibrated probabilities [N, C] -> one Decision per crop.

    stats: `crop_stats` of the request's identity-view model-size rows [N, k], or None (no sheet context).
    sizes: native crop (height, width) [N, 2] for grouping, or None (all crops one group).
    sheet_context: False turns the sheet context off for this call (a request mixing sheets);
    `config.sheet.enabled` False turns it off for the model.
    """
    moved = None
    if sheet_context and stats is not None and config.sheet.enabled and len(probs) > 1:
        mask = marked_mask_array(config, profile)
        marked_p = probs[:, mask].sum(axis=1)
        groups = size_groups(sizes, len(probs), config.sheet.size_ratio)
        moved = sheet_moves(marked_p, np.asarray(stats)[:, 0], groups, config.sheet)
    return decide(probs, config, profile, tta_agree, moved)


def decide_by_sheet(
    probs: np.ndarray,
    stats: np.ndarray | None,
    config: ModelConfig,
    profile: str,
    sheets: Sequence[str | None],
    tta_agree: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> list[Decision]:
    """`decide_request` once per sheet, as if each sheet were one request; decisions in input order.

    For evaluating many labelled sheets at once (`models.evaluate`): `sheets[i]` is crop i's sheet id; a crop
    without one (None) is decided as a request of its own (no context).
    """
    out: list[Decision | None] = [None] * len(probs)
    by_sheet: dict[tuple[str, int], list[int]] = {}
    for i, sheet in enumerate(sheets):
        by_sheet.setdefault((sheet, -1) if sheet is not None else ("", i), []).append(i)
    for idx in by_sheet.values():
        ix = np.asarray(idx)
        decisions = decide_request(
            probs[ix],
            None if stats is None else stats[ix],
            config,
            profile,
            None if tta_agree is None else tta_agree[ix],
            None if sizes is None else np.asarray(sizes)[ix],
        )
        for i, d in zip(idx, decisions, strict=True):
            out[i] = d
    return [d for d in out if d is not None]
