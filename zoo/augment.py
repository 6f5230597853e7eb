"""The product's training augmentations, on uint8 HxWx3 numpy images, seeded.

resize, horizontal flip, color jitter (0.3), random rotate-90, coarse dropout (1–8 holes of
8–32 px at 224 px, scaled to the image), grid mask, synthetic glare, CutMix.
"""

from __future__ import annotations

import numpy as np


def resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.7, 1.0)) -> np.ndarray:
    h, w = image.shape[:2]
    side = int(min(h, w) * np.sqrt(rng.uniform(*scale)))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return resize(image[top : top + side, left : left + side], size)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 0.3) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength]."""
    x = image.astype(np.float32)
    x = x * rng.uniform(1 - strength, 1 + strength)
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - strength, 1 + strength) + mean
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * rng.uniform(1 - strength, 1 + strength) + gray
    return np.clip(x, 0, 255).astype(np.uint8)


def rotate90(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image, int(rng.integers(4))))


def coarse_dropout(
    image: np.ndarray, rng: np.random.Generator, holes=(1, 8), hole_px=(8, 32), area: float | None = None
) -> np.ndarray:
    """Zero out random squares. Hole sizes are given at 224 px and scaled to the image.
    With `area`, holes are added until that fraction of the image is covered (occlusion tests)."""
    out = image.copy()
    h, w = image.shape[:2]
    k = h / 224.0
    lo, hi = max(1, int(hole_px[0] * k)), max(2, int(hole_px[1] * k))
    if area is not None:  # occlusion: one block, then small holes until `area` is covered
        mask = np.zeros((h, w), bool)
        side = int(np.sqrt(area * 0.75 * h * w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        mask[top : top + side, left : left + side] = True
        while mask.mean() < area:
            s = int(rng.integers(lo, hi + 1))
            t, l_ = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            mask[t : t + s, l_ : l_ + s] = True
        out[mask] = 0
        return out
    for _ in range(int(rng.integers(holes[0], holes[1] + 1))):
        s = int(rng.integers(lo, hi + 1))
        t, l_ = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        out[t : t + s, l_ : l_ + s] = 0
    return out


def grid_mask(image: np.ndarray, rng: np.random.Generator, ratio: float = 0.4) -> np.ndarray:
    h, w = image.shape[:2]
    period = int(rng.integers(max(4, h // 6), max(5, h // 3)))
    cut = max(1, int(period * ratio))
    oy, ox = int(rng.integers(period)), int(rng.integers(period))
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    mask = (((yy + oy) % period) < cut) & (((xx + ox) % period) < cut)
    out = image.copy()
    out[mask] = 0
    return out


def glare(image: np.ndarray, rng: np.random.Generator, strength=(0.6, 0.9)) -> np.ndarray:
    """A bright elliptical specular highlight blended toward white."""
    h, w = image.shape[:2]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.15, 0.35) * h, rng.uniform(0.15, 0.35) * w
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    alpha = (np.exp(-d * 2.0) * rng.uniform(*strength))[..., None]
    return np.clip(image * (1 - alpha) + 255.0 * alpha, 0, 255).astype(np.uint8)


def cutmix(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paste a random box of `b` into `a` (the label mix is the teacher's business: it sees the result)."""
    h, w = a.shape[:2]
    lam = rng.uniform(0.15, 0.4)
    bh, bw = int(h * np.sqrt(lam)), int(w * np.sqrt(lam))
    t, l_ = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = a.copy()
    out[t : t + bh, l_ : l_ + bw] = b[t : t + bh, l_ : l_ + bw]
    return out


def training_view(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One training view with the product's augmentation recipe (CutMix is applied by the caller)."""
    view = random_resized_crop(image, size, rng)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = color_jitter(view, rng, 0.3)
    if rng.random() < 0.1:
        view = rotate90(view, rng)
    r = rng.random()
    if r < 0.3:
        view = coarse_dropout(view, rng)
    elif r < 0.4:
        view = grid_mask(view, rng)
    elif r < 0.6:
        view = glare(view, rng)
    return np.ascontiguousarray(view)
