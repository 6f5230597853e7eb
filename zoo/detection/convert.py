"""`zoo convert --pipeline NAME --target T`: the embedder converted and validated as any model, the
detector and keypoint ONNX checked, and one output directory `<out>/<pipeline>/<target>/`:

    detection/model.onnx  keypoints/model.onnx  recognition/model.onnx  pipeline.json  report.json  report.md

`pipeline.json` states every stage's input contract (size, letterbox or crop, colour, scale,
mean/std, layout), its decoding and the crop rules, with each file's sha256; the report holds the
stage checks (all measured on ONNX Runtime here) and the embedder's own verdict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from zoo import __version__
from zoo.checkpoints import sha256_file
from zoo.detection import yolo
from zoo.detection.runner import PIPELINE_JSON, SCHEMA, PipelineRunner
from zoo.detection.spec import PipelineSpec, get_pipeline
from zoo.errors import UsageError
from zoo.fidelity import Check, Fidelity, Status
from zoo.outputs import file_entry, staged_directory, tool_versions, write_text_atomic
from zoo.packaging.errors import IntegrityError
from zoo.progress import QUIET, Progress
from zoo.report import Report

STAGE_DIRS = {"detector": "detection", "keypoints": "keypoints", "embedder": "recognition"}
MIN_OPSET, MAX_OPSET = 11, 21
CHECK_SCENES = 40
THRESHOLDS = {  # the reference pipeline's stage rules (the product's: same dog > 0.8, different < 0.5)
    "recall": 0.9,
    "precision": 0.9,
    "chip_share": 0.8,
    "corner_error": 0.1,
    "same": 0.8,
    "different": 0.5,
}


def _stage_contract(path: Path, stage: str, spec: PipelineSpec) -> tuple[dict, list[Check]]:
    """Opset, one static square (1, 3, S, S) input, one (1, 4 + classes (+ 3K), anchors) output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    cfg = spec.detector if stage == "detector" else spec.keypoints
    classes = len(cfg.classes) if stage == "detector" else 1
    kpts = 0 if stage == "detector" else cfg.keypoints
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    problems = []
    if not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset} (zoo runs {MIN_OPSET}–{MAX_OPSET})")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = [[d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in inputs]
    size = 0
    if (
        len(dims) != 1
        or len(dims[0]) != 4
        or dims[0][1] != 3
        or dims[0][2] != dims[0][3]
        or not isinstance(dims[0][2], int)
    ):
        problems.append(f"input shapes {dims} (expected one (1, 3, S, S) with a fixed S)")
    else:
        size = int(dims[0][2])
    outs = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    rows = 4 + classes + 3 * kpts
    if not outs or len(outs[0]) != 3 or outs[0][1] != rows:
        problems.append(
            f"output shapes {outs} (expected (1, {rows}, anchors): Ultralytics YOLO {'pose' if kpts else 'detect'})"
        )
    meta = {p.key: p.value for p in model.metadata_props}
    task = meta.get("task")
    if task and task != ("pose" if kpts else "detect"):
        problems.append(f"Ultralytics metadata says task {task!r}")
    contract = {
        "file": f"{STAGE_DIRS[stage]}/model.onnx",
        "format": f"ultralytics-yolo-{'pose' if kpts else 'detect'}",
        "opset": opset,
        "input": {
            "size": size,
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "resize": "letterbox: scale to fit, centred, padded with 114 (Ultralytics LetterBox)",
            "scale": "uint8 / 255.0",
            "mean": [0.0, 0.0, 0.0],
            "std": [1.0, 1.0, 1.0],
        },
        "output": f"(1, {rows}, anchors): cx, cy, w, h (letterboxed px), {classes} class score(s)"
        + (f", {kpts} × (x, y, visibility)" if kpts else "")
        + "; no NMS inside",
        "ultralytics_metadata": {k: meta[k] for k in ("task", "imgsz", "names", "kpt_shape", "version") if k in meta},
    }
    check = Check(
        name=f"{stage}: ONNX contract (opset, input, output)",
        status=Status.FAIL if problems else Status.PASS,
        fidelity=Fidelity.MEASURED,
        value=f"opset {opset}, input {dims[0] if dims else '—'}, output {outs[0] if outs else '—'}",
        threshold=f"opset {MIN_OPSET}–{MAX_OPSET}, (1,3,S,S), (1,{rows},N)",
        artifact=contract["file"],
        detail="; ".join(problems),
    )
    return contract, [check]


def _decode_check(runner: PipelineRunner) -> Check:
    """The detector's output decodes on real photos: finite, scores in [0, 1], boxes inside the image."""
    from zoo.validators.inputs import reference_photos

    problems, found = [], 0
    for name, photo in reference_photos():
        x, box = yolo.letterbox(photo, runner.detector_cfg["input"]["size"])
        out = runner.detector.run(x)
        if not np.isfinite(out).all():
            problems.append(f"{name}: non-finite outputs")
            continue
        rows = 4 + len(runner.detector_cfg["classes"])
        if out.ndim != 3 or out.shape[:2] != (1, rows) or out.shape[2] == 0:
            problems.append(f"{name}: output shape {tuple(out.shape)} at run time, not (1, {rows}, anchors)")
            continue
        scores = out[0, 4:rows]
        if scores.min() < 0 or scores.max() > 1:
            problems.append(f"{name}: class scores outside [0, 1] (not sigmoid scores: not an Ultralytics export?)")
        decoded = runner.decode_detections(out, box, photo.shape[:2])
        h, w = photo.shape[:2]
        if len(decoded.boxes) and (decoded.boxes[:, [0, 2]].max() > w or decoded.boxes[:, [1, 3]].max() > h):
            problems.append(f"{name}: boxes outside the image")
        found += len(decoded.boxes)
    return Check(
        name="detector: outputs decode on the reference photos",
        status=Status.FAIL if problems else Status.PASS,
        fidelity=Fidelity.MEASURED,
        value=f"{len(reference_photos())} photos, {found} detection(s)",
        threshold="finite, scores in [0, 1], boxes inside",
        artifact="detection/model.onnx",
        detail="; ".join(problems),
    )


def scene_checks(runner: PipelineRunner, count: int = CHECK_SCENES) -> tuple[list[Check], dict]:
    """Detector recall and precision, keypoint corner error and chip share, and same/different-card
    cosines of the whole pipeline, on seeded card scenes no stage was trained on."""
    from zoo.detection.scenes import scenes

    matched_emb, matched_ids, corner_errors = [], [], []
    truths = predictions = hits = chips = 0
    for sc in scenes(count):
        found = runner.run(sc.image)
        truths += len(sc.boxes)
        predictions += len(found)
        used = set()
        for f in found:
            ious = [(yolo.iou(f.box, b), k) for k, b in enumerate(sc.boxes) if k not in used]
            best = max(ious, default=(0.0, -1))
            if best[0] < 0.5:
                continue
            used.add(best[1])
            hits += 1
            chips += f.crop_path == "chip"
            matched_emb.append(f.embedding)
            matched_ids.append(sc.identities[best[1]])
            if f.keypoints is not None:
                box = sc.boxes[best[1]]
                side = max(box[2] - box[0], box[3] - box[1])
                corner_errors.append(
                    float(np.linalg.norm(f.keypoints[:, :2] - sc.corners[best[1]], axis=1).mean() / side)
                )
    recall, precision = hits / max(truths, 1), hits / max(predictions, 1)
    m = lambda value, ok: Status.PASS if ok else Status.FAIL  # noqa: E731
    checks = [
        Check(
            "detector: recall at IoU 0.5",
            m(recall, recall >= THRESHOLDS["recall"]),
            Fidelity.MEASURED,
            round(recall, 4),
            f"≥ {THRESHOLDS['recall']}",
            "detection/model.onnx",
            f"{hits} of {truths} cards in {count} scenes",
        ),
        Check(
            "detector: precision at IoU 0.5",
            m(precision, precision >= THRESHOLDS["precision"]),
            Fidelity.MEASURED,
            round(precision, 4),
            f"≥ {THRESHOLDS['precision']}",
            "detection/model.onnx",
            f"{hits} of {predictions} detections",
        ),
    ]
    data = {"scenes": count, "cards": truths, "detections": predictions, "matched": hits}
    if runner.keypoints is not None:
        share = chips / max(hits, 1)
        err = float(np.median(corner_errors)) if corner_errors else None
        checks += [
            Check(
                "keypoints: chip taken (enough keypoints found)",
                m(share, share >= THRESHOLDS["chip_share"]),
                Fidelity.MEASURED,
                round(share, 4),
                f"≥ {THRESHOLDS['chip_share']}",
                "keypoints/model.onnx",
                f"{chips} of {hits} detections took the chip; the rest the body crop",
            ),
            Check(
                "keypoints: median corner error / card side",
                m(err, err is not None and err <= THRESHOLDS["corner_error"]),
                Fidelity.MEASURED,
                None if err is None else round(err, 4),
                f"≤ {THRESHOLDS['corner_error']}",
                "keypoints/model.onnx",
                "" if corner_errors else "no keypoints on any matched detection",
            ),
        ]
    ids = np.asarray(matched_ids)
    if len(ids) > 1:
        e = np.stack(matched_emb)
        sim = e @ e.T
        same = (ids[:, None] == ids[None]) & ~np.eye(len(ids), dtype=bool)
        diff = ids[:, None] != ids[None]
        if same.any():
            p5 = float(np.percentile(sim[same], 5))
            checks.append(
                Check(
                    "pipeline: same card, p5 cosine",
                    m(p5, p5 > THRESHOLDS["same"]),
                    Fidelity.MEASURED,
                    round(p5, 4),
                    f"> {THRESHOLDS['same']}",
                    "recognition/model.onnx",
                    f"{int(same.sum()) // 2} pairs; min {sim[same].min():.3f}",
                )
            )
        p95 = float(np.percentile(sim[diff], 95))
        checks.append(
            Check(
                "pipeline: different cards, p95 cosine",
                m(p95, p95 < THRESHOLDS["different"]),
                Fidelity.MEASURED,
                round(p95, 4),
                f"< {THRESHOLDS['different']}",
                "recognition/model.onnx",
                f"{int(diff.sum()) // 2} pairs; max {sim[diff].max():.3f}",
            )
        )
        data["same_p5"] = round(p5, 4) if same.any() else None
        data["different_p95"] = round(p95, 4)
    return checks, data


def _verify_stage_file(stage: str, checkpoint) -> None:
    if not checkpoint.path.is_file():
        raise UsageError(
            f"{stage} ONNX {checkpoint.path} does not exist",
            hint="check the path in [pipelines.…] (relative to the registry file)",
        )
    actual = sha256_file(checkpoint.path)
    if actual != checkpoint.sha256:
        raise IntegrityError(
            f"{stage} ONNX {checkpoint.path} has sha256 {actual[:16]}…, the registry says {checkpoint.sha256[:16]}…",
            hint="the file changed since it was registered: restore it, or register its new sha256",
        )


def convert_pipeline(
    name: str,
    target: str,
    *,
    out_root: Path = Path("out"),
    registry_paths=(),
    latency_runs: int = 30,
    progress: Progress = QUIET,
):
    from zoo.packaging.sources import load_source
    from zoo.pipeline import Outcome, convert
    from zoo.registry import load_registry

    registry = load_registry(registry_paths)
    spec = get_pipeline(name, registry_paths)
    registry.get(spec.embedder)  # an unknown embedder fails before any work
    stages = [("detector", spec.detector)] + ([("keypoints", spec.keypoints)] if spec.keypoints else [])
    for stage, cfg in stages:
        _verify_stage_file(stage, cfg.onnx)
    with progress.step(f"embedder {spec.embedder} → {target}"):
        embedded = convert(
            spec.embedder, target, out_root=out_root, registry=registry, latency_runs=latency_runs, progress=progress
        )
    source = load_source(embedded.out_dir)
    onnx_entries = [a for a in source.artifacts if a.get("format") == "onnx" and a.get("runnable", True)]
    if not onnx_entries:
        raise UsageError(
            f"target {target} gives {spec.embedder} no runnable ONNX; a pipeline runs on ONNX Runtime",
            hint="use --target server or android",
        )
    entry = onnx_entries[0]
    model_spec = source.spec()
    final = Path(out_root) / name / target
    with staged_directory(final) as work:
        contracts, checks = {}, []
        for stage, cfg in stages:
            (work / STAGE_DIRS[stage]).mkdir(parents=True)
            shutil.copyfile(cfg.onnx.path, work / STAGE_DIRS[stage] / "model.onnx")
            contract, stage_checks = _stage_contract(work / STAGE_DIRS[stage] / "model.onnx", stage, spec)
            contract["sha256"] = file_entry(work, contract["file"])["sha256"]
            if stage == "detector":
                contract.update(
                    classes=list(cfg.classes),
                    keep=list(cfg.keep),
                    score_threshold=cfg.score_threshold,
                    iou_threshold=cfg.iou_threshold,
                )
            else:
                contract.update(
                    keypoints=cfg.keypoints,
                    min_confidence=cfg.min_confidence,
                    min_found=cfg.min_found,
                    chip=cfg.chip,
                    chip_margin=cfg.chip_margin,
                    score_threshold=cfg.score_threshold,
                    input_crop="the body crop (see crop), resized to the input size",
                )
            contracts[stage] = contract
            checks += stage_checks
        (work / "recognition").mkdir()
        shutil.copyfile(source.path / entry["path"], work / "recognition" / "model.onnx")
        rec = file_entry(work, "recognition/model.onnx")
        if rec["sha256"] != entry["sha256"]:
            raise IntegrityError(f"{source.path / entry['path']} changed while it was being copied")
        contracts["embedder"] = {
            "file": "recognition/model.onnx",
            "sha256": rec["sha256"],
            "model": spec.embedder,
            "target": target,
            "source_output": f"{spec.embedder}/{target}",
            "validation": {"verdict": source.verdict, "report_sha256": source.report_sha256()},
            "weights": "untrained" if source.untrained else "trained",
            "input": {
                "size": source.input_size,
                "layout": "NCHW",
                "dtype": "float32",
                "color": "RGB",
                "resize": f"shorter side to {source.input_size} px (bicubic), central crop",
                "scale": "uint8 / 255.0",
                "mean": list(model_spec.mean),
                "std": list(model_spec.std),
            },
            "embedding": {
                "dim": model_spec.embedding_dim,
                "space": model_spec.embedding_space,
                "l2_normalized": model_spec.normalize,
                "metric": "cosine",
            },
        }
        checks.append(
            Check(
                f"embedder: {spec.embedder} validation ({target})",
                Status.PASS if source.verdict.startswith("pass") else Status.FAIL,
                Fidelity.MEASURED,
                source.verdict,
                "pass",
                "recognition/model.onnx",
                "" if source.verdict.startswith("pass") else f"see {embedded.out_dir}/report.md",
            )
        )
        manifest = {
            "schema": SCHEMA,
            "schema_version": 1,
            "name": name,
            "target": target,
            "zoo_version": __version__,
            "description": spec.description,
            "flow": "detect → body crop → keypoints → chip (enough keypoints) or body crop → embed",
            "stages": contracts,
            "crop": {
                "margin": spec.crop_margin,
                "chip_size": spec.chip_size,
                "body": "the box grown by margin on each side, made square around its centre; outside the image is black",
            },
            "spec": spec.record(),
            "tools": tool_versions(),
        }
        write_text_atomic(work / PIPELINE_JSON, json.dumps(manifest, indent=2) + "\n")
        if not any(c.status is Status.FAIL for c in checks):
            with progress.step(f"running the pipeline on the reference photos and {CHECK_SCENES} check scenes"):
                runner = PipelineRunner(work, manifest, threads=0)
                checks.append(_decode_check(runner))
                more, data = scene_checks(runner)
                checks += more
        else:
            data = {}
        report = Report(
            name,
            target,
            tuple(checks),
            warnings=tuple(embedded.report.warnings),
            artifacts=("detection/model.onnx", "keypoints/model.onnx", "recognition/model.onnx"),
            info={"pipeline": name, "embedder": spec.embedder, "scene checks": data},
        )
        write_text_atomic(work / "report.json", report.to_json())
        write_text_atomic(work / "report.md", report.to_markdown())
    return Outcome(final, report)
