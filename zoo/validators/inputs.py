"""Validation inputs: real photos shipped with scikit-image, preprocessed per the model spec,
plus seeded random tensors. The same images serve every model, each at its own input size."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}  # what zoo reads from a user's folder


def read_rgb(path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (grey, palette and alpha images converted)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# Real photographs and scans bundled inside scikit-image (no download needed).
PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "clock",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "brick",
    "page",
)


@lru_cache(maxsize=1)
def reference_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """(name, HxWx3 uint8 RGB) for each bundled photo."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append((name, np.ascontiguousarray(image[..., :3].astype(np.uint8))))
    return tuple(photos)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side to `size` (bicubic), then the central size×size square. uint8 in and out."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def normalize(images_nhwc_uint8: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC → float32 NCHW, scaled to [0, 1] then (x - mean) / std."""
    x = images_nhwc_uint8.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(images: list[np.ndarray], size: int, mean, std) -> np.ndarray:
    return normalize(np.stack([resize_center_crop(im, size) for im in images]), mean, std)


def random_inputs(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Standard-normal NCHW tensors: values in the normalized range, independent of any photo."""
    return np.random.default_rng(seed).standard_normal((count, 3, size, size), dtype=np.float32)


def parity_inputs(size: int, mean, std, random_count: int = 4) -> tuple[np.ndarray, list[str]]:
    """The photos then `random_count` random tensors, with a label per sample."""
    names, photos = zip(*reference_photos())
    x = np.concatenate([preprocess(list(photos), size, mean, std), random_inputs(random_count, size)])
    return x, [*names, *(f"random_{i}" for i in range(random_count))]


def inputs_sha256(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, np.float32).tobytes()).hexdigest()
