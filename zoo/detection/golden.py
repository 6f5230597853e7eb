"""Golden scenes for a pipeline package: photos, the detections zoo's reference path found in them,
and the source model's (torch fp32) embeddings of those crops.

`zoo verify` feeds the PNG bytes to the service's own path (decode → detect → keypoints → crop →
preprocess → embed on ONNX Runtime, the code `zoo serve` runs) and compares each embedding with the
reference one of the same detection (matched by box IoU), at the embedder target's threshold.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from zoo.detection.yolo import iou
from zoo.fidelity import Check, Fidelity, Status

GOLDEN_SCENES = 6
GOLDEN_SEED = 3_000_017  # never a training or check scene
MATCH_IOU = 0.9
CHECK_NAME = "consumer path (decode → detect → crop → embed) vs reference (cosine)"


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_pipeline_golden(directory: Path, pipeline_dir: Path, spec, min_cosine: float) -> dict:
    """Write `directory/scene_K.png`, `expected.npy` and `golden.json`; return the record."""
    from zoo.detection.runner import PipelineRunner
    from zoo.detection.scenes import scene
    from zoo.packaging.golden import source_embeddings
    from zoo.validators.inputs import preprocess

    runner = PipelineRunner(pipeline_dir, threads=0)
    directory.mkdir(parents=True, exist_ok=True)
    scenes, crops = [], []
    for k in range(GOLDEN_SCENES):
        sc = scene(GOLDEN_SEED + k, cards=2 if k % 2 else 1)
        data = _png_bytes(sc.image)
        (directory / f"scene_{k}.png").write_bytes(data)
        found = runner.run(sc.image)
        scenes.append(
            {
                "file": f"scene_{k}.png",
                "boxes": [[round(float(v), 3) for v in f.box] for f in found],
                "crop_paths": [f.crop_path for f in found],
            }
        )
        crops += [f.crop for f in found]
    cfg = runner.embedder_cfg["input"]
    expected = (
        source_embeddings(spec, preprocess(crops, int(cfg["size"]), cfg["mean"], cfg["std"]))[0]
        if crops
        else np.zeros((0, runner.embedding_dim), np.float32)
    )
    np.save(directory / "expected.npy", expected.astype(np.float32))
    record = {
        "what": "card scenes; per detection of zoo's reference path (ONNX Runtime stages, crop rules) the source "
        "model's torch fp32 embedding of its crop, in scene then detection order",
        "scenes": scenes,
        "detections": int(len(expected)),
        "min_cosine": min_cosine,
        "match_iou": MATCH_IOU,
    }
    (directory / "golden.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def consumer_path_check(package_root: Path, pipeline_dir: Path, golden_dir: Path) -> Check:
    """The service's path on the golden PNG bytes vs the reference embeddings, matched by box."""
    from zoo.detection.runner import PipelineRunner
    from zoo.serve import decode_image

    name = CHECK_NAME
    try:
        record = json.loads((golden_dir / "golden.json").read_text())
        expected = np.load(golden_dir / "expected.npy", allow_pickle=False)
    except (OSError, ValueError) as exc:
        return Check(
            name,
            Status.FAIL,
            Fidelity.MEASURED,
            artifact=str(golden_dir.relative_to(package_root)),
            detail=f"golden set unreadable: {exc}",
        )
    runner = PipelineRunner(pipeline_dir, threads=0)
    cosines, missing, k = [], 0, 0
    for sc in record["scenes"]:
        found = runner.run(decode_image((golden_dir / sc["file"]).read_bytes()))
        for box in sc["boxes"]:
            match = max(found, key=lambda f: iou(f.box, box), default=None)
            if match is None or iou(match.box, box) < record["match_iou"]:
                missing += 1
            else:
                cosines.append(
                    float(
                        match.embedding
                        @ expected[k]
                        / (np.linalg.norm(match.embedding) * np.linalg.norm(expected[k]) + 1e-12)
                    )
                )
            k += 1
    threshold = float(record["min_cosine"])
    worst = min(cosines) if cosines else None
    ok = bool(cosines) and not missing and worst >= threshold
    detail = f"{len(cosines)} detection(s) in {len(record['scenes'])} scene(s)" + (
        f"; {missing} reference detection(s) not found by the service path" if missing else ""
    )
    return Check(
        name,
        Status.PASS if ok else Status.FAIL,
        Fidelity.MEASURED,
        None if worst is None else round(worst, 6),
        f"min cosine ≥ {threshold}",
        str(pipeline_dir.relative_to(package_root)),
        detail,
        data={"cosines": [round(c, 6) for c in cosines]},
    )
