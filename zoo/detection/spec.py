"""Pipeline specs: `[pipelines.NAME]` tables in a registry file (the built-in ones, then the user's).

    [pipelines.ref_dogs]
    description = "…"
    embedder = "ref_dog"          # a zoo model: converted and validated like any other
    crop_margin = 0.1             # the body crop: the box grown by this on each side, made square
    chip_size = 128               # the chip's side (px) before the embedder's own preprocessing

    [pipelines.ref_dogs.detector]  # an ONNX file from Ultralytics' YOLO exporter
    onnx = { path = "weights/detector.onnx", sha256 = "…" }
    classes = ["card"]             # the model's class names, in order
    keep = ["card"]                # the classes that go on to the embedder (default: all)
    score_threshold = 0.5
    iou_threshold = 0.5

    [pipelines.ref_dogs.keypoints]  # optional: a YOLO-pose ONNX run on each body crop
    onnx = { path = "weights/keypoints.onnx", sha256 = "…" }
    keypoints = 4
    min_confidence = 0.5           # a keypoint counts when its visibility is above this
    min_found = 4                  # the chip is taken when this many keypoints count, else the body crop
    chip = "warp"                  # warp: the 4 keypoints' quadrilateral to a square; box: their box
    chip_margin = 0.05

Paths are relative to the registry file.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from zoo.errors import UsageError, unknown_name
from zoo.registry import SHA256, Checkpoint, _absolute, builtin_registry_files, registry_files

CHIP_KINDS = ("warp", "box")


@dataclass(frozen=True)
class DetectorStage:
    onnx: Checkpoint
    classes: tuple[str, ...]
    keep: tuple[str, ...]
    score_threshold: float = 0.5
    iou_threshold: float = 0.5

    @property
    def keep_ids(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.keep)


@dataclass(frozen=True)
class KeypointStage:
    onnx: Checkpoint
    keypoints: int
    min_confidence: float = 0.5
    min_found: int = 4
    chip: str = "warp"
    chip_margin: float = 0.05
    score_threshold: float = 0.25  # the pose model's own box score (it looks at one crop)


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    embedder: str
    detector: DetectorStage
    keypoints: KeypointStage | None
    crop_margin: float = 0.1
    chip_size: int = 128
    description: str = ""

    def record(self) -> dict:
        """The spec as JSON data, file paths as their names only (the manifest's stages say where)."""
        data = asdict(self)
        for stage in ("detector", "keypoints"):
            if data[stage]:
                data[stage]["onnx"] = {
                    "file": Path(data[stage]["onnx"]["path"]).name,
                    "sha256": data[stage]["onnx"]["sha256"],
                }
        return data


def _number(table: dict, key: str, default: float, where: str, problems: list[str], lo=0.0, hi=1.0) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        problems.append(f"{where}.{key} must be a number in [{lo:g}, {hi:g}], not {value!r}")
        return default
    return float(value)


def _onnx(table: dict, where: str, base: Path, problems: list[str]) -> Checkpoint | None:
    onnx = table.get("onnx")
    if (
        not isinstance(onnx, dict)
        or not isinstance(onnx.get("path"), str)
        or not SHA256.fullmatch(str(onnx.get("sha256", "")))
    ):
        problems.append(f'{where}.onnx must be {{ path = "FILE.onnx", sha256 = "<64 hex digits>" }}, not {onnx!r}')
        return None
    return Checkpoint(_absolute(onnx["path"], base), onnx["sha256"].lower())


def _names(value, where: str, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        problems.append(f"{where} must be a non-empty list of names, not {value!r}")
        return ()
    return tuple(value)


def pipeline_from_dict(name: str, data: dict, source: Path) -> PipelineSpec:
    where = f"[pipelines.{name}]"
    problems: list[str] = []
    known = {"description", "embedder", "crop_margin", "chip_size", "detector", "keypoints"}
    if not isinstance(data, dict):
        raise UsageError(f"{where} in {source} must be a table")
    extra = sorted(set(data) - known)
    if extra:
        problems.append(f"{where}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
    embedder = data.get("embedder")
    if not isinstance(embedder, str) or not embedder:
        problems.append(f"{where}.embedder must name a registered model")
    base = Path(source).parent
    det_table = data.get("detector")
    detector = None
    if not isinstance(det_table, dict):
        problems.append(f"{where} needs a [pipelines.{name}.detector] table")
    else:
        onnx = _onnx(det_table, f"{where}.detector", base, problems)
        classes = _names(det_table.get("classes"), f"{where}.detector.classes", problems)
        keep = _names(det_table.get("keep", list(classes) or ["?"]), f"{where}.detector.keep", problems)
        missing = [k for k in keep if classes and k not in classes]
        if missing:
            problems.append(f"{where}.detector.keep names {', '.join(missing)}, not in classes {list(classes)}")
        score = _number(det_table, "score_threshold", 0.5, f"{where}.detector", problems)
        iou = _number(det_table, "iou_threshold", 0.5, f"{where}.detector", problems)
        if onnx and classes and not missing:
            detector = DetectorStage(onnx, classes, keep, score, iou)
    keypoints = None
    kp_table = data.get("keypoints")
    if kp_table is not None:
        kw = f"{where}.keypoints"
        if not isinstance(kp_table, dict):
            problems.append(f"{kw} must be a table")
        else:
            onnx = _onnx(kp_table, kw, base, problems)
            count = kp_table.get("keypoints")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                problems.append(f"{kw}.keypoints must be a positive integer, not {count!r}")
                count = 0
            chip = kp_table.get("chip", "warp")
            if chip not in CHIP_KINDS or (chip == "warp" and count != 4):
                problems.append(
                    f"{kw}.chip must be one of {', '.join(CHIP_KINDS)} (warp needs 4 keypoints), not {chip!r}"
                )
            found = kp_table.get("min_found", count)
            if not isinstance(found, int) or isinstance(found, bool) or not 1 <= found <= max(count, 1):
                problems.append(f"{kw}.min_found must be an integer from 1 to {count}, not {found!r}")
            conf = _number(kp_table, "min_confidence", 0.5, kw, problems)
            margin = _number(kp_table, "chip_margin", 0.05, kw, problems)
            score = _number(kp_table, "score_threshold", 0.25, kw, problems)
            if onnx and count:
                keypoints = KeypointStage(onnx, count, conf, found, chip, margin, score)
    margin = _number(data, "crop_margin", 0.1, where, problems)
    chip_size = data.get("chip_size", 128)
    if not isinstance(chip_size, int) or isinstance(chip_size, bool) or not 16 <= chip_size <= 1024:
        problems.append(f"{where}.chip_size must be an integer from 16 to 1024, not {chip_size!r}")
    if problems:
        raise UsageError(f"registry file {source}: " + "; ".join(problems))
    return PipelineSpec(name, embedder, detector, keypoints, margin, chip_size, str(data.get("description", "")))


def load_pipelines(extra_paths=()) -> dict[str, PipelineSpec]:
    """Every `[pipelines.NAME]` of the built-in registry files, then the user's (later ones may
    replace a pipeline only with `override = true`)."""
    found: dict[str, PipelineSpec] = {}
    for file in [*builtin_registry_files(), *registry_files(extra_paths)]:
        try:
            tables = tomllib.loads(Path(file).read_text()).get("pipelines", {})
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue  # the model registry reports unreadable files
        for name, table in tables.items():
            override = isinstance(table, dict) and table.pop("override", False)
            if name in found and not override:
                raise UsageError(
                    f"pipeline {name!r} in {file} is already defined", hint="rename it, or set `override = true` on it"
                )
            found[name] = pipeline_from_dict(name, table, Path(file))
    return found


def get_pipeline(name: str, extra_paths=()) -> PipelineSpec:
    pipelines = load_pipelines(extra_paths)
    if name not in pipelines:
        raise unknown_name("pipeline", name, sorted(pipelines))
    return pipelines[name]
