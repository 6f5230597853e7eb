"""Train the reference pipeline's detector and keypoint model with Ultralytics, export them to ONNX.

Ultralytics (AGPL-3.0) is only needed here, to *make* the reference stages; zoo never imports it
to run them. Both are YOLOv8 from Ultralytics' own model YAML at a tiny width, trained from scratch
on CPU on seeded card scenes (`zoo.detection.scenes`):

- detector: whole scenes (one class, "card"), letterboxed to DETECTOR_PX;
- keypoints: YOLOv8-pose on body crops of the cards (the crop rule of `zoo.detection.crops`, with the
  jitter a detector's boxes have), four keypoints = the card's corners, at KEYPOINTS_PX.

`zoo reference build-pipeline` runs it (`pip install ultralytics`); about 10 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from zoo.detection.crops import body_crop
from zoo.detection.scenes import TRAIN_SEED, scene
from zoo.errors import UsageError
from zoo.progress import QUIET, Progress

DETECTOR_PX = 256
KEYPOINTS_PX = 128
WIDTH = 0.125  # YOLOv8's width multiple (n is 0.25): 8…128 channels, ~0.5 M parameters
DEPTH = 0.33
CROP_MARGIN = 0.1
TRAIN_SCENES, VAL_SCENES = 240, 48
DETECTOR_EPOCHS, KEYPOINTS_EPOCHS = 40, 40


def _ultralytics():
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never auto-install or download anything
    os.environ.setdefault("YOLO_VERBOSE", "False")
    try:
        from zoo._torchvision_compat import ensure_torchvision

        ensure_torchvision()
        import torchvision
        from ultralytics import YOLO
        from ultralytics.utils.nms import TorchNMS
    except ImportError as exc:
        raise UsageError(
            f"building the reference pipeline needs Ultralytics ({exc})",
            hint="pip install ultralytics (only to build the stages; zoo runs them without it)",
        ) from None
    # torchvision's C++ NMS may not load beside a CPU torch; Ultralytics' own pure-torch NMS does the same
    torchvision.ops.nms = TorchNMS.nms
    return YOLO


def _model_yaml(task: str, folder: Path) -> Path:
    """YOLOv8's own model YAML (detect or pose head) at zoo's tiny scale."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8-pose.yaml" if task == "pose" else "yolov8.yaml")
    cfg = {k: v for k, v in cfg.items() if k not in ("yaml_file", "scale")}
    cfg["scales"] = {"t": [DEPTH, WIDTH, 1024]}
    cfg["nc"] = 1
    if task == "pose":
        cfg["kpt_shape"] = [4, 3]
    path = folder / f"zoo-yolov8t-{task}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _write_split(root: Path, split: str, items: list[tuple[np.ndarray, list[str]]]) -> None:
    from PIL import Image

    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for i, (image, rows) in enumerate(items):
        Image.fromarray(image).save(root / "images" / split / f"{i:05d}.png")
        (root / "labels" / split / f"{i:05d}.txt").write_text("".join(r + "\n" for r in rows))


def _detector_items(seeds) -> list[tuple[np.ndarray, list[str]]]:
    items = []
    for seed in seeds:
        sc = scene(seed)
        s = sc.image.shape[0]
        rows = [
            f"0 {(x1 + x2) / 2 / s:.6f} {(y1 + y2) / 2 / s:.6f} {(x2 - x1) / s:.6f} {(y2 - y1) / s:.6f}"
            for x1, y1, x2, y2 in sc.boxes
        ]
        items.append((sc.image, rows))
    return items


def _keypoint_items(seeds) -> list[tuple[np.ndarray, list[str]]]:
    items = []
    for seed in seeds:
        sc = scene(seed, cards=None)
        rng = np.random.default_rng(seed + 77)
        for box, corners in zip(sc.boxes, sc.corners):
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.uniform(-0.06, 0.06, 4) * np.array([w, h, w, h])  # a detector's box is never exact
            crop, (left, top, scale) = body_crop(
                sc.image, box + jitter, CROP_MARGIN * rng.uniform(0.5, 1.5), KEYPOINTS_PX
            )
            pts = (corners - np.array([left, top])) / scale / KEYPOINTS_PX
            x1, y1 = pts.min(axis=0).clip(0, 1)
            x2, y2 = pts.max(axis=0).clip(0, 1)
            kp = " ".join(f"{x:.6f} {y:.6f} {2 if 0 <= x <= 1 and 0 <= y <= 1 else 0}" for x, y in pts)
            items.append((crop, [f"0 {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f} {kp}"]))
    return items


def _clean_metadata(exported: Path, dest: Path) -> None:
    """Copy the export, its description without the build host's temporary paths."""
    import onnx

    model = onnx.load(str(exported))
    for prop in model.metadata_props:
        if prop.key == "description":
            prop.value = f"Ultralytics YOLOv8 ({prop.value.split()[1]}) trained by zoo on seeded reference card scenes"
    onnx.save(model, str(dest))


def _train(YOLO, task: str, items_train, items_val, imgsz: int, epochs: int, work: Path, dest: Path) -> dict:
    import yaml

    root = work / task
    _write_split(root, "train", items_train)
    _write_split(root, "val", items_val)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": {0: "card"}}
    if task == "pose":
        data["kpt_shape"] = [4, 3]
        data["flip_idx"] = [1, 0, 3, 2]
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    model = YOLO(str(_model_yaml(task, work)), task=task)
    results = model.train(
        data=str(root / "data.yaml"),
        epochs=epochs,
        imgsz=imgsz,
        batch=16,
        device="cpu",
        workers=0,
        seed=0,
        deterministic=True,
        amp=False,
        plots=False,
        fliplr=0.0,  # a mirrored card is not a card of the family
        mosaic=1.0 if task == "detect" else 0.0,
        close_mosaic=max(1, epochs // 6),
        project=str(work / "runs"),
        name=task,
        exist_ok=True,
        verbose=False,
    )
    exported = Path(model.export(format="onnx", imgsz=imgsz, opset=17, dynamic=False, simplify=True))
    _clean_metadata(exported, dest)
    metrics = {k: round(float(v), 4) for k, v in getattr(results, "results_dict", {}).items()}
    return {
        "epochs": epochs,
        "imgsz": imgsz,
        "train_images": len(items_train),
        "val_images": len(items_val),
        "val_metrics": metrics,
    }


def build_pipeline_stages(
    out: Path,
    *,
    train_scenes: int = TRAIN_SCENES,
    epochs: tuple[int, int] = (DETECTOR_EPOCHS, KEYPOINTS_EPOCHS),
    stages: tuple[str, ...] = ("detector", "keypoints"),
    progress: Progress = QUIET,
) -> dict[str, Path]:
    """Train both stages; write `<out>/ref_dogs_detector.onnx`, `ref_dogs_keypoints.onnx` and a JSON
    record of each (data, epochs, Ultralytics' own validation metrics)."""
    YOLO = _ultralytics()
    import ultralytics

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(prefix="zoo-yolo-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "config"))
        train = range(TRAIN_SEED, TRAIN_SEED + train_scenes)
        val = range(TRAIN_SEED + train_scenes, TRAIN_SEED + train_scenes + VAL_SCENES)
        for (task, stage, items, imgsz), stage_epochs in zip(
            (
                ("detect", "detector", _detector_items, DETECTOR_PX),
                ("pose", "keypoints", _keypoint_items, KEYPOINTS_PX),
            ),
            epochs,
        ):
            if stage not in stages:
                continue
            dest = out / f"ref_dogs_{stage}.onnx"
            with progress.step(
                f"{stage}: rendering scenes, training YOLOv8 ({task}) {stage_epochs} epochs, exporting ONNX"
            ):
                record = _train(YOLO, task, items(train), items(val), imgsz, stage_epochs, work, dest)
            record.update(
                {
                    "stage": stage,
                    "ultralytics": ultralytics.__version__,
                    "model_yaml": f"Ultralytics yolov8{'-pose' if task == 'pose' else ''}.yaml, depth {DEPTH}, width {WIDTH}",
                    "python": sys.version.split()[0],
                }
            )
            (out / f"ref_dogs_{stage}.json").write_text(json.dumps(record, indent=2) + "\n")
            written[stage] = dest
    return written
