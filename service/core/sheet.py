"""Sheet context: decide doubtful crops relative to the confident crops of the same sheet.

OMR readers have always judged "marked" against the sheet (OMRChecker's per-sheet threshold): a light
pencil fill on a pale 200-dpi scan and a bold printed letter on a dark halftoned one can have the same
absolute darkness, but within one sheet the fills stand clearly apart from the empties. A request is one
sheet. This module

1. measures each crop cheaply on the model-size uint8 rows the decode pass already made (`crop_stats`:
   one matrix product and four corner means for the whole batch, well under a microsecond per crop), and
2. per group of crops of similar native size (`size_groups`: a sheet's answer bubbles and its check boxes
   must not calibrate each other), places a threshold between the darkness of the group's confident
   unmarked crops and its confident marked crops, and moves only the *doubtful* crops across it
   (`sheet_moves`).

Safety comes from refusing to act: a group with fewer than `min_reference` confident crops on either side
(one crop, an all-filled or all-empty sheet) or whose two levels are closer than `min_gap` keeps the
model's decision. The model's probabilities are never changed; the decision says who made it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from service.core.modelconfig import SheetSpec

#: columns of `crop_stats`
STAT_NAMES: tuple[str, ...] = ("inner_darkness", "ring_darkness", "bright")
#: radii as fractions of the crop side: crops are about 1.5 x the bubble/box, so the outline sits near
#: 0.33; the inner disc (< 0.2) never touches it, the ring (0.2-0.28) is where a blob leaves its white crescent
INNER_RADIUS = 0.20
RING_RADIUS = 0.28
_CHUNK = 256


@lru_cache(maxsize=8)
def _masks(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """([H*W, 2] float32 0/1 masks of the inner disc and of the ring around it, [2] float32 pixel counts)."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - (h - 1) / 2) / h, (xx - (w - 1) / 2) / w)  # in units of the side (ellipse for non-square)
    inner = r <= INNER_RADIUS
    ring = (r > INNER_RADIUS) & (r <= RING_RADIUS)
    m = np.stack([inner.ravel(), ring.ravel()], axis=1).astype(np.float32)
    counts = m.sum(axis=0)
    m.setflags(write=False)
    counts.setflags(write=False)
    return m, counts


def crop_stats(rows: np.ndarray) -> np.ndarray:
    """Model-size uint8 crops [N, H, W] -> float32 [N, 3] (`STAT_NAMES`).

    bright: the paper level, the brightest of the four corner patches' means (side/8 square each; corners
    lie outside a centred bubble or box, and taking the brightest survives a neighbour's ink in one or two),
    in 0-1. inner_darkness / ring_darkness: 1 - mean(region) / bright, so 0 is paper and 1 is black
    whatever the scan's exposure; clipped to [-1, 1].

    A crop's numbers do not depend on the other crops measured with it, bit for bit: a split sheet's far
    worker measures its own half (`service.core.parts`). So every sum is of whole pixel values (< 2**24,
    exact in float32 in any order: the matrix product's blocking, which depends on the row count, cannot
    round differently), divided once.
    """
    n, h, w = rows.shape
    if n == 0:
        return np.zeros((0, len(STAT_NAMES)), np.float32)
    c = max(1, min(h, w) // 8)
    corners = np.stack([rows[:, :c, :c], rows[:, :c, -c:], rows[:, -c:, :c], rows[:, -c:, -c:]], axis=1)  # [N, 4, c, c]
    # = .mean(axis=2, dtype=float32) without ndarray.mean's Python wrapper (this runs once per request)
    bright = (np.add.reduce(corners.reshape(n, 4, -1), axis=2, dtype=np.float32) / (c * c)).max(axis=1)  # [N]
    flat, (masks, counts) = rows.reshape(n, -1), _masks(h, w)
    sums = np.empty((n, 2), np.float32)
    for s in range(0, n, _CHUNK):  # float32 copies of 256 rows stay in cache: 10x faster than one big product
        sums[s : s + _CHUNK] = flat[s : s + _CHUNK].astype(np.float32) @ masks
    dark = 1.0 - (sums / counts) / np.maximum(bright, 1.0)[:, None]
    out = np.empty((n, len(STAT_NAMES)), np.float32)
    out[:, :2] = np.clip(dark, -1.0, 1.0)
    out[:, 2] = bright / 255.0
    return out


def _gap_clusters(values: np.ndarray, max_step: float) -> np.ndarray:
    """1-D single-linkage clustering: sorted values start a new cluster where they jump by > max_step."""
    order = np.argsort(values, kind="stable")
    jumps = np.diff(values[order]) > max_step
    labels = np.empty(len(values), np.int64)
    labels[order] = np.concatenate([[0], np.cumsum(jumps)])
    return labels


def size_groups(sizes: np.ndarray | None, n: int, size_ratio: float) -> np.ndarray:
    """Native crop sizes [N, 2] (height, width) -> group index [N]; None (sizes unknown) is one group.

    Crops join a group when a chain of crops links them with steps no larger than `size_ratio` in side
    (geometric mean of height and width) and in aspect ratio, so a sheet's 20-px bubbles and its 40-px
    boxes, or its round bubbles and 27 x 18 rectangles, are judged apart.
    """
    if sizes is None or n == 0:
        return np.zeros(n, np.int64)
    s = np.asarray(sizes, np.float64).reshape(n, 2)
    if (s == s[0]).all():  # the common case: one field, one crop size
        return np.zeros(n, np.int64)
    step = np.log(size_ratio) + 1e-9
    aspect = _gap_clusters(np.log(s[:, 1] / s[:, 0]), step)
    side = _gap_clusters(0.5 * np.log(s[:, 0] * s[:, 1]), step)
    _, groups = np.unique(aspect * (side.max() + 1) + side, return_inverse=True)
    return groups.reshape(n)


def sheet_moves(marked_p: np.ndarray, darkness: np.ndarray, groups: np.ndarray, spec: SheetSpec) -> np.ndarray:
    """Which crops the sheet context flips: bool [N] (True = decided against the model's own mp >= 0.5).

    `marked_p` [N]: the model's marked probability under the request's profile; `darkness` [N]: the
    inner-disc darkness (`crop_stats(...)[:, 0]`); `groups` [N]: `size_groups`.
    """
    moved = np.zeros(len(marked_p), bool)
    if not spec.enabled:
        return moved
    model_marked = marked_p >= 0.5
    sure_off = marked_p <= spec.confident_unmarked
    sure_on = marked_p >= spec.confident_marked
    doubtful = ~sure_off & ~sure_on
    for g in np.unique(groups):
        in_g = groups == g
        off, on, doubt = darkness[in_g & sure_off], darkness[in_g & sure_on], in_g & doubtful
        if len(off) < spec.min_reference or not doubt.any():
            continue
        low = float(np.quantile(off, spec.reference_quantile))
        if len(on) < spec.min_reference:
            if spec.jump_without_marked is not None:  # no marked level: only a big jump above the empties
                moved |= doubt & ~model_marked & (darkness >= low + spec.jump_without_marked)
            continue
        high = float(np.quantile(on, 1.0 - spec.reference_quantile))
        if high - low < spec.min_gap:
            continue
        cut = low + spec.threshold * (high - low)
        moved |= doubt & ~model_marked & (darkness >= cut)
        if spec.move_to_unmarked:
            moved |= doubt & model_marked & (darkness < low + spec.unmark_threshold * (high - low))
    return moved
