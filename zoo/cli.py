"""The `zoo` command: wiring only. Each command is a typed function that calls the library.

Exit codes: 0 ok, 1 a check failed, 2 usage error, 3 conversion or filesystem failure, 4 an unexpected
error (a bug: one line, the traceback with --traceback).
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import warnings
from pathlib import Path

from zoo import __version__
from zoo.errors import EXIT_CHECK_FAILED, EXIT_CONVERSION_FAILED, EXIT_OK, EXIT_UNEXPECTED, ZooError, one_line
from zoo.progress import Progress


def _report_exit(report, footer: str = "") -> int:
    """Print a report (and where its files are); exit 1 when a check failed."""
    print(report.to_terminal())
    if footer:
        print(footer)
    return EXIT_CHECK_FAILED if report.failed else EXIT_OK


def cmd_list(*, what: str, registry: list[Path]) -> int:
    if what == "models":
        from zoo.registry import load_registry

        rows = [("name", "role", "teacher", "architecture", "dim", "size", "weights")]
        for spec in load_registry(registry):
            rows.append(
                (
                    spec.name,
                    spec.role,
                    spec.teacher or "—",
                    spec.architecture,
                    str(spec.embedding_dim),
                    str(spec.input_size),
                    "trained" if spec.trained else "UNTRAINED",
                )
            )
    else:
        from zoo.converters import missing_steps
        from zoo.registry import registry_files
        from zoo.targets import load_targets

        rows = [("name", "precision", "chain", "runtime", "budget", "status")]
        for t in load_targets(registry_files(registry)).values():
            missing = missing_steps(t)
            budget = (
                f"p{t.latency_percentile} < {t.latency_budget_ms:g} ms ({t.latency_on})" if t.latency_budget_ms else "—"
            )
            status = "ready" if not missing else "not built yet: " + ", ".join(missing)
            rows.append((t.name, t.precision, " → ".join(t.chain), t.runtime, budget, status))
    _print_table(rows)
    return EXIT_OK


def cmd_show(*, model: str, registry: list[Path]) -> int:
    from zoo.registry import load_registry

    reg = load_registry(registry)
    spec = reg.get(model)
    for key, value in spec.to_dict().items():
        print(f"{key:18} {value}")
    print(f"{'weights':18} {spec.weights_label}")
    students = [s.name for s in reg if s.teacher == spec.name]
    if students:
        print(f"{'students':18} {', '.join(students)}")
    return EXIT_OK


def cmd_convert(
    *,
    model: str | None,
    pipeline: str | None,
    target: str,
    out: Path,
    validate: bool,
    latency_runs: int,
    calibration: Path | None,
    calibration_count: int | None,
    eval_set: Path | None,
    registry: list[Path],
    quiet: bool,
) -> int:
    if pipeline:
        from zoo.detection.convert import convert_pipeline

        outcome = convert_pipeline(
            pipeline,
            target,
            out_root=out,
            registry_paths=registry,
            latency_runs=latency_runs,
            progress=Progress(enabled=not quiet),
        )
        return _report_exit(outcome.report, f"pipeline stages, manifest and report: {outcome.out_dir}")
    from zoo.pipeline import convert
    from zoo.registry import load_registry

    outcome = convert(
        model,
        target,
        out_root=out,
        registry=load_registry(registry),
        validate=validate,
        latency_runs=latency_runs,
        calibration_dir=calibration,
        calibration_count=calibration_count,
        eval_path=eval_set,
        progress=Progress(enabled=not quiet),
    )
    return _report_exit(outcome.report, f"artifacts, manifest and report: {outcome.out_dir}")


def cmd_validate(*, directory: Path, latency_runs: int, eval_set: Path | None, quiet: bool) -> int:
    from zoo.pipeline import validate_dir

    outcome = validate_dir(
        directory, latency_runs=latency_runs, eval_path=eval_set, progress=Progress(enabled=not quiet)
    )
    return _report_exit(outcome.report)


def cmd_diagnose(*, directory: Path, artifact: str | None, inputs: int, suggest: bool, quiet: bool) -> int:
    from zoo.diagnose.run import diagnose_dir, parity_said

    diagnoses, passed = diagnose_dir(
        directory, artifact=artifact, inputs=inputs, suggest=suggest, progress=Progress(enabled=not quiet)
    )
    for d in diagnoses:
        print(f"{d.artifact}: {parity_said(passed.get(d.artifact))}; {d.summary()}")
        print(d.to_markdown())
    print(f"per-layer tables: {Path(directory) / 'diagnosis.md'} (every layer), diagnosis.json, diagnosis.svg")
    return 0


def cmd_distill(
    *,
    teacher: str,
    student: str,
    images: Path | None,
    epochs: int | None,
    views: int | None,
    out: Path | None,
    register: Path,
    seed: int,
    registry: list[Path],
    quiet: bool,
) -> int:
    from zoo.distillation import distill_and_register, student_recipe
    from zoo.registry import load_registry

    reg = load_registry(registry)
    out = out or Path("checkpoints") / f"{student}.safetensors"
    recipe = student_recipe(student)  # a reference student's own; STUDENT_RECIPE for any other
    epochs = epochs or recipe["epochs"]
    result = distill_and_register(
        reg.get(teacher),
        reg.get(student),
        out=out,
        register=register,
        images_dir=images,
        epochs=epochs,
        views_per_image=views or recipe["views_per_image"],
        batch=recipe["batch"],
        lr=recipe["lr"],
        ema=recipe["ema"],
        seed=seed,
        show_progress=not quiet,
    )
    card = result.card
    before, after = card["heldout_cosine_vs_teacher_before"], card["heldout_cosine_vs_teacher_after"]
    print(
        f"{student} ← {teacher}: {epochs} epochs in {card['seconds']} s; loss {card['loss_first_epoch']} → "
        f"{card['loss_final']}"
    )
    print(
        f"held-out cosine vs teacher (min / mean): {before['min']:.4f} / {before['mean']:.4f} → "
        f"{after['min']:.4f} / {after['mean']:.4f}"
    )
    print(f"checkpoint {out} (sha256 {card['checkpoint_sha256'][:16]}…), model card {out.with_suffix('.md')}")
    print(f"registered as {student!r} in {register} (use: --registry {register})")
    return EXIT_OK


def cmd_reference(*, action: str, directory: Path | None, out: Path, registry: list[Path], quiet: bool) -> int:
    if action == "build":
        return cmd_reference_build(out=out, registry=registry, quiet=quiet)
    if action == "export-scenes" and directory is not None:
        from zoo.detection.scenes import export_scenes

        count = export_scenes(directory)
        print(f"{count} seeded card scenes and labels.json: {directory}")
        print(f"run a pipeline on them: zoo pipeline run PACKAGE {directory}")
        return EXIT_OK
    if action == "build-pipeline":
        from zoo.detection.build import build_pipeline_stages

        written = build_pipeline_stages(out, progress=Progress(enabled=not quiet))
        from zoo.checkpoints import sha256_file

        for stage, path in written.items():
            print(f"{stage}: {path} sha256 {sha256_file(path)}")
        print("register them: onnx = { path = ..., sha256 = ... } in [pipelines.ref_dogs.detector] / .keypoints")
        return EXIT_OK
    from zoo.errors import UsageError
    from zoo.evalset import export_reference_evaluation_set, load_evaluation_set

    if directory is None:
        raise UsageError(f"zoo reference {action} needs the folder to write into", hint=f"zoo reference {action} DIR")
    counts = export_reference_evaluation_set(directory)
    written = load_evaluation_set(directory)
    print(", ".join(f"{n} {what}" for what, n in counts.items()))
    print(f"the reference identity task, as an evaluation set: {directory} (sha256 {written.sha256[:16]}…)")
    print(f"use it: zoo convert --model ref_convnext --target server --eval {directory}")
    return EXIT_OK


def cmd_reference_build(*, out: Path, registry: list[Path], quiet: bool) -> int:
    from zoo.distillation import build_reference, compare_with_shipped
    from zoo.registry import load_registry

    reg = load_registry(registry)
    results = build_reference(out, reg, show_progress=not quiet)
    rows = [("model", "seconds", "identical to shipped", "max |Δweight|", "held-out")]
    for result, cmp in zip(results, compare_with_shipped(results, reg)):
        card = result.card
        heldout = card.get("heldout_cosine_vs_teacher_after") or card.get("heldout_identity_metrics", {})
        figure = (
            f"cos vs teacher min {heldout['min']:.4f}"
            if "min" in heldout
            else f"top-1 {heldout.get('top1_clean', 0):.1%}"
        )
        diff = "—" if cmp["max_abs_weight_diff"] is None else f"{cmp['max_abs_weight_diff']:.2e}"
        rows.append((cmp["model"], str(card["seconds"]), "yes" if cmp["identical"] else "no", diff, figure))
    _print_table(rows)
    print(f"rebuilt checkpoints and registry: {out}/registry.toml")
    return EXIT_OK


def cmd_hailo(*, action: str, path: Path, quiet: bool) -> int:
    """`zoo hailo compile BUNDLE` (on a DFC host) and `zoo hailo preflight MODEL.onnx`."""
    if action == "compile":
        from zoo.hailo.bundle import compile_bundle

        outcome = compile_bundle(path, progress=Progress(enabled=not quiet))
        return _report_exit(
            outcome.report,
            f"model.hef and manifest: {outcome.directory} (on the device: zoo validate {outcome.directory})",
        )
    import onnx

    from zoo.hailo.ops import preflight

    report = preflight(onnx.load(str(path), load_external_data=False))
    print(", ".join(f"{op}×{n}" for op, n in report.op_counts.items()))
    if not report.ok:
        raise report.error(str(path))
    print(f"{path}: every op is in zoo's Hailo DFC table (hailo8l); end node(s): {', '.join(report.output_nodes)}")
    return EXIT_OK


def cmd_package(
    *,
    consumer: str,
    package_version: str,
    models: list[str],
    targets: list[str],
    outputs: Path,
    out: Path,
    name: str | None,
    detector: Path | None,
    pipeline: str | None,
    allow_untrained: bool,
    golden: int,
    download_url: str | None,
    quiet: bool,
) -> int:
    from zoo.packaging.package import build_package

    outcome = build_package(
        consumer=consumer,
        version=package_version,
        outputs=outputs,
        models=models,
        targets=targets,
        out=out,
        name=name,
        detector=detector,
        pipeline=pipeline,
        allow_untrained=allow_untrained,
        golden_count=golden,
        download_url=download_url,
        progress=Progress(enabled=not quiet),
    )
    for warning in outcome.manifest["warnings"]:
        print(f"WARNING: {warning}")
    print(f"package {outcome.name}:{outcome.version} ({consumer}): {outcome.directory}")
    print(f"archive {outcome.archive} sha256 {outcome.sha256}")
    for extra in outcome.extras:
        print(f"pinned snippet {extra}")
    return EXIT_OK


def cmd_verify(*, package: Path, quiet: bool) -> int:
    from zoo.packaging.verify import verify_package

    return _report_exit(verify_package(package, progress=Progress(enabled=not quiet)))


def cmd_publish(*, package: Path, store: str, quiet: bool) -> int:
    from zoo.packaging.store import publish

    published = publish(package, store, progress=Progress(enabled=not quiet))
    state = "already published (identical)" if published.already_there else "published"
    print(f"{state}: {published.location} sha256 {published.sha256}")
    return EXIT_OK


def cmd_pull(*, ref: str, store: str, dest: Path, sha256: str | None, force: bool, quiet: bool) -> int:
    from zoo.packaging.store import pull

    pulled = pull(ref, store, dest, expected_sha256=sha256, force=force, progress=Progress(enabled=not quiet))
    print(
        f"pulled {pulled.name}:{pulled.version} from {pulled.location} into {pulled.destination}: "
        f"archive sha256 {pulled.sha256}, {pulled.files} files match SHA256SUMS"
    )
    return EXIT_OK


def cmd_matrix(
    *,
    action: str,
    reports: list[Path],
    models: list[str],
    targets: list[str],
    tier: str | None,
    outputs: Path,
    convert: bool,
    report_dir: Path,
    fail_on: str,
    latency_runs: int,
    eval_set: Path | None,
    jobs: int,
    executor: str,
    address: str | None,
    shard: str | None,
    shards: int,
    registry: list[Path],
    quiet: bool,
) -> int:
    import json

    from zoo.errors import UsageError
    from zoo.matrix import Matrix, collect, merge, parse_shard, plan, write_reports

    if action == "plan":
        print(json.dumps(plan(shards=shards, models=models, targets=targets, tier=tier, registry_paths=registry)))
        return EXIT_OK
    if action == "merge":
        if not reports:
            raise UsageError(
                "zoo matrix merge needs the shards' matrix.json files", hint="zoo matrix merge A.json B.json"
            )
        try:
            matrix = merge([Matrix.from_dict(json.loads(Path(p).read_text())) for p in reports])
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"a shard report is not a zoo matrix.json: {exc}") from None
    else:
        if reports:
            raise UsageError(f"unexpected argument(s): {' '.join(map(str, reports))}", hint="zoo matrix [plan|merge]")
        matrix = collect(
            models=models,
            targets=targets,
            tier=tier,
            outputs=outputs,
            convert=convert,
            latency_runs=latency_runs,
            registry_paths=registry,
            eval_path=eval_set,
            jobs=jobs,
            executor=executor,
            address=address,
            shard=parse_shard(shard),
            progress=Progress(enabled=not quiet),
        )
    rows = [("model", *matrix.targets)]
    for model in matrix.models:
        rows.append((model, *((c.label if (c := matrix.cell(model, t)) else "—") for t in matrix.targets)))
    _print_table(rows)
    cached = sum(bool(c.cached) for c in matrix.cells)
    if cached:
        print(f"{cached} of {len(matrix.cells)} cell(s) came from the cache")
    slowest = matrix.slowest(3)
    if slowest:
        print("slowest: " + ", ".join(f"{c.model} → {c.target} {c.seconds:.1f} s" for c in slowest))
    for kind, path in write_reports(matrix, report_dir).items():
        print(f"{kind}: {path}")
    return EXIT_CHECK_FAILED if matrix.should_fail(fail_on) else EXIT_OK


def cmd_cache(*, action: str, max_size: str | None) -> int:
    from zoo import cache
    from zoo.errors import UsageError

    root = cache.cache_root()
    if root is None:
        print("the cache is off ($ZOO_CACHE=off)")
        return EXIT_OK
    if action == "prune":
        if not max_size:
            raise UsageError("zoo cache prune needs --max-size", hint="e.g. zoo cache prune --max-size 5G")
        removed, freed = cache.prune(cache.parse_size(max_size))
        print(f"evicted {removed} least recently used entr{'y' if removed == 1 else 'ies'} ({freed / 1e6:.1f} MB)")
    elif action == "clear":
        removed, freed = cache.prune(0)
        print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} ({freed / 1e6:.1f} MB)")
    usage = cache.usage()
    print(f"cache {root}: " + (", ".join(f"{u.kind} {u.entries} ({u.bytes / 1e6:.1f} MB)" for u in usage) or "empty"))
    return EXIT_OK


def cmd_serve(*, package: Path, host: str, port: int, upstream: str | None, max_upload_mb: int) -> int:
    from zoo.serve import serve

    serve(package, host=host, port=port, upstream=upstream, max_upload_mb=max_upload_mb)
    return EXIT_OK


def cmd_pipeline_run(*, package: Path, images: Path, html: Path | None, queries: int, quiet: bool) -> int:
    from zoo.detection.inspect import run_on_folder

    result = run_on_folder(package, images, html=html, queries=queries, progress=Progress(enabled=not quiet))
    print(result.text)
    print(f"page: {result.page}")
    return EXIT_OK


def _add_serving_parsers(sub, common: argparse.ArgumentParser) -> None:
    """`zoo serve` and `zoo pipeline run`."""
    p = sub.add_parser("serve", parents=[common], help="serve a pipeline package over Immich's ML protocol (/predict)")
    p.set_defaults(handler=cmd_serve)
    p.add_argument("package", type=Path, help="a package folder from `zoo package --pipeline`, or a pipeline output")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3003, help="default: 3003, Immich's ML port")
    p.add_argument("--upstream", metavar="URL", help="Immich's own ML service, for the tasks zoo does not serve (CLIP)")
    p.add_argument("--max-upload-mb", type=int, default=32, metavar="MB", help="largest request body (default: 32)")

    p = sub.add_parser("pipeline", parents=[common], help="run a pipeline package on a folder of photos")
    p.set_defaults(handler=cmd_pipeline_run)
    p.add_argument("action", choices=["run"])
    p.add_argument("package", type=Path, help="a package folder, or a `zoo convert --pipeline` output")
    p.add_argument("images", type=Path, help="a folder of photos")
    p.add_argument(
        "--html", type=Path, metavar="FILE", help="the page (default: IMAGES_DIR-pipeline.html beside the folder)"
    )
    p.add_argument("--queries", type=int, default=3, metavar="N", help="detections whose nearest neighbours are listed")


def _add_packaging_parsers(sub, common: argparse.ArgumentParser) -> None:
    """`zoo package`, `verify`, `publish`, `pull` and `matrix`."""
    store_help = (
        "folder, file://PATH, oci://HOST/NAMESPACE or oci+http://HOST:PORT/NAMESPACE (default: $ZOO_STORE or zoo-store)"
    )
    store_default = os.environ.get("ZOO_STORE") or "zoo-store"

    p = sub.add_parser("package", parents=[common], help="package validated outputs for an app (immich, ios, android)")
    p.set_defaults(handler=cmd_package)
    p.add_argument("--consumer", required=True, choices=["immich", "ios", "android"])
    p.add_argument("--version", required=True, dest="package_version", metavar="V")
    p.add_argument("--models", nargs="+", default=[], metavar="MODEL", help="default: every model with outputs")
    p.add_argument("--targets", nargs="+", default=[], metavar="TARGET", help="default: the consumer's targets")
    p.add_argument("--outputs", type=Path, default=Path("out"), help="output root of `zoo convert` (default: out/)")
    p.add_argument("--out", type=Path, default=Path("dist"), help="where the package goes (default: dist/)")
    p.add_argument("--name", help="package name (default: <models>-<consumer>)")
    p.add_argument("--detector", type=Path, metavar="ONNX", help="immich: a detector ONNX for detection/model.onnx")
    p.add_argument(
        "--pipeline", metavar="NAME", help="immich: a `zoo convert --pipeline NAME` output (its three stages)"
    )
    p.add_argument("--allow-untrained", action="store_true", help="package untrained weights (flagged loudly)")
    p.add_argument("--golden", type=int, default=3, metavar="N", help="golden inputs per model (default: 3)")
    p.add_argument("--download-url", metavar="URL", help="android: the archive's URL, for the pinned Gradle snippet")

    p = sub.add_parser("verify", parents=[common], help="re-hash a package and run its golden inputs")
    p.set_defaults(handler=cmd_verify)
    p.add_argument("package", type=Path, help="a package folder or its .tar.gz")

    p = sub.add_parser("publish", parents=[common], help="put a package into a store")
    p.set_defaults(handler=cmd_publish)
    p.add_argument("package", type=Path, help="a package folder (with its .tar.gz beside it) or the .tar.gz")
    p.add_argument("--store", default=store_default, help=store_help)

    p = sub.add_parser("pull", parents=[common], help="fetch NAME:VERSION, verify every hash, then write DIR")
    p.set_defaults(handler=cmd_pull)
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument("--store", default=store_default, help=store_help)
    p.add_argument("--dest", type=Path, required=True, metavar="DIR")
    p.add_argument("--sha256", metavar="HEX", help="pin the archive's sha256")
    p.add_argument("--force", action="store_true", help="replace DIR if it exists")

    p = sub.add_parser(
        "matrix",
        parents=[common],
        help="models × targets: JSON, Markdown, JUnit and HTML reports; `plan` shards it for CI, `merge` joins shards",
    )
    p.set_defaults(handler=cmd_matrix)
    p.add_argument("action", nargs="?", choices=["run", "plan", "merge"], default="run")
    p.add_argument("reports", nargs="*", type=Path, metavar="MATRIX_JSON", help="merge: the shards' matrix.json files")
    p.add_argument("--models", nargs="+", default=[], metavar="MODEL")
    p.add_argument("--targets", nargs="+", default=[], metavar="TARGET")
    p.add_argument("--tier", help="add every model with this tier tag (e.g. tiny)")
    p.add_argument("--outputs", type=Path, default=Path("out"), help="output root (default: out/)")
    p.add_argument(
        "--convert", action="store_true", help="convert and validate every cell (unchanged ones come from the cache)"
    )
    p.add_argument("--report-dir", type=Path, default=Path("zoo-reports"), help="default: zoo-reports/")
    p.add_argument("--fail-on", choices=["fail", "not-run", "never"], default="fail")
    p.add_argument("--latency-runs", type=int, default=30)
    _add_eval_option(p, default_help="each model’s own; used for the cells --convert converts")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="cells converted side by side (default: 1)")
    p.add_argument(
        "--executor",
        choices=["local", "process", "ray"],
        default="",
        help="where cells run: this process, --jobs processes (default when N > 1), or Ray",
    )
    p.add_argument("--address", metavar="ADDR", help="ray: a cluster's address (default: a local cluster for the run)")
    p.add_argument("--shard", metavar="K/N", help="convert only the K-th of N shards (see `zoo matrix plan`)")
    p.add_argument("--shards", type=int, default=2, metavar="N", help="plan: how many shards (default: 2)")

    p = sub.add_parser("cache", parents=[common], help="the cache of steps and conversions: size, prune, clear")
    p.set_defaults(handler=cmd_cache)
    p.add_argument("action", choices=["info", "prune", "clear"])
    p.add_argument("--max-size", metavar="SIZE", help="prune: keep at most this much (e.g. 5G), least recently used go")


def _add_eval_option(parser: argparse.ArgumentParser, default_help: str = "") -> None:
    parser.add_argument(
        "--eval",
        dest="eval_set",
        type=Path,
        metavar="PATH",
        help="evaluation set (folder or .csv/.jsonl index) for teacher parity and the product rules "
        f"(default: {default_help or 'the model’s eval_set, its teacher’s, else the reference task'})",
    )


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _common_options(after_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after the command's name.

    argparse copies a subcommand's defaults over the top-level values, so the copy after the command
    has no defaults (SUPPRESS) and its registries go to their own list, merged in main().
    """
    common = argparse.ArgumentParser(add_help=False)
    unset = {"default": argparse.SUPPRESS} if after_command else {}
    common.add_argument(
        "--registry",
        action="append",
        type=Path,
        dest="registry_after_command" if after_command else "registry",
        default=argparse.SUPPRESS if after_command else [],
        metavar="PATH",
        help="extra model/target registry file or folder (repeatable; also $ZOO_REGISTRY)",
    )
    common.add_argument("--traceback", action="store_true", help="show the full traceback on errors", **unset)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines", **unset)
    common.add_argument(
        "--no-cache", action="store_true", help="do all the work again; read and write no cache ($ZOO_CACHE)", **unset
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    top = _common_options(after_command=False)
    common = _common_options(after_command=True)

    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0], parents=[top])
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", parents=[common], help="list registered models or targets")
    p.set_defaults(handler=cmd_list)
    p.add_argument("what", choices=["models", "targets"])

    p = sub.add_parser("show", parents=[common], help="show one model's spec")
    p.set_defaults(handler=cmd_show)
    p.add_argument("model")

    p = sub.add_parser(
        "convert", parents=[common], help="convert a model (or a pipeline) for a target, validate, report"
    )
    p.set_defaults(handler=cmd_convert)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model")
    which.add_argument(
        "--pipeline", help="a registered detector → keypoints → embedder pipeline (targets server, android)"
    )
    p.add_argument("--target", required=True)
    p.add_argument("--out", type=Path, default=Path("out"), help="output root (default: out/)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="convert only")
    p.add_argument("--latency-runs", type=int, default=30, help="timed runs after warm-up (at least 20)")
    p.add_argument(
        "--calibration", type=Path, metavar="DIR", help="images for int8 calibration (default: reference photos)"
    )
    p.add_argument("--calibration-count", type=int, metavar="N", help="how many calibration images to use")
    _add_eval_option(p)

    p = sub.add_parser("distill", parents=[common], help="distil a student from a trained teacher")
    p.set_defaults(handler=cmd_distill)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True)
    p.add_argument("--images", type=Path, metavar="DIR", help="training images (default: the reference identity task)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the reference student recipe's)")
    p.add_argument(
        "--views",
        type=int,
        metavar="N",
        help="augmented views per image per epoch (default: the reference student recipe's)",
    )
    p.add_argument(
        "--out", type=Path, metavar="CKPT", help="checkpoint path (default: checkpoints/STUDENT.safetensors)"
    )
    p.add_argument(
        "--register",
        type=Path,
        default=Path("zoo-registry.toml"),
        metavar="FILE",
        help="user registry file the result is written to (default: zoo-registry.toml)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("reference", parents=[common], help="the reference models and their evaluation set")
    p.set_defaults(handler=cmd_reference)
    p.add_argument("action", choices=["build", "build-pipeline", "export-eval", "export-scenes"])
    p.add_argument("directory", type=Path, nargs="?", help="export-eval / export-scenes: the folder to write into")
    p.add_argument("--out", type=Path, default=Path("build/reference"), help="build: where rebuilt checkpoints go")

    p = sub.add_parser("hailo", parents=[common], help="Hailo-8L: compile a bundle (DFC host), pre-flight an ONNX")
    p.set_defaults(handler=cmd_hailo)
    p.add_argument("action", choices=["compile", "preflight"])
    p.add_argument("path", type=Path, help="compile: a bundle from `zoo convert --target hailo8l`; preflight: an .onnx")

    p = sub.add_parser("validate", parents=[common], help="re-validate an output directory")
    p.set_defaults(handler=cmd_validate)
    p.add_argument("directory", type=Path)
    p.add_argument("--latency-runs", type=int, default=30)
    _add_eval_option(p, default_help="the set the manifest records")

    p = sub.add_parser(
        "diagnose", parents=[common], help="where an artifact's numbers leave the source model, layer by layer"
    )
    p.set_defaults(handler=cmd_diagnose)
    p.add_argument("directory", type=Path, help="an output folder of zoo convert")
    p.add_argument("--artifact", metavar="NAME", help="the artifact to diagnose (default: those whose parity failed)")
    p.add_argument("--inputs", type=int, default=4, metavar="N", help="parity inputs to compare, the worst first")
    p.add_argument(
        "--suggest",
        action="store_true",
        help="re-quantize an int8 artifact with the worst layers in float and measure what it buys",
    )
    _add_packaging_parsers(sub, common)
    _add_serving_parsers(sub, common)
    return parser


def entry() -> int:
    """The `zoo` command: the work runs in a child process, so a native crash is one line, exit 3."""
    from zoo.isolation import isolated, run_in_child

    if isolated():
        return main()
    return run_in_child(sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    # torch's exporter warns about its own internals on every export; users cannot act on it
    warnings.filterwarnings("ignore", message=r".*treespec.*LeafSpec.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.registry = [*args.registry, *getattr(args, "registry_after_command", [])]
    show_traceback = args.traceback or bool(os.environ.get("ZOO_TRACEBACK"))
    if args.no_cache:
        from zoo.cache import disable

        disable()
    try:
        return _call(args.handler, args)
    except KeyboardInterrupt:
        print("zoo: interrupted; nothing was written under the final output name", file=sys.stderr)
        return 130
    except Exception as exc:
        if show_traceback:
            raise
        code, line, hint = describe_error(exc)
        print(f"zoo: error: {line}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return code


def describe_error(exc: BaseException) -> tuple[int, str, str | None]:
    """(exit code, one line, hint) for any error: zoo's own carry theirs; a filesystem error names the
    path and the cause (exit 3); anything else is a bug in zoo or a toolchain (exit 4)."""
    if isinstance(exc, ZooError):
        return exc.exit_code, one_line(str(exc), limit=2000), exc.hint
    if isinstance(exc, OSError) and (exc.filename or exc.strerror):
        where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "a file"
        cause = exc.strerror or type(exc).__name__
        return (
            EXIT_CONVERSION_FAILED,
            f"cannot use {where}: {cause}",
            "check the path, its permissions and the free disk space; nothing was written under the final name",
        )
    text = one_line(str(exc), limit=400) or "(no message)"
    return (
        EXIT_UNEXPECTED,
        f"unexpected {type(exc).__name__}: {text}",
        "this is a bug in zoo or a toolchain; run with --traceback (or ZOO_TRACEBACK=1) and report it",
    )


def _call(handler, args: argparse.Namespace) -> int:
    """Call a command with the parsed options its signature names (the CLI stays wiring only)."""
    params = inspect.signature(handler).parameters
    return handler(**{name: getattr(args, name) for name in params})
