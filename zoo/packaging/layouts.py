"""Consumer layouts: where each app expects the artifacts, and the files that go with them.

| consumer | takes from targets | artifacts | layout |
|---|---|---|---|
| immich | server, else android | the model's ONNX (512-d, batch axis `batch`, one output), or a pipeline's three stages | `facial-recognition/<model or pipeline>/recognition/model.onnx` (+ `detection/model.onnx` with --detector or a pipeline, `keypoints/model.onnx` and `pipeline.json` for a pipeline), a model card `README.md` with YAML front matter stating the input contract |
| ios | ios | `.mlpackage` / `.mlmodel` | a Swift package: `Package.swift`, `Sources/<Name>/Resources/<model>.mlpackage` + `<model>.json`, `Sources/<Name>/<Name>.swift` |
| android | android, tflite | `.onnx`, `.ort`, `.tflite`, `required_operators.config` | `assets/<model>/…` + `model.json`, and a Gradle (Kotlin DSL) snippet that downloads the archive and checks its sha256 |

Immich's ML service loads `<cache>/<task>/<model_name>/<type>/model.onnx` (task `facial-recognition`,
types `detection` and `recognition`), so the immich package's `facial-recognition/` folder can be
merged into its model cache, or served by a service in front of it that speaks `/predict`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Protocol

from zoo.errors import UsageError
from zoo.packaging.sources import SourceDir

IMMICH_TASK = "facial-recognition"


@dataclass(frozen=True)
class Placement:
    """One artifact of a source directory, and where it goes in the package."""

    dest: str
    source: SourceDir
    entry: dict  # the source manifest's artifact entry (path, format, sha256, runtime …)


@dataclass(frozen=True)
class PackageContext:
    """What a layout needs to write its support files."""

    name: str
    version: str
    models: list[dict]  # the package manifest's model entries
    untrained: bool
    warnings: list[str] = field(default_factory=list)


class Layout(Protocol):
    consumer: str
    targets: tuple[str, ...]  # output targets it takes artifacts from, in order of preference
    takes_detector: bool

    def select(self, sources: list[SourceDir]) -> list[SourceDir]:
        """Which of a model's output directories to use."""

    def place(self, source: SourceDir) -> list[Placement]:
        """The artifacts of one output directory, each with its path in the package."""

    def detector_path(self, model: str) -> str: ...

    def support_files(self, ctx: PackageContext) -> dict[str, str]:
        """Extra text files (path in the package → content)."""


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def front_matter(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, (list, tuple)):
            lines.append(f"{key}:")
            lines.extend(f"  - {_yaml_scalar(v)}" for v in value)
        else:
            lines.append(f"{key}: {_yaml_scalar(value)}")
    lines.append("---")
    return "\n".join(lines) + "\n"


def _embedders(ctx: PackageContext) -> list[dict]:
    return [m for m in ctx.models if m["role"] == "embedder"]


def app_metadata(ctx: PackageContext, model: dict, base: str) -> str:
    """The per-model JSON an app reads: embedding, input spec, weights, and its files' hashes."""
    files = [
        {
            "file": str(PurePosixPath(a["path"]).relative_to(base)),
            "format": a["format"],
            "sha256": a["sha256"],
            "target": a["target"],
        }
        for a in model["artifacts"]
        if PurePosixPath(a["path"]).is_relative_to(base)
    ]
    return (
        json.dumps(
            {
                "package": {"name": ctx.name, "version": ctx.version},
                "model": model["name"],
                "weights": model["weights"],
                "untrained_weights": model["untrained_weights"],
                "embedding": model["embedding"],
                "input": model["input"],
                "tags": model["tags"],
                "files": files,
            },
            indent=2,
        )
        + "\n"
    )


IMMICH_EMBEDDING_DIM = 512  # Immich's face table column is vector(512)
IMMICH_FACE_FORMAT = "onnx-immich-face"  # zoo.converters.onnx_to_immich_face: Immich's 112-px face blob in


def immich_rule_violations(path, embedding_dim: int) -> list[str]:
    """Immich's rules for a recognition model, from its service's code: a 512-d embedding, a first
    input whose batch axis is named `batch` (else Immich rewrites the file in place), one output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    problems = []
    if embedding_dim != IMMICH_EMBEDDING_DIM:
        problems.append(f"512-d embedding (Immich's face column is vector(512)): this model gives {embedding_dim}-d")
    first = inputs[0].type.tensor_type.shape.dim[0] if inputs and inputs[0].type.tensor_type.shape.dim else None
    if first is None or first.dim_param != "batch":
        shown = "none" if first is None else (first.dim_param or first.dim_value)
        problems.append(
            f"a batch axis named 'batch' on the first input (Immich rewrites any other model in place): it is {shown!r}"
        )
    if len(model.graph.output) != 1:
        problems.append(f"one output: the model has {len(model.graph.output)}")
    return problems


class ImmichLayout:
    consumer = "immich"
    targets = ("immich", "server", "android")
    takes_detector = True

    def __init__(self, name: str):
        self.name = name
        self.folders: dict[str, str] = {}  # model → its folder under facial-recognition/ (a pipeline's name)

    def folder(self, model: str) -> str:
        return self.folders.get(model, model)

    def select(self, sources: list[SourceDir]) -> list[SourceDir]:
        return sources[:1]  # one embedding ONNX per model: the first target found, in preference order

    def place(self, source: SourceDir) -> list[Placement]:
        # the `immich` target's model takes Immich's own face input; else the plain ONNX (zoo's preprocessing)
        onnx = [a for a in source.artifacts if a.get("format") == IMMICH_FACE_FORMAT] or [
            a for a in source.artifacts if a.get("format") == "onnx" and a.get("runnable", True)
        ]
        if not onnx:
            raise UsageError(f"{source.path} has no runnable .onnx artifact for Immich")
        problems = immich_rule_violations(source.path / onnx[0]["path"], source.spec().embedding_dim)
        if problems:
            raise UsageError(
                f"{source.model} ({source.target}) breaks Immich's rule(s): " + "; ".join(problems),
                hint="Immich takes a 512-d model with a dynamic batch axis: register embedding_dim = 512 and "
                "convert it for --target server",
            )
        return [Placement(f"{IMMICH_TASK}/{self.folder(source.model)}/recognition/model.onnx", source, onnx[0])]

    def detector_path(self, model: str) -> str:
        return f"{IMMICH_TASK}/{self.folder(model)}/detection/model.onnx"

    def support_files(self, ctx: PackageContext) -> dict[str, str]:
        files = {}
        for model in _embedders(ctx):
            folder = self.folder(model["name"])
            base = f"{IMMICH_TASK}/{folder}"
            inp, emb = model["input"], model["embedding"]
            stages = [m for m in ctx.models if m["name"] in model["depends_on"]]
            pipeline = model.get("pipeline")
            immich_input = any(
                a["format"] == IMMICH_FACE_FORMAT for a in model["artifacts"]
            )  # the immich target's model: Immich's own face input
            tags = ["immich", IMMICH_TASK, "zoo", "embedding"] + (["pipeline"] if pipeline else [])
            if model["untrained_weights"]:
                tags.append("untrained-weights")
            types = ["recognition"] + ["detection" if m["role"] == "detector" else m["role"] for m in stages]
            card = front_matter(
                {
                    "library_name": "zoo",
                    "pipeline_tag": "image-feature-extraction",
                    "tags": tags,
                    "zoo_package": ctx.name,
                    "zoo_package_version": ctx.version,
                    "model_name": folder,
                    "embedder": model["name"],
                    "immich_task": IMMICH_TASK,
                    "model_types": types,
                    "embedding_dim": emb["dim"],
                    "embedding_space": emb["space"],
                    "l2_normalized": emb["l2_normalized"],
                    "metric": emb["metric"],
                    "input_size": inp["size"],
                    "input_contract": "immich-face: 112x112 RGB, (x - 127.5) / 127.5, NCHW float32"
                    if immich_input
                    else "zoo: RGB, shorter side to input_size (bicubic), central crop, /255, (x - mean) / std, "
                    "NCHW float32",
                    "input_mean": inp["mean"],
                    "input_std": inp["std"],
                    "weights": model["weights"],
                }
            )
            warning = (
                "\n> **UNTRAINED WEIGHTS**: this model has no trained checkpoint; its embeddings mean nothing. "
                "Do not ship it.\n"
                if model["untrained_weights"]
                else ""
            )
            contract = (
                "Immich's face blob: 112×112 RGB, (x − 127.5) / 127.5, NCHW float32 — what Immich's recognition "
                f"feeds; zoo's resize to {inp['size']} px and mean/std are folded into the graph"
                if immich_input
                else f"RGB, shorter side to {inp['size']} px (bicubic), central crop, /255, mean {inp['mean']}, "
                f"std {inp['std']}, NCHW float32"
            )
            lines = [
                f"- `recognition/model.onnx`: {emb['dim']}-d embedding, space `{emb['space']}`, "
                + ("L2-normalized in the model" if emb["l2_normalized"] else "L2-normalize on the host")
                + f", compare with {emb['metric']}; batch axis `batch`, one output (Immich's rules). "
                f"Input: {contract}."
            ]
            for m in stages:
                rel = str(PurePosixPath(m["artifacts"][0]["path"]).relative_to(base))
                how = (
                    "checked by the pipeline's stage checks (see `pipeline-report.json`)"
                    if isinstance(m["validation"], dict) and m["validation"].get("checks")
                    else "supplied as an ONNX file; zoo hashed it but did not validate it"
                )
                lines.append(f"- `{rel}`: {m['role']} `{m['name']}`, {how}")
            if pipeline:
                lines.append(
                    "- `pipeline.json`: the stages' input contracts (letterbox, crop, colour, scale, mean/std), "
                    "the YOLO output decoding and the crop rules"
                )
            how_to_use = (
                f"Serve it with `zoo serve <package>` (Immich's ML protocol: `POST /predict`, port 3003) and point "
                "Immich's server at that URL in Administration → Settings → Machine Learning → URL; any face "
                f"model name there runs `{folder}`. "
                if pipeline
                else "Copy `recognition/` into Immich's model cache (see below), or serve it from a service in front "
                "of Immich's ML service that speaks `/predict`. "
                if immich_input
                else "Serve it from a service in front of Immich's ML service that speaks `/predict` and applies "
                "this model's preprocessing. "
            )
            stock = (
                "Immich's stock face code feeds this recognition model what it expects (112-px crops, "
                "(x − 127.5) / 127.5), but loads the folder only under one of its model names (antelopev2 / "
                "buffalo_s / buffalo_m / buffalo_l) and with an insightface RetinaFace/SCRFD detector in "
                "`detection/model.onnx` (if that fails to load, Immich deletes the folder)."
                if immich_input
                else "Immich's stock face code does not load this folder as it is: it accepts only the model names "
                "antelopev2 / buffalo_s / buffalo_m / buffalo_l, always runs an insightface detector, and feeds "
                "recognition 112-px landmark-aligned crops scaled (x − 127.5) / 127.5, not this model's "
                "preprocessing (it never reads a preprocessing file for faces); `--target immich` folds that in."
            )
            files[f"{base}/README.md"] = (
                card
                + f"\n# {folder} for Immich\n{warning}\n"
                + f"Package `{ctx.name}` {ctx.version}, built by zoo. {how_to_use}{stock}\n\n"
                + "\n".join(lines)
                + "\n\nCheck the files with `sha256sum -c SHA256SUMS` at the package root, and the models with "
                "`zoo verify <package>` (golden inputs and expected outputs are in `golden/`).\n"
            )
        return files


class AndroidLayout:
    consumer = "android"
    targets = ("android", "tflite")
    takes_detector = False
    formats = frozenset({"onnx", "ort", "tflite"})

    def __init__(self, name: str):
        self.name = name

    def select(self, sources: list[SourceDir]) -> list[SourceDir]:
        return sources

    def place(self, source: SourceDir) -> list[Placement]:
        placed = []
        for a in source.artifacts:
            runnable = a.get("format") in self.formats and a.get("runnable", True)
            operators = a.get("format") == "config" and a["path"].endswith("required_operators.config")
            if runnable or operators:
                placed.append(Placement(f"assets/{source.model}/{PurePosixPath(a['path']).name}", source, a))
        return placed

    def detector_path(self, model: str) -> str:
        raise UsageError("--detector is for --consumer immich")

    def support_files(self, ctx: PackageContext) -> dict[str, str]:
        files = {f"assets/{m['name']}/model.json": app_metadata(ctx, m, f"assets/{m['name']}") for m in ctx.models}
        files["gradle/zoo-assets.gradle.kts"] = gradle_snippet(ctx.name, ctx.version, sha256=None, url=None)
        return files


def swift_name(package_name: str) -> str:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", package_name) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Zoo"
    return name if name[0].isalpha() else "Zoo" + name


def _lower_camel(name: str) -> str:
    upper = swift_name(name)
    return upper[:1].lower() + upper[1:]


class IosLayout:
    consumer = "ios"
    targets = ("ios",)
    takes_detector = False
    formats = frozenset({"mlpackage", "mlmodel"})

    def __init__(self, name: str):
        self.name = name
        self.swift = swift_name(name)

    @property
    def resources(self) -> str:
        return f"Sources/{self.swift}/Resources"

    def select(self, sources: list[SourceDir]) -> list[SourceDir]:
        return sources

    def place(self, source: SourceDir) -> list[Placement]:
        placed = []
        for a in source.artifacts:
            if a.get("format") not in self.formats:
                continue
            stem = PurePosixPath(a["path"]).stem
            resource = source.model if stem == "model" else f"{source.model}-{stem}"
            placed.append(Placement(f"{self.resources}/{resource}.{a['format']}", source, a))
        return placed

    def detector_path(self, model: str) -> str:
        raise UsageError("--detector is for --consumer immich")

    def support_files(self, ctx: PackageContext) -> dict[str, str]:
        files = {f"{self.resources}/{m['name']}.json": app_metadata(ctx, m, self.resources) for m in _embedders(ctx)}
        files["Package.swift"] = (
            "// swift-tools-version:5.9\n"
            f"// Generated by zoo for package {ctx.name} {ctx.version}: rebuild the package rather than edit it.\n"
            "import PackageDescription\n\n"
            "let package = Package(\n"
            f'    name: "{self.swift}",\n'
            "    platforms: [.iOS(.v16), .macOS(.v13)],\n"
            f'    products: [.library(name: "{self.swift}", targets: ["{self.swift}"])],\n'
            "    targets: [\n"
            f'        .target(name: "{self.swift}", resources: [.copy("Resources")]),\n'
            "    ]\n"
            ")\n"
        )
        files[f"Sources/{self.swift}/{self.swift}.swift"] = self._swift(ctx)
        return files

    def _swift(self, ctx: PackageContext) -> str:
        models = []
        for m in _embedders(ctx):
            for a in m["artifacts"]:
                if a["format"] not in self.formats:
                    continue
                resource = PurePosixPath(a["path"]).stem
                emb, inp = m["embedding"], m["input"]
                floats = ", ".join
                models.append(
                    (
                        _lower_camel(resource),
                        f"Model(name: {json.dumps(m['name'])}, resource: {json.dumps(resource)}, "
                        f"resourceExtension: {json.dumps(a['format'])}, embeddingDim: {emb['dim']}, "
                        f"embeddingSpace: {json.dumps(emb['space'])}, "
                        f"l2Normalized: {'true' if emb['l2_normalized'] else 'false'}, inputSize: {inp['size']}, "
                        f"mean: [{floats(repr(float(v)) for v in inp['mean'])}], "
                        f"std: [{floats(repr(float(v)) for v in inp['std'])}], "
                        f"sha256: {json.dumps(a['sha256'])}, "
                        f"untrainedWeights: {'true' if m['untrained_weights'] else 'false'})",
                    )
                )
        decls = "\n".join(f"    public static let {ident} = {expr}" for ident, expr in models)
        return (
            f"// Generated by zoo for package {ctx.name} {ctx.version}: rebuild the package rather than edit it.\n"
            "import CoreML\n"
            "import Foundation\n\n"
            f"public enum {self.swift} {{\n"
            f"    public static let packageName = {json.dumps(ctx.name)}\n"
            f"    public static let packageVersion = {json.dumps(ctx.version)}\n\n"
            "    public struct Model: Sendable {\n"
            "        public let name: String\n"
            "        public let resource: String\n"
            "        public let resourceExtension: String\n"
            "        public let embeddingDim: Int\n"
            "        public let embeddingSpace: String  // never compare embeddings of different spaces\n"
            "        public let l2Normalized: Bool\n"
            "        public let inputSize: Int  // RGB, shorter side to inputSize (bicubic), central crop\n"
            "        public let mean: [Float]  // (x / 255 - mean) / std, per channel\n"
            "        public let std: [Float]\n"
            "        public let sha256: String\n"
            "        public let untrainedWeights: Bool\n"
            "    }\n\n"
            f"{decls}\n\n"
            f"    public static let all: [Model] = [{', '.join(i for i, _ in models)}]\n\n"
            "    /// The model's resource inside this package's bundle.\n"
            "    public static func url(for model: Model) -> URL? {\n"
            "        Bundle.module.url(\n"
            '            forResource: model.resource, withExtension: model.resourceExtension, subdirectory: "Resources")\n'
            "    }\n\n"
            "    /// Compiles the model on the device and loads it (cache the result: compiling takes time).\n"
            "    public static func load(\n"
            "        _ model: Model, configuration: MLModelConfiguration = MLModelConfiguration()\n"
            "    ) async throws -> MLModel {\n"
            "        guard let url = url(for: model) else { throw CocoaError(.fileNoSuchFile) }\n"
            "        let compiled = try await MLModel.compileModel(at: url)\n"
            "        return try MLModel(contentsOf: compiled, configuration: configuration)\n"
            "    }\n"
            "}\n"
        )


LAYOUTS = {"immich": ImmichLayout, "ios": IosLayout, "android": AndroidLayout}


def get_layout(consumer: str, name: str) -> Layout:
    try:
        return LAYOUTS[consumer](name)
    except KeyError:
        raise UsageError(f"unknown consumer {consumer!r}", hint=f"consumers: {', '.join(sorted(LAYOUTS))}") from None


def gradle_snippet(name: str, version: str, *, sha256: str | None, url: str | None) -> str:
    """A Kotlin DSL snippet for the app module's build.gradle.kts: download the package archive, refuse
    it unless its sha256 matches, and unpack its assets/ into a generated assets folder.

    With `sha256` the digest is pinned in the snippet (the copy written beside the archive); without
    it (the copy inside the package, which cannot know its own archive's digest) the build reads it
    from the Gradle property `zooPackageSha256` and fails when it is not set.
    """
    package = f"{name}-{version}"
    pinned = (
        f'val zooPackageSha256: String = "{sha256}"'
        if sha256
        else 'val zooPackageSha256: String = (findProperty("zooPackageSha256") as String?)\n'
        f'    ?: throw GradleException("set the Gradle property zooPackageSha256 to the sha256 of {package}.tar.gz '
        f'(from {package}.tar.gz.sha256)")'
    )
    default_url = (
        f'(findProperty("zooPackageUrl") as String?) ?: "{url}"'
        if url
        else f'(findProperty("zooPackageUrl") as String?)\n    ?: throw GradleException("set the Gradle property '
        f'zooPackageUrl to the URL of {package}.tar.gz")'
    )
    return f"""// zoo package {name} {version} for Android. Paste into the app module's build.gradle.kts.
// Downloads {package}.tar.gz, refuses it unless its sha256 matches, and unpacks its assets/
// (ONNX / ORT / TFLite models, required_operators.config, model.json) into the app's assets.
import java.net.URI
import java.security.MessageDigest

val zooPackage = "{package}"
val zooPackageUrl: String = {default_url}
{pinned}
val zooArchive = layout.buildDirectory.file("zoo/$zooPackage.tar.gz")
val zooAssetsDir = layout.buildDirectory.dir("generated/zoo/assets")

fun zooSha256(file: File): String {{
    val digest = MessageDigest.getInstance("SHA-256")
    file.inputStream().use {{ input ->
        val buffer = ByteArray(1 shl 16)
        while (true) {{
            val n = input.read(buffer)
            if (n < 0) break
            digest.update(buffer, 0, n)
        }}
    }}
    return digest.digest().joinToString("") {{ "%02x".format(it) }}
}}

val zooDownload by tasks.registering {{
    description = "Downloads $zooPackage and checks its sha256"
    outputs.file(zooArchive)
    outputs.upToDateWhen {{ zooArchive.get().asFile.let {{ it.exists() && zooSha256(it) == zooPackageSha256 }} }}
    doLast {{
        val file = zooArchive.get().asFile
        file.parentFile.mkdirs()
        val partial = File(file.parentFile, file.name + ".part")
        URI(zooPackageUrl).toURL().openStream().use {{ input -> partial.outputStream().use {{ input.copyTo(it) }} }}
        val actual = zooSha256(partial)
        if (actual != zooPackageSha256) {{
            partial.delete()
            throw GradleException("$zooPackage: downloaded sha256 $actual, expected $zooPackageSha256: refused")
        }}
        if (!partial.renameTo(file)) throw GradleException("$zooPackage: cannot move the download into place")
    }}
}}

val zooAssets by tasks.registering(Sync::class) {{
    description = "Unpacks the assets of $zooPackage"
    dependsOn(zooDownload)
    from(tarTree(resources.gzip(zooArchive))) {{
        include("$zooPackage/assets/**")
        eachFile {{ path = path.removePrefix("$zooPackage/assets/") }}
        includeEmptyDirs = false
    }}
    into(zooAssetsDir)
}}

android.sourceSets.getByName("main").assets.srcDir(zooAssetsDir)
tasks.named("preBuild") {{ dependsOn(zooAssets) }}
"""
