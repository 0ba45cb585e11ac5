"""The capture: what a scanner or a phone camera does to the printed-and-marked canvas.

Applied at the crop's *native* size (16-128 px), because blur, noise, JPEG blocks and 1-bit thresholding
happen at the resolution the engine cropped from, before the service resizes to the model input.
"""

from __future__ import annotations

import cv2
import numpy as np

from models.synth.halftone import halftone_capture


def geometry(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small rotation, shear and scale about the centre (skewed sheets, phone perspective)."""
    size = canvas.shape[0]
    ang = rng.normal(0, 3.0) if rng.random() < 0.8 else rng.uniform(-10, 10)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), ang, rng.uniform(0.97, 1.03))
    m[0, 1] += rng.normal(0, 0.03)
    m[1, 0] += rng.normal(0, 0.03)
    return cv2.warpAffine(canvas, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.15:
        return img
    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(img, (k, k), sigma)


def _shake(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: a short linear motion blur, or a faint double image (ghosted print and outlines)."""
    size = img.shape[0]
    length = rng.uniform(0.02, 0.08) * size
    ang = rng.uniform(0, np.pi)
    dx, dy = length * np.cos(ang), length * np.sin(ang)
    if rng.random() < 0.5:
        k = np.zeros((int(2 * np.ceil(length)) + 1,) * 2, np.float32)
        c = k.shape[0] // 2
        cv2.line(k, (round(c - dx / 2), round(c - dy / 2)), (round(c + dx / 2), round(c + dy / 2)), 1.0, 1)
        return cv2.filter2D(img, -1, k / k.sum(), borderType=cv2.BORDER_REFLECT)
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    ghost = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    w = rng.uniform(0.25, 0.5)
    return (1 - w) * img + w * ghost


def _sharpen(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unsharp masking, as phone cameras and many scanners apply it: edges get a light and a dark halo,
    so blurred print (an icon, a letter) gains relief that a mark's edge also has."""
    sigma = rng.uniform(0.8, 2.5)
    return img + rng.uniform(0.4, 1.5) * (img - _blur(img, sigma))


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", np.clip(img * 255, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0 if ok else img


#: capture modes and how often each occurs ("halftone": dithered 1-bit scans, see halftone.py)
MODES = {"scan": 0.36, "photo": 0.42, "bilevel": 0.13, "halftone": 0.09}


def capture(
    canvas: np.ndarray, native: int, rng: np.random.Generator, mode: str | None = None, keep_white: float | None = None
) -> np.ndarray:
    """Float reflectance canvas -> uint8 grayscale crop of side `native` as a scan/photo would give it.

    keep_white: a reflectance that a 1-bit scan must threshold to white (the faintest mark the class allows,
    e.g. erasure residue): without it, the threshold raised for light print could turn residue solid black,
    and an "erased" crop would look like a fill.
    """
    mode = mode or str(rng.choice(list(MODES), p=list(MODES.values())))
    img = geometry(canvas, rng)
    if mode == "halftone":
        return halftone_capture(img, native, rng)
    if mode == "photo" and rng.random() < 0.25:
        img = _shake(img, rng)
    if mode == "photo" and rng.random() < 0.5:  # optics blur before sampling
        img = _blur(img, rng.uniform(0.5, 2.5) * canvas.shape[0] / native)
    if mode == "photo" and rng.random() < 0.5:  # captured at lower resolution, upscaled by the engine
        low = max(8, int(native / rng.uniform(1.3, 2.5)))
        img = cv2.resize(img, (low, low), interpolation=cv2.INTER_AREA)
        img = cv2.resize(img, (native, native), interpolation=cv2.INTER_LINEAR)
    else:
        img = cv2.resize(img, (native, native), interpolation=cv2.INTER_AREA)
    if mode == "bilevel":
        # 1-bit scans: threshold between paper and ink; optional scanner speckle
        img = _blur(img, rng.uniform(0.0, 0.5))
        # a global threshold, raised where needed so the darkest print (the outline) survives as black,
        # while faint residue and light marks far above the outline's tone still drop out to white
        dark, paper_level = np.percentile(img, 1), np.percentile(img, 60)
        thr = rng.uniform(0.45, 0.75)
        if paper_level - dark > 0.15:
            thr = max(thr, dark + 0.3 * (paper_level - dark))
        if keep_white is not None:
            thr = min(thr, keep_white - 0.03)
        img = (img > thr).astype(np.float32)
        if rng.random() < 0.3:
            speck = rng.random(img.shape) < rng.uniform(0.0, 0.01)
            img[speck] = 1.0 - img[speck]
        return (img * 255).astype(np.uint8)
    img = _blur(img, rng.uniform(0.0, 0.7) if mode == "scan" else rng.uniform(0.2, 1.0))
    if rng.random() < (0.15 if mode == "scan" else 0.4):
        img = _sharpen(img, rng)
    # exposure: gamma, then a compressed tonal range (photos rarely hit pure black or white)
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.5)
    lo = rng.uniform(0.0, 0.12) if mode == "scan" else rng.uniform(0.0, 0.3)
    hi = rng.uniform(0.85, 1.0) if mode == "scan" else rng.uniform(0.7, 1.0)
    img = lo + (hi - lo) * img
    img = img + rng.normal(0, rng.uniform(0.0, 0.02 if mode == "scan" else 0.035), img.shape).astype(np.float32)
    if rng.random() < 0.6:
        img = _jpeg(np.clip(img, 0, 1), int(rng.integers(35, 95)))
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
