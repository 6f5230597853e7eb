"""`zoo package`: a versioned package for one consumer, built from validated output directories.

The package is a folder `<out>/<name>-<version>/`, its deterministic archive
`<name>-<version>.tar.gz` and `<name>-<version>.tar.gz.sha256` (plus, for Android, a Gradle snippet
with the archive's sha256 pinned, `<name>-<version>.gradle.kts`). Inside:

- the consumer's layout (zoo.packaging.layouts) with the artifacts, copied byte for byte and
  re-hashed against the output directory's manifest;
- `manifest.json`: schema version; models with roles and dependencies, embedding (dim,
  L2-normalized, metric, space), input spec; per artifact its path, format, target, sha256, size
  and toolchain versions; checkpoint and calibration sha256; the validation summary;
- `golden/<model>/<size>px/`: photos, preprocessed inputs and the source model's outputs;
- `README.md`, and `SHA256SUMS` (coreutils format) over every other file.

Only output directories whose validation passed go in; untrained weights are refused unless
`allow_untrained`, and then flagged in the manifest, the README and every app metadata file.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo import __version__
from zoo.checkpoints import sha256_file
from zoo.errors import UsageError
from zoo.outputs import file_entry, staged_directory, write_manifest
from zoo.packaging import golden as golden_mod
from zoo.packaging.archive import write_archive, write_sha256_sidecar, write_sha256sums
from zoo.packaging.errors import IntegrityError, PackageRefused
from zoo.packaging.layouts import IMMICH_TASK, Layout, PackageContext, Placement, get_layout, gradle_snippet
from zoo.packaging.sources import SourceDir, find_sources, gate, load_source
from zoo.progress import QUIET, Progress

SCHEMA = "zoo.package"
SCHEMA_VERSION = 1
NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")  # an OCI repository path component
VERSION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # an OCI tag


@dataclass(frozen=True)
class PackageOutcome:
    directory: Path
    archive: Path
    sha256: str
    sidecar: Path
    extras: tuple[Path, ...]
    manifest: dict

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]


def check_name_version(name: str, version: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(
            f"package name {name!r} is not usable as a store name",
            hint="lower-case letters and digits, separated by single '.', '_' or '-' (e.g. tiny_vit-android)",
        )
    if not VERSION_RE.match(version):
        raise UsageError(
            f"version {version!r} is not usable as a store tag",
            hint="letters, digits, '.', '_' and '-', at most 128 characters, not starting with '.' or '-' "
            "(e.g. 1.4.0 or 2026.11.21-rc1)",
        )


def default_name(consumer: str, models: Sequence[str]) -> str:
    base = "-".join(models) if 0 < len(models) <= 3 else "zoo"
    return re.sub(r"[^a-z0-9._-]+", "-", f"{base}-{consumer}".lower())


def build_package(
    *,
    consumer: str,
    version: str,
    outputs: Path = Path("out"),
    models: Sequence[str] = (),
    targets: Sequence[str] = (),
    out: Path = Path("dist"),
    name: str | None = None,
    detector: Path | None = None,
    pipeline: str | None = None,
    allow_untrained: bool = False,
    golden_count: int = 3,
    download_url: str | None = None,
    progress: Progress = QUIET,
) -> PackageOutcome:
    """Build the package folder, its archive and sidecars; refuse anything that did not pass.
    `pipeline`: an immich package of a `zoo convert --pipeline` output (its stages, and its embedder's
    validated output directory)."""
    probe = get_layout(consumer, "probe")
    targets = tuple(targets) or probe.targets
    staged = None
    if pipeline:
        staged = find_pipeline_source(Path(outputs), pipeline, targets, consumer, models, detector)
        sources_by_model = {staged.embedder.model: [staged.embedder]}
    else:
        sources_by_model = find_sources(Path(outputs), targets, models)
    name = name or default_name(consumer, [pipeline] if pipeline else list(sources_by_model))
    check_name_version(name, version)
    layout = get_layout(consumer, name)
    if staged:
        layout.folders[staged.embedder.model] = pipeline
    if detector is not None:
        if not layout.takes_detector:
            raise UsageError(f"--detector is for --consumer immich, not {consumer}")
        if len(sources_by_model) != 1:
            raise UsageError("--detector goes with exactly one embedding model (pass one --models NAME)")
        if not Path(detector).is_file():
            raise UsageError(f"detector {detector} does not exist")

    selected: dict[str, list[SourceDir]] = {}
    for model, sources in sources_by_model.items():
        chosen = layout.select(sources)
        for source in chosen:
            gate(source, allow_untrained=allow_untrained)
        selected[model] = chosen
    placements = _placements(layout, selected, consumer)

    out = Path(out)
    directory = out / f"{name}-{version}"
    with staged_directory(directory) as work:
        with progress.step(f"copying {len(placements)} artifact(s) into the {consumer} layout"):
            for p in placements:
                _copy_verified(p, work)
        detector_entry = _place_detector(layout, work, detector, next(iter(selected))) if detector else None
        stage_entries = _place_stages(staged, work) if staged else []
        with progress.step("golden inputs and the source model's expected outputs"):
            model_entries = [
                _model_entry(model, sources, [p for p in placements if p.source.model == model], work, golden_count)
                for model, sources in selected.items()
            ]
        if detector_entry:
            model_entries[0]["depends_on"] = [detector_entry["name"]]
            model_entries.insert(0, detector_entry)
        if stage_entries:
            from zoo.detection.golden import write_pipeline_golden

            with progress.step("golden scenes through the pipeline's reference path"):
                min_cos = float(staged.embedder.manifest["target"]["min_cosine_vs_source"])
                write_pipeline_golden(
                    work / "golden" / f"{pipeline}-pipeline",
                    work / IMMICH_TASK / pipeline,
                    staged.embedder.spec(),
                    min_cos,
                )
            model_entries[0]["depends_on"] = [e["name"] for e in stage_entries]
            model_entries[0]["pipeline"] = pipeline
            model_entries[:0] = stage_entries
        untrained = [m["name"] for m in model_entries if m.get("untrained_weights")]
        warnings = [
            f"UNTRAINED WEIGHTS: {m} has no trained checkpoint; its embeddings mean nothing. "
            "Packaged with --allow-untrained: do not ship."
            for m in untrained
        ]
        ctx = PackageContext(name, version, model_entries, bool(untrained), warnings)
        for rel, text in layout.support_files(ctx).items():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            (work / rel).write_text(text)
        manifest = {
            **(
                {"pipeline": {"name": pipeline, "manifest": f"{IMMICH_TASK}/{pipeline}/pipeline.json"}}
                if staged
                else {}
            ),
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "version": version,
            "consumer": consumer,
            "zoo_version": __version__,
            "untrained_weights": bool(untrained),
            "warnings": warnings,
            "models": model_entries,
            "layout": _layout_record(layout),
            "integrity": "SHA256SUMS lists the sha256 of every other file (coreutils format: sha256sum -c SHA256SUMS)",
        }
        write_manifest(work, manifest)
        (work / "README.md").write_text(_readme(manifest))
        write_sha256sums(work)

    archive = out / f"{name}-{version}.tar.gz"
    with progress.step(f"archive {archive.name}"):
        digest = write_archive(directory, archive, top=directory.name)
    sidecar = write_sha256_sidecar(archive, digest)
    extras: list[Path] = []
    if consumer == "android":
        snippet = out / f"{name}-{version}.gradle.kts"
        snippet.write_text(gradle_snippet(name, version, sha256=digest, url=download_url))
        extras.append(snippet)
    return PackageOutcome(directory, archive, digest, sidecar, tuple(extras), manifest)


def _placements(layout: Layout, selected: dict[str, list[SourceDir]], consumer: str) -> list[Placement]:
    placements: list[Placement] = []
    for model, sources in selected.items():
        mine = [p for s in sources for p in layout.place(s)]
        if not mine:
            formats = sorted({a["format"] for s in sources for a in s.artifacts})
            raise UsageError(
                f"{model}: no artifact the {consumer} consumer can use in "
                + ", ".join(str(s.path) for s in sources)
                + f" (formats there: {', '.join(formats)})",
                hint=f"convert {model} for one of the targets {', '.join(layout.targets)}",
            )
        placements += mine
    seen: dict[str, Placement] = {}
    for p in placements:
        if p.dest in seen:
            other = seen[p.dest]
            raise UsageError(
                f"{p.source.path}/{p.entry['path']} and {other.source.path}/{other.entry['path']} "
                f"would both go to {p.dest}",
                hint="choose one of their targets with --targets",
            )
        seen[p.dest] = p
    return placements


def _copy_verified(p: Placement, work: Path) -> None:
    """Copy one artifact and prove the copy is the validated file (sha256 from the source manifest)."""
    src = p.source.path / p.entry["path"]
    dest = work / p.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=False)
    else:
        shutil.copyfile(src, dest)
    if file_entry(work, p.dest)["sha256"] != p.entry["sha256"]:
        raise IntegrityError(f"{src} changed while it was being packaged (sha256 differs from its manifest)")


@dataclass(frozen=True)
class PipelineSource:
    """A `zoo convert --pipeline` output and its embedder's output directory, both passed."""

    path: Path
    manifest: dict
    report: dict
    embedder: SourceDir


def find_pipeline_source(outputs: Path, pipeline: str, targets, consumer: str, models, detector) -> PipelineSource:
    from zoo.detection.runner import read_pipeline_manifest

    if consumer != "immich":
        raise UsageError(f"--pipeline is for --consumer immich, not {consumer}")
    if models or detector:
        raise UsageError("--pipeline brings its own stages: leave out --models and --detector")
    dirs = [outputs / pipeline / t for t in targets if (outputs / pipeline / t / "pipeline.json").is_file()]
    if not dirs:
        raise UsageError(
            f"pipeline {pipeline!r} has no output under {outputs} for {', '.join(targets)}",
            hint=f"run `zoo convert --pipeline {pipeline} --target {targets[0]} --out {outputs}` first",
        )
    path = dirs[0]
    manifest = read_pipeline_manifest(path)
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise PackageRefused(
            f"{path} has no readable report.json; zoo packages only pipelines whose checks passed"
        ) from None
    failed = [f"{c.get('name')} = {c.get('value')}" for c in report.get("checks", []) if c.get("status") == "fail"]
    if failed or not str(report.get("verdict", "")).startswith("pass"):
        raise PackageRefused(
            f"{path}: pipeline checks FAILED ({'; '.join(failed[:3]) or report.get('verdict')}); zoo packages only pipelines that passed",
            hint=f"see {path}/report.md",
        )
    for stage, cfg in manifest["stages"].items():
        if sha256_file(path / cfg["file"]) != cfg["sha256"]:
            raise IntegrityError(f"{path / cfg['file']} ({stage}) does not match pipeline.json (sha256)")
    embedder = load_source(outputs / manifest["stages"]["embedder"]["source_output"])
    if manifest["stages"]["embedder"]["sha256"] not in {a.get("sha256") for a in embedder.artifacts}:
        raise IntegrityError(
            f"{path}/recognition/model.onnx is not an artifact of {embedder.path} any more (converted again since?)",
            hint=f"run `zoo convert --pipeline {pipeline} --target {embedder.target}` again",
        )
    return PipelineSource(path, manifest, report, embedder)


def _place_stages(staged: PipelineSource, work: Path) -> list[dict]:
    """The detector and keypoint ONNX, and pipeline.json, beside the recognition model."""
    base = f"{IMMICH_TASK}/{staged.manifest['name']}"
    for rel in ("pipeline.json", "report.json"):
        shutil.copyfile(staged.path / rel, work / base / ("pipeline-report.json" if rel == "report.json" else rel))
    entries = []
    for stage, cfg in staged.manifest["stages"].items():
        if stage == "embedder":
            continue
        rel = f"{base}/{cfg['file']}"
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(staged.path / cfg["file"], work / rel)
        entry = file_entry(work, rel)
        if entry["sha256"] != cfg["sha256"]:
            raise IntegrityError(f"{staged.path / cfg['file']} changed while it was being packaged")
        checks = [c for c in staged.report.get("checks", []) if str(c.get("name", "")).startswith(f"{stage}:")]
        entries.append(
            {
                "name": f"{staged.manifest['name']}-{stage}",
                "role": "detector" if stage == "detector" else "keypoints",
                "registry_role": None,
                "teacher": None,
                "depends_on": [],
                "description": f"{stage} stage of pipeline {staged.manifest['name']} ({cfg['format']})",
                "weights": "trained",
                "untrained_weights": False,
                "embedding": None,
                "input": cfg["input"],
                "checkpoint_sha256": cfg["sha256"],
                "calibration_sha256": None,
                "tags": {},
                "artifacts": [
                    {
                        **entry,
                        "format": "onnx",
                        "target": staged.manifest["target"],
                        "runtime": "onnxruntime",
                        "runnable": False,
                        "source": f"{staged.manifest['name']}/{staged.manifest['target']}/{cfg['file']}",
                        "toolchain": {},
                    }
                ],
                "validation": {
                    "verdict": staged.report.get("verdict"),
                    "detail": "the pipeline's stage checks (zoo convert --pipeline)",
                    "checks": [
                        {k: c.get(k) for k in ("name", "status", "value", "threshold", "fidelity")} for c in checks
                    ],
                },
                "golden": [],
            }
        )
    return entries


def _place_detector(layout: Layout, work: Path, detector: Path, model: str) -> dict:
    rel = layout.detector_path(model)
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(detector, work / rel)
    entry = file_entry(work, rel)
    return {
        "name": f"{model}-detector",
        "role": "detector",
        "registry_role": None,
        "teacher": None,
        "depends_on": [],
        "description": f"detector supplied with --detector ({Path(detector).name}); runs before {model}",
        "weights": "supplied",
        "untrained_weights": False,
        "embedding": None,
        "input": None,
        "checkpoint_sha256": None,
        "calibration_sha256": None,
        "tags": {},
        "artifacts": [
            {
                **entry,
                "format": "onnx",
                "target": None,
                "runtime": "onnxruntime",
                "runnable": False,
                "source": Path(detector).name,
                "toolchain": {},
            }
        ],
        "validation": {"verdict": "not validated by zoo", "detail": "hashed only; zoo has no reference for it"},
        "golden": [],
    }


def _model_entry(model: str, sources: list[SourceDir], placed: list[Placement], work: Path, count: int) -> dict:
    first = sources[0]
    spec = first.spec()
    sizes = sorted({s.input_size for s in sources})
    goldens = []
    for size in sizes:
        min_cos = min(float(s.manifest["target"]["min_cosine_vs_source"]) for s in sources if s.input_size == size)
        rel = golden_mod.golden_dir(model, size)
        record = golden_mod.write_golden(work / rel, spec, size, count, min_cos)
        goldens.append({"dir": rel, "input_size": size, "count": record["count"], "min_cosine": min_cos})
    calibration = sorted(
        {s.manifest["calibration"]["sha256"] for s in sources if isinstance(s.manifest.get("calibration"), dict)}
    )
    artifacts = []
    for p in placed:
        target = p.source.manifest["target"]
        artifacts.append(
            {
                **file_entry(work, p.dest),
                "format": p.entry["format"],
                "target": p.source.target,
                "precision": target.get("precision"),
                "input_size": p.source.input_size,
                "input_layout": target.get("input_layout", "NCHW"),
                "runtime": p.entry.get("runtime") or target.get("runtime"),
                "runnable": bool(p.entry.get("runnable", True)),
                "host_l2_normalize": bool(p.entry.get("host_l2_normalize", False)),
                "min_cosine_vs_source": float(target["min_cosine_vs_source"]),
                "golden": golden_mod.golden_dir(model, p.source.input_size),
                "source": f"{model}/{p.source.target}/{p.entry['path']}",
                "description": p.entry.get("description", ""),
                "toolchain": p.source.manifest.get("tools", {}),
            }
        )
    untrained = any(s.untrained for s in sources)
    return {
        "name": model,
        "role": "embedder",
        "registry_role": spec.role,
        "teacher": spec.teacher,
        "depends_on": [],
        "description": spec.description,
        "weights": "untrained" if untrained else "trained",
        "untrained_weights": untrained,
        "embedding": {
            "dim": spec.embedding_dim,
            "l2_normalized": spec.normalize,
            "metric": "cosine",
            "space": spec.embedding_space,
        },
        "input": {
            "size": first.input_size,
            "sizes": sizes,
            "color": "RGB",
            "layout": "NCHW",
            "dtype": "float32",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "preprocessing": golden_mod.preprocessing_spec(spec, first.input_size),
        },
        "checkpoint_sha256": spec.checkpoint.sha256 if spec.checkpoint else None,
        "calibration_sha256": calibration[0] if len(calibration) == 1 else (calibration or None),
        "tags": dict(spec.tags),
        "artifacts": artifacts,
        "validation": [_validation_summary(s) for s in sources],
        "golden": goldens,
    }


def _validation_summary(source: SourceDir) -> dict:
    checks = source.report.get("checks", [])
    return {
        "target": source.target,
        "verdict": source.verdict,
        "counts": source.report.get("counts", {}),
        "report_sha256": source.report_sha256(),
        "output_manifest_sha256": sha256_file(source.path / "manifest.json"),
        "validation_runtime": source.report.get("info", {}).get("validation runtime"),
        "checks": [
            {
                k: c.get(k)
                for k in ("artifact", "name", "status", "value", "threshold", "fidelity")
                if c.get(k) not in (None, "")
            }
            for c in checks
        ],
    }


def _layout_record(layout: Layout) -> dict:
    record = {"consumer": layout.consumer, "targets": list(layout.targets)}
    if layout.consumer == "immich":
        from zoo.packaging.layouts import IMMICH_TASK

        record["immich_task"] = IMMICH_TASK
        record["immich_cache_path"] = f"<cache>/{IMMICH_TASK}/<model_name>/<detection|recognition>/model.onnx"
    if layout.consumer == "ios":
        record["swift_package"] = layout.swift
    if layout.consumer == "android":
        record["assets"] = "assets/<model>/ (copy into src/main/assets, or use gradle/zoo-assets.gradle.kts)"
    return record


def _readme(manifest: dict) -> str:
    lines = [f"# {manifest['name']} {manifest['version']} ({manifest['consumer']})", ""]
    for warning in manifest["warnings"]:
        lines += [f"> **{warning}**", ""]
    lines += ["Built by zoo from output directories whose validation passed.", "", "## Models", ""]
    for m in manifest["models"]:
        if m["role"] in ("detector", "keypoints"):
            how = (
                "checked by the pipeline's stage checks"
                if isinstance(m["validation"].get("checks"), list)
                else "supplied, not validated by zoo"
            )
            lines.append(f"- **{m['name']}** ({m['role']}, {how})")
            continue
        e, i = m["embedding"], m["input"]
        lines.append(
            f"- **{m['name']}** ({m['weights']} weights): {e['dim']}-d, space `{e['space']}`, "
            f"{'L2-normalized' if e['l2_normalized'] else 'L2-normalize on the host'}, {e['metric']}; "
            f"input {i['size']}×{i['size']} RGB, mean {i['mean']}, std {i['std']}, NCHW float32"
            + (f"; after {', '.join(m['depends_on'])}" if m["depends_on"] else "")
        )
        for a in m["artifacts"]:
            lines.append(f"  - `{a['path']}` ({a['format']}, target {a['target']}, sha256 {a['sha256'][:16]}…)")
    lines += [
        "",
        "## Check it",
        "",
        "- files: `sha256sum -c SHA256SUMS` in this folder (every file but SHA256SUMS is listed);",
        "- models: `zoo verify .` re-hashes every file and runs the golden inputs through every artifact "
        "whose runtime is available (others are reported as not run);",
        "- your own preprocessing: `golden/<model>/<size>px/` has the photos (PNG), the tensors zoo fed the "
        "model (`inputs.npy`) and the source model's outputs (`expected.npy`); see its `golden.json`.",
        "",
    ]
    return "\n".join(lines)


def read_package_manifest(directory: Path) -> dict:
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{directory} has no manifest.json; it is not a zoo package") from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("schema") != SCHEMA:
        raise UsageError(f"{directory} is not a zoo package (manifest schema {manifest.get('schema')!r})")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise UsageError(
            f"{directory} uses package schema {manifest['schema_version']}; this zoo reads up to {SCHEMA_VERSION}",
            hint="upgrade zoo",
        )
    return manifest
