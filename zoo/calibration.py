"""Calibration sets for int8: first-class, recorded, and never silently too small.

Images come from a user folder or, by default, the reference photos bundled with scikit-image
(several deterministic crops and flips of each, to reach the requested count). They are
preprocessed exactly as the model spec says. The set's sha256 goes into the manifest so a
quantized artifact can always be traced to the data that calibrated it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import UsageError
from zoo.registry import ModelSpec
from zoo.validators.inputs import IMAGE_SUFFIXES, normalize, read_rgb, reference_photos, resize_center_crop


@dataclass(frozen=True)
class CalibrationSet:
    images: np.ndarray  # float32, NCHW normalized (or NHWC unnormalized, see `layout`/`normalized`)
    source: str
    sha256: str
    layout: str
    normalized: bool
    recommended: int

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def warning(self) -> str | None:
        if self.count < self.recommended:
            return (
                f"calibration set has {self.count} images; the toolchain recommends at least {self.recommended} "
                f"(pass --calibration DIR with more images)"
            )
        return None

    def record(self) -> dict:
        """The manifest entry."""
        return {
            "count": self.count,
            "source": self.source,
            "sha256": self.sha256,
            "layout": self.layout,
            "normalized": self.normalized,
            "shape": list(self.images.shape),
            "recommended_min": self.recommended,
        }


def check_calibration_options(target, calibrated: bool, folder: Path | None, count: int | None) -> None:
    """Refuse calibration options a target cannot use, before any work starts (not 12 s into a run).
    `calibrated`: whether a step of the target's chain reads a calibration set."""
    from PIL import Image, UnidentifiedImageError

    if folder is None and count is None:
        return
    if not calibrated:
        raise UsageError(
            f"--calibration/--calibration-count calibrate int8 activations; no step of target {target.name!r} "
            f"({' → '.join(target.chain)}) reads a calibration set, so they would be ignored",
            hint="drop the option, or pick a calibrated int8 target (android-int8, openvino-int8, "
            "tflite-int8-static, hailo8l)",
        )
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise UsageError(f"--calibration-count must be a positive number of images, not {count!r}")
    if folder is None:
        return
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"calibration folder {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    for file in _calibration_files(folder):  # headers only: a broken file is named now, decoding waits for the step
        try:
            with Image.open(file):
                pass
        except (UnidentifiedImageError, OSError) as exc:
            raise UsageError(f"calibration image {file} cannot be read: {exc}") from None


def _calibration_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"calibration folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _folder_images(folder: Path) -> list[np.ndarray]:
    images = []
    for file in _calibration_files(folder):
        try:
            images.append(read_rgb(file))
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            raise UsageError(f"calibration image {file} cannot be read: {exc}") from None
    return images


def _augmented_views(photos: list[np.ndarray], count: int, size: int, seed: int) -> np.ndarray:
    """`count` uint8 NHWC views: each photo whole first, then seeded random crops and flips."""
    rng = np.random.default_rng(seed)
    views = [resize_center_crop(p, size) for p in photos][:count]
    while len(views) < count:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        view = resize_center_crop(photo[top : top + side, left : left + side], size)
        views.append(view[:, ::-1] if rng.random() < 0.5 else view)
    return np.stack(views)


def build_calibration_set(
    model: ModelSpec,
    size: int,
    *,
    folder: Path | None = None,
    count: int = 128,
    recommended: int = 128,
    layout: str = "NCHW",
    normalized: bool = True,
    seed: int = 0,
) -> CalibrationSet:
    """Preprocess per the spec. NCHW normalized for ONNX Runtime / OpenVINO / LiteRT; NHWC
    unnormalized float32 (0–255) for toolchains that fold normalization into the model (Hailo)."""
    if folder is not None:
        photos = _folder_images(folder)
        source = f"folder {folder} ({len(photos)} images)"
        count = min(count, len(photos)) if count else len(photos)
        views = np.stack([resize_center_crop(p, size) for p in photos[:count]])
    else:
        photos = [image for _, image in reference_photos()]
        source = f"reference photos (scikit-image, {len(photos)} images + seeded crops/flips)"
        views = _augmented_views(photos, count, size, seed)
    if normalized:
        images = normalize(views, model.mean, model.std)  # NCHW
        if layout == "NHWC":
            images = images.transpose(0, 2, 3, 1)
    else:
        images = views.astype(np.float32)  # NHWC, 0–255
        if layout == "NCHW":
            images = images.transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images, np.float32)
    sha = hashlib.sha256(images.tobytes()).hexdigest()
    return CalibrationSet(images, source, sha, layout, normalized, recommended)
