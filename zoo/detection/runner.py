"""Run a pipeline directory (`pipeline.json` + its stage ONNX files): image → detections → embeddings.

One `PipelineRunner` opens each stage's ONNX Runtime session once; `run` is safe to call from many
threads at once (ONNX Runtime sessions are, and nothing else is shared). The same code serves
requests (`zoo serve`), checks packages (`zoo verify`) and runs `zoo pipeline run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.detection import crops, yolo
from zoo.errors import UsageError

PIPELINE_JSON = "pipeline.json"
SCHEMA = "zoo.pipeline"


@dataclass(frozen=True)
class Found:
    box: np.ndarray  # x1, y1, x2, y2 in the image's pixels
    score: float
    label: str
    crop_path: str  # "chip" (keypoints found) or "body"
    keypoints: np.ndarray | None  # (K, 3) in image pixels, when the keypoint stage ran
    crop: np.ndarray  # the image the embedder saw (before its own resize and normalization)
    embedding: np.ndarray  # (D,) float32


def read_pipeline_manifest(directory: Path) -> dict:
    path = Path(directory) / PIPELINE_JSON
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"{directory} has no {PIPELINE_JSON}: not a pipeline output or package",
            hint="make one with `zoo convert --pipeline NAME --target server`",
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a zoo pipeline manifest (schema {SCHEMA!r})")
    return manifest


def _session(path: Path, threads: int):
    from zoo.runtimes.onnxruntime import OrtSession

    return OrtSession(path, threads=threads)


class PipelineRunner:
    def __init__(self, directory: Path, manifest: dict | None = None, *, threads: int = 1):
        self.directory = Path(directory)
        self.manifest = manifest or read_pipeline_manifest(self.directory)
        stages = self.manifest["stages"]
        self.detector_cfg = stages["detector"]
        self.keypoints_cfg = stages.get("keypoints")
        self.embedder_cfg = stages["embedder"]
        self.crop_cfg = self.manifest["crop"]
        self.keep_ids = tuple(self.detector_cfg["classes"].index(c) for c in self.detector_cfg["keep"])
        self.detector = _session(self.directory / self.detector_cfg["file"], threads)
        self.keypoints = _session(self.directory / self.keypoints_cfg["file"], threads) if self.keypoints_cfg else None
        self.embedder = _session(self.directory / self.embedder_cfg["file"], threads)

    @property
    def embedding_dim(self) -> int:
        return int(self.embedder_cfg["embedding"]["dim"])

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> yolo.Decoded:
        x, box = yolo.letterbox(image, int(self.detector_cfg["input"]["size"]))
        return self.decode_detections(self.detector.run(x), box, image.shape[:2], score_threshold)

    def decode_detections(
        self, output: np.ndarray, box: yolo.Letterbox, image_size, score_threshold: float | None = None
    ) -> yolo.Decoded:
        """The detector's raw output for one image → its kept detections in the image's pixels."""
        cfg = self.detector_cfg
        return yolo.decode(
            output,
            classes=len(cfg["classes"]),
            keypoints=0,
            box=box,
            image_size=image_size,
            score_threshold=cfg["score_threshold"] if score_threshold is None else score_threshold,
            iou_threshold=cfg["iou_threshold"],
            class_ids=self.keep_ids,
        )

    def find_keypoints(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The keypoint model on the body crop: its best detection's keypoints in image pixels."""
        cfg = self.keypoints_cfg
        size = int(cfg["input"]["size"])
        crop, (left, top, scale) = crops.body_crop(image, box, self.crop_cfg["margin"], size)
        x, lb = yolo.letterbox(crop, size)
        found = yolo.decode(
            self.keypoints.run(x),
            classes=1,
            keypoints=int(cfg["keypoints"]),
            box=lb,
            image_size=crop.shape[:2],
            score_threshold=cfg["score_threshold"],
            iou_threshold=0.5,
            max_detections=1,
        )
        if not len(found.scores):
            return None
        points = found.keypoints[0].copy()
        points[:, 0] = points[:, 0] * scale + left
        points[:, 1] = points[:, 1] * scale + top
        return points

    def crop_for(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, str, np.ndarray | None]:
        """The embedder's input image for one detection: the chip when enough keypoints are found, else the body crop."""
        size = int(self.crop_cfg["chip_size"])
        points = self.find_keypoints(image, box) if self.keypoints is not None else None
        if points is not None:
            cfg = self.keypoints_cfg
            seen = points[:, 2] >= cfg["min_confidence"]
            if int(seen.sum()) >= cfg["min_found"]:
                if cfg["chip"] == "warp":
                    return crops.warp_chip(image, points[:, :2], size), "chip", points
                return crops.box_chip(image, points[seen, :2], cfg["chip_margin"], size), "chip", points
        return crops.body_crop(image, box, self.crop_cfg["margin"], size)[0], "body", points

    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        from zoo.validators.inputs import preprocess

        cfg = self.embedder_cfg["input"]
        if not images:
            return np.zeros((0, self.embedding_dim), np.float32)
        x = preprocess(images, int(cfg["size"]), cfg["mean"], cfg["std"])
        if self.embedder.batch == 1:
            return np.concatenate([self.embedder.run(x[i : i + 1]) for i in range(len(x))]).astype(np.float32)
        return self.embedder.run(x).astype(np.float32)

    def run(self, image: np.ndarray, score_threshold: float | None = None) -> list[Found]:
        """Every kept detection of one RGB image, with the crop path it took and its embedding."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        found = self.detect(image, score_threshold)
        cfg = self.detector_cfg
        names = [cfg["classes"][c] for c in found.classes]
        prepared = [self.crop_for(image, box) for box in found.boxes]
        embeddings = self.embed([p[0] for p in prepared])
        return [
            Found(box, float(score), name, path, points, crop, emb)
            for box, score, name, (crop, path, points), emb in zip(
                found.boxes, found.scores, names, prepared, embeddings
            )
        ]
