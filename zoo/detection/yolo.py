"""Ultralytics YOLO ONNX models, as their exporter writes them: input, letterbox, output decoding.

The exporter's detection model takes (1, 3, S, S) float RGB in [0, 1], letterboxed (the image
scaled to fit, centred, padded with grey 114), and returns (1, 4 + classes, anchors): per anchor a
box (centre x, centre y, width, height, in the letterboxed pixels) and a sigmoid score per class,
with no NMS inside. A pose model adds K keypoints per anchor, (x, y, visibility) each: (1, 4 + classes
+ 3K, anchors). Decoding is score threshold → per-class NMS → boxes back in the image's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """Letterboxed pixel coordinates (…, 2) → the original image's."""
        out = np.array(xy, np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.pad_x) / self.scale
        out[..., 1] = (out[..., 1] - self.pad_y) / self.scale
        return out


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W, 3) uint8 RGB → the (1, 3, size, size) float32 input, and the mapping back."""
    from PIL import Image

    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nw, nh = max(1, round(w * r)), max(1, round(h * r))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    # the exporter's LetterBox centres the image, splitting odd padding with a 0.1 px rounding bias
    top, left = round((size - nh) / 2 - 0.1), round((size - nw) / 2 - 0.1)
    canvas[top : top + nh, left : left + nw] = resized
    tensor = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(tensor), Letterbox(r, float(left), float(top))


def iou(a, b) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS over (n, 4) x1y1x2y2 boxes: the indices kept, best score first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        ix = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        iy = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = ix * iy
        union = areas[i] + areas[rest] - inter
        order = rest[inter <= iou * np.maximum(union, 1e-9)]
    return np.asarray(keep, np.int64)


@dataclass(frozen=True)
class Decoded:
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in the image's pixels, clipped to it
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int
    keypoints: np.ndarray  # (n, K, 3) x, y (image pixels), visibility; K = 0 for a detector


class OutputFormatError(ValueError):
    """The ONNX output is not the YOLO layout the spec says."""


def decode(
    output: np.ndarray,
    *,
    classes: int,
    keypoints: int,
    box: Letterbox,
    image_size: tuple[int, int],
    score_threshold: float,
    iou_threshold: float,
    class_ids: tuple[int, ...] = (),
    max_detections: int = 100,
) -> Decoded:
    """Decode one image's (1, 4 + classes + 3·keypoints, anchors) output."""
    rows = 4 + classes + 3 * keypoints
    if output.ndim != 3 or output.shape[0] != 1 or output.shape[1] != rows:
        raise OutputFormatError(
            f"output shape {tuple(output.shape)} is not (1, {rows}, anchors) = 4 box + {classes} class"
            + (f" + 3×{keypoints} keypoint" if keypoints else "")
            + " rows"
        )
    pred = output[0].T.astype(np.float32)  # (anchors, rows)
    cls = pred[:, 4 : 4 + classes]
    if class_ids:
        masked = np.full_like(cls, -1.0)
        masked[:, list(class_ids)] = cls[:, list(class_ids)]
        cls = masked
    best = cls.argmax(axis=1)
    score = cls[np.arange(len(cls)), best]
    keep = score >= score_threshold
    pred, best, score = pred[keep], best[keep], score[keep]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    # per-class NMS: offset each class's boxes so different classes never suppress each other
    offset = best[:, None].astype(np.float32) * 4096.0
    kept = nms(boxes + offset, score, iou_threshold)[:max_detections]
    height, width = image_size
    corners = box.to_image(boxes[kept].reshape(-1, 2, 2)).reshape(-1, 4)
    corners[:, [0, 2]] = corners[:, [0, 2]].clip(0, width)
    corners[:, [1, 3]] = corners[:, [1, 3]].clip(0, height)
    kpts = pred[kept, 4 + classes :].reshape(len(kept), keypoints, 3)
    if keypoints:
        kpts[..., :2] = box.to_image(kpts[..., :2])
    return Decoded(corners.astype(np.float32), score[kept], best[kept].astype(np.int64), kpts.astype(np.float32))
