"""The crop rules of a detect → keypoints → embed pipeline, shared by training, checks and serving.

- body crop: the detection's box grown by `margin` on every side and made square around its centre
  (pixels outside the image are black), so the embedder never sees a stretched card;
- chip: with four keypoints found (the card's corners, like a face's landmarks), the quadrilateral
  they span is warped to an upright square — the card as if scanned; with another keypoint count,
  the keypoints' bounding box grown by `chip_margin`.
"""

from __future__ import annotations

import numpy as np


def square_around(box, margin: float) -> tuple[float, float, float]:
    """(left, top, side) of the square crop for an x1, y1, x2, y2 box."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * (1 + 2 * margin)
    return (x1 + x2) / 2 - side / 2, (y1 + y2) / 2 - side / 2, side


def body_crop(
    image: np.ndarray, box, margin: float, size: int | None = None
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The square body crop (resized to `size` when given) and its (left, top, scale) from crop to image pixels."""
    from PIL import Image

    left, top, side = square_around(box, margin)
    region = (round(left), round(top), round(left + side), round(top + side))
    crop = Image.fromarray(image).crop(region)
    scale = 1.0
    if size:
        scale = (region[2] - region[0]) / size
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop), (float(region[0]), float(region[1]), scale)


def warp_chip(image: np.ndarray, corners: np.ndarray, size: int) -> np.ndarray:
    """The quadrilateral TL, TR, BR, BL (image pixels) warped to an upright size × size square."""
    from PIL import Image

    from zoo.identity_task import _perspective_coeffs

    coeffs = _perspective_coeffs([(0, 0), (size, 0), (size, size), (0, size)], [tuple(map(float, c)) for c in corners])
    return np.asarray(
        Image.fromarray(image).transform((size, size), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    )


def box_chip(image: np.ndarray, points: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The keypoints' bounding box grown by `margin`, as a square crop of `size` px."""
    box = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
    return body_crop(image, box, margin, size)[0]
