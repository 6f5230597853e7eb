"""convert and validate: the library calls behind `zoo convert` and `zoo validate`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from zoo import __version__
from zoo.cache import Cached, cached_arrays
from zoo.calibration import check_calibration_options
from zoo.checkpoints import sha256_file
from zoo.conversion_cache import conversion_key, model_files, restore_conversion, step_base_key, store_conversion
from zoo.conversion_cache import run_step as run_cached_step
from zoo.converters import Artifact, ConvertContext, get_converter, keeps_float_modules, uses_calibration
from zoo.errors import ConversionError, UsageError, ZooError
from zoo.evalset import (
    EvaluationSet,
    evaluation_path,
    load_evaluation_set,
    reference_evaluation_set,
    resolve_evaluation_set,
)
from zoo.fidelity import Check, Fidelity, Status
from zoo.metadata import artifact_metadata
from zoo.outputs import (
    file_entry,
    output_lock,
    read_manifest,
    staged_directory,
    tool_versions,
    write_manifest,
    write_text_atomic,
)
from zoo.profiles import Profile, profile_for
from zoo.progress import QUIET, Progress
from zoo.registry import ModelSpec, Registry, load_registry, spec_from_manifest, spec_to_manifest
from zoo.reparameterize import deployment_form
from zoo.report import Report
from zoo.runtimes import get_runtime
from zoo.targets import TargetSpec, get_target, target_from_dict
from zoo.validators import References, validate_artifacts
from zoo.validators.inputs import inputs_sha256, parity_inputs, preprocess, random_inputs, reference_photos
from zoo.validators.inspectors import inspect_artifacts


@dataclass(frozen=True)
class Outcome:
    out_dir: Path
    report: Report


def untrained_warnings(model: ModelSpec, teacher: ModelSpec | None) -> list[str]:
    warnings = []
    if not model.trained:
        warnings.append(f"{model.name} has UNTRAINED WEIGHTS (no checkpoint): its embeddings mean nothing")
    if teacher is not None and not teacher.trained:
        warnings.append(f"teacher {teacher.name} has UNTRAINED WEIGHTS: teacher parity is not applicable")
    return warnings


def embed_torch(model, x: np.ndarray, batch: int = 8) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))).numpy())
    return np.concatenate(outs).astype(np.float32)


def teacher_reference(
    model: ModelSpec,
    teacher: ModelSpec | None,
    size: int,
    progress: Progress,
    evaluation: EvaluationSet | None = None,
    profile: Profile | None = None,
) -> tuple:
    """(TeacherReference, "") or (None, why neither teacher parity nor the profile's rules apply).

    A student is judged against its trained teacher. A trained model without one (a teacher, an
    embedder) has its artifacts judged by the profile's rules against its own source model's gallery:
    no parity vs a teacher, but the product's numbers all the same."""
    if model.role == "teacher" or teacher is None:
        return _self_reference(model, size, progress, evaluation, profile)
    if not teacher.trained:
        return None, f"teacher {teacher.name} has untrained weights; parity against it would mean nothing"
    if teacher.embedding_dim != model.embedding_dim or teacher.embedding_space != model.embedding_space:
        return None, (
            f"teacher {teacher.name} embeds into {teacher.embedding_space} ({teacher.embedding_dim}-d), "
            f"the model into {model.embedding_space} ({model.embedding_dim}-d)"
        )
    from zoo.validators import TeacherReference
    from zoo.validators.acceptance import guard

    evaluation = evaluation or reference_evaluation_set()
    profile = profile or profile_for(model, teacher)
    with progress.step(f"teacher {teacher.name} (torch) on {evaluation.source}"):
        embedded = teacher_embeddings(teacher, evaluation)
    gallery, views = _gallery_and_views(embedded, evaluation)
    meaningful, separation, results = guard(profile, gallery, views, evaluation.labels, evaluation.conditions)
    unseen = preprocess(list(evaluation.unseen_views), size, model.mean, model.std) if evaluation.unseen_views else None
    return TeacherReference(
        teacher.name,
        preprocess(list(evaluation.views), size, model.mean, model.std),
        evaluation.labels,
        evaluation.conditions,
        views,
        gallery,
        meaningful,
        separation,
        {r.name: r.value for r in results},
        profile,
        evaluation.describe(),
        embedded.status,
        unseen_inputs=unseen,
    ), ""


def _gallery_and_views(embedded: Cached, evaluation: EvaluationSet) -> tuple[np.ndarray, np.ndarray]:
    from zoo.validators.acceptance import prototypes

    gallery = prototypes(embedded.arrays["gallery"], evaluation.gallery_labels, len(evaluation.identities))
    return gallery, embedded.arrays["views"]


def _self_reference(model, size, progress, evaluation, profile) -> tuple:
    what = "the model is a teacher" if model.role == "teacher" else f"the model has no teacher (role {model.role})"
    if not model.trained:
        return None, f"{what}; its weights are untrained, so the product's rules would mean nothing"
    evaluation = evaluation or reference_evaluation_set()
    if evaluation.builtin and not model.acceptance:
        # the built-in task's rules are for the reference models; a team's own model opts in
        return None, f"{what}; name an evaluation set (eval_set, --eval) or a profile (acceptance) to judge it"
    if model.architecture_kind == "onnx":
        return None, f"{what}; its source is an ONNX file, which zoo does not embed the evaluation set with"
    from zoo.validators import TeacherReference

    profile = profile or profile_for(model, None)
    with progress.step(f"{model.name} (torch) on {evaluation.source}"):
        embedded = teacher_embeddings(model, evaluation)
    gallery, views = _gallery_and_views(embedded, evaluation)
    return TeacherReference(
        model.name,
        preprocess(list(evaluation.views), size, model.mean, model.std),
        evaluation.labels,
        evaluation.conditions,
        views,
        gallery,
        True,
        f"{what}: its artifacts query its own source model's gallery",
        {},
        profile,
        evaluation.describe(),
        embedded.status,
        self_judged=True,
    ), ""


def teacher_embeddings(teacher: ModelSpec, evaluation: EvaluationSet) -> Cached:
    """The teacher's embeddings of the set's gallery and views, computed once per teacher checkpoint,
    set, input size and preprocessing (zoo.cache), and read back by every later conversion."""

    def compute() -> dict[str, np.ndarray]:
        from zoo.models import build_model

        net = build_model(teacher)
        prep = teacher.input_size, teacher.mean, teacher.std
        return {
            "gallery": embed_torch(net, preprocess(list(evaluation.gallery), *prep)),
            "views": embed_torch(net, preprocess(list(evaluation.views), *prep)),
        }

    key = {
        "teacher": teacher.name,
        "checkpoint_sha256": teacher.checkpoint.sha256 if teacher.checkpoint else None,
        "architecture": teacher.architecture,
        "architecture_args": teacher.architecture_args,
        "head": list(teacher.head),
        "input_size": teacher.input_size,
        "mean": list(teacher.mean),
        "std": list(teacher.std),
        "eval_sha256": evaluation.sha256,
        "zoo": __version__,
    }
    return cached_arrays("teacher-embeddings", key, compute)


def _source_reference(model: ModelSpec, torch_model, x: np.ndarray) -> tuple[np.ndarray, str]:
    if torch_model is not None:
        return embed_torch(torch_model, x), "torch fp32"
    from zoo.runtimes import run_in_batches
    from zoo.runtimes.onnxruntime import OrtSession

    return run_in_batches(OrtSession(Path(model.architecture)), x), "source ONNX on ONNX Runtime"


def _resolve(model_name: str, target_name: str, registry: Registry | None) -> tuple:
    registry = registry or load_registry()
    model = registry.get(model_name)
    target = get_target(target_name, registry.files)
    teacher = registry.teacher_of(model)
    return model, target, teacher, registry


PARITY_EVAL_IMAGES = 12  # images of a user's evaluation set among the parity inputs (as many as the photos)


def _parity_inputs(size: int, model: ModelSpec, evaluation: EvaluationSet | None) -> tuple[np.ndarray, list[str], int]:
    """(inputs, labels, image count): the bundled photos — or, with a user's evaluation set, its own
    images (evenly spaced over gallery and views) — then the seeded random inputs. None: the built-in task."""
    if evaluation is None or evaluation.builtin:
        x, labels = parity_inputs(size, model.mean, model.std)
        return x, labels, len(reference_photos())
    images = [*evaluation.gallery, *evaluation.views]
    pick = np.unique(np.linspace(0, len(images) - 1, min(PARITY_EVAL_IMAGES, len(images))).round().astype(int))
    photos = preprocess([images[i] for i in pick], size, model.mean, model.std)
    randoms = random_inputs(4, size)
    labels = [f"eval_{i}" for i in pick] + [f"random_{i}" for i in range(len(randoms))]
    return np.concatenate([photos, randoms]), labels, len(pick)


def convert(
    model_name: str,
    target_name: str,
    *,
    out_root: Path = Path("out"),
    registry: Registry | None = None,
    validate: bool = True,
    latency_runs: int = 30,
    calibration_dir: Path | None = None,
    calibration_count: int | None = None,
    eval_path: Path | None = None,
    progress: Progress = QUIET,
    cached_only: bool = False,
) -> Outcome | None:
    """Convert a registered model for a target, validate every artifact, write outputs atomically.
    `eval_path`: the evaluation set teacher parity and the product rules run on (default: the model's
    `eval_set`, its teacher's, else the built-in reference task). Steps and whole conversions whose
    inputs did not change come from the cache (zoo.conversion_cache; `ZOO_CACHE=off` turns it off).
    `cached_only`: return the cached conversion, or None (nothing written) when there is none."""
    started = time.perf_counter()
    model, target, teacher, registry = _resolve(model_name, target_name, registry)
    steps = [get_converter(step, target.name) for step in target.chain]  # unknown steps fail before any work
    if model.float_modules.get(target.name) and not any(map(keeps_float_modules, steps)):
        raise UsageError(
            f"{model.name}'s float_modules name target {target.name}, whose steps ({', '.join(target.chain)}) "
            "cannot leave modules in float",
            hint="float_modules apply to onnx_to_int8 (android-int8), openvino_to_int8 and onnx_to_hef (hailo8l)",
        )
    check_calibration_options(target, any(uses_calibration(s) for s in steps), calibration_dir, calibration_count)
    user_set = evaluation_path(eval_path, model, teacher)
    # a bad set fails before any work; the built-in task is rendered only when validation needs it
    evaluation = load_evaluation_set(user_set) if user_set else None
    profile = profile_for(model, teacher, registry.files)
    runtime = get_runtime(target.runtime)
    warnings = untrained_warnings(model, teacher)
    for warning in warnings:
        progress.say(f"WARNING: {warning}")
    size = model.input_size_for(target)
    x, labels, image_count = _parity_inputs(size, model, evaluation)
    metadata = artifact_metadata(model, target, size)
    out_dir = Path(out_root) / model.name / target.name

    base_key = step_base_key(model, target, steps, size, x, metadata, calibration_dir, calibration_count, out_dir)
    key = _conversion_key(base_key, model, teacher, out_dir, evaluation, profile, validate, latency_runs)
    if key is not None:
        cached = _cached_conversion(key, out_dir, progress)
        if cached is not None:
            return cached
    if cached_only:
        return None
    evaluation = evaluation or reference_evaluation_set()

    timings: dict[str, float] = {}
    torch_model = None
    if model.architecture_kind != "onnx":
        from zoo.models import build_model

        with progress.step(f"building {model.name} ({model.architecture}, {size} px, {model.weights_label})"):
            torch_model = build_model(model)
        if model.float_modules.get(target.name):  # a wrong module path fails before anything is written
            from zoo.diagnose import check_float_modules

            check_float_modules(torch_model, model.float_modules[target.name])
    export_form = deployment_form(torch_model, x, progress)  # parity vs source stays on the trained form

    with staged_directory(out_dir, say=progress.say) as work:
        ctx = ConvertContext(
            model=model,
            target=target,
            workdir=work,
            input_size=size,
            torch_model=export_form.model,
            sample_inputs=x,
            metadata=metadata,
            progress=progress,
            calibration_dir=calibration_dir,
            calibration_count=calibration_count,
        )
        if export_form.check is not None:
            ctx.checks.append(export_form.check)
            ctx.records["reparameterized"] = export_form.record()
        upstream: Artifact | None = None
        for index, step in enumerate(steps):
            problems = step.preflight(ctx, upstream)
            if problems:
                raise ConversionError(f"{step.name} cannot convert {model.name}: " + "; ".join(problems))
            step_started = time.perf_counter()
            with progress.step(f"{step.name}"):
                produced, reused = run_cached_step(step, index, ctx, upstream, base_key, _run_step)
            if reused:
                progress.say(f"{step.name}: {reused}")
            timings[step.name] = round(time.perf_counter() - step_started, 3)
            ctx.artifacts += produced
            upstream = produced[0]
        for warning in ctx.warnings:
            progress.say(f"WARNING: {warning}")
        warnings += ctx.warnings

        # rows only a conversion can make are kept in the manifest and carried into `zoo validate`
        conversion_checks = list(ctx.checks)
        checks: list[Check] = conversion_checks + inspect_artifacts(work, ctx.artifacts)
        diagnoses: tuple = ()
        if validate:
            validation_started = time.perf_counter()
            grid = _takes_pixels(target, ctx.artifacts)
            refs = _references(model, teacher, x, labels, image_count, torch_model, evaluation, profile, progress, grid)
            rows, diagnoses = _validate(model, target, refs, work, ctx.artifacts, latency_runs, progress, torch_model)
            checks += rows
            timings["validation"] = round(time.perf_counter() - validation_started, 3)
        timings["total"] = round(time.perf_counter() - started, 3)
        report = Report(
            model=model.name,
            target=target.name,
            checks=tuple(checks),
            warnings=tuple(warnings),
            artifacts=tuple(a.name for a in ctx.artifacts),
            validated=validate,
            info=_report_info(model, target, size, runtime if validate else None, x, evaluation, profile),
            timings=timings,
            diagnoses=diagnoses,
        )
        manifest = _manifest(work, model, teacher, target, ctx.artifacts, size, ctx.records)
        manifest["conversion_checks"] = [c.to_dict() for c in conversion_checks]
        manifest["eval_set"] = _eval_record(evaluation, out_dir)
        manifest["acceptance_profile"] = profile.record()
        manifest["timings"] = timings
        _write_report(work, report, manifest)
        if key is not None:
            store_conversion(key, work, timings["total"])
    return Outcome(out_dir, report)


def _conversion_key(base_key, model, teacher, out_dir, evaluation, profile, validate, latency_runs) -> str | None:
    """Everything a conversion's report depends on (zoo.conversion_cache); None when the cache is off."""
    if base_key is None:  # the cache is off, or the conversion cannot be keyed
        return None
    try:
        teacher_fields = (spec_to_manifest(teacher, out_dir), model_files(teacher)) if teacher else None
    except OSError:
        return None
    return conversion_key(
        base_key,
        teacher=teacher_fields,
        eval_set=_eval_record(evaluation, out_dir) if evaluation else "built-in reference task",
        profile=profile.record(),
        validate=validate,
        latency_runs=latency_runs,
    )


class _CacheMiss(Exception):
    """An entry that could not be restored whole: the conversion runs instead."""


def _cached_conversion(key: str, out_dir: Path, progress: Progress) -> Outcome | None:
    try:
        with staged_directory(out_dir, say=progress.say) as work:
            restored = restore_conversion(key, work)
            if restored is None:
                raise _CacheMiss
            report, manifest = restored
            _write_report(work, report, manifest)
    except _CacheMiss:
        return None
    progress.say(f"{report.model} → {report.target}: {report.info['cache']}")
    return Outcome(out_dir, report)


def _run_step(step, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
    """One converter step; a toolchain's own exception (not zoo's, not the filesystem's) is a failed
    conversion naming the step, exit 3, never a traceback that reads as a failed check."""
    try:
        return step.convert(ctx, upstream)
    except (ZooError, OSError):
        raise
    except Exception as exc:
        raise ConversionError(
            f"{step.name} failed for {ctx.model.name} ({ctx.target.name}): {type(exc).__name__}: {exc}",
            hint="the toolchain's message is above; run with --traceback for its traceback",
        ) from exc


def _write_report(root: Path, report: Report, manifest: dict) -> None:
    """report.json and report.md, then the manifest that pins report.json's sha256 and verdict, so
    `zoo package` can tell a report that zoo wrote from one that was edited."""
    write_text_atomic(root / "report.json", report.to_json())
    write_text_atomic(root / "report.md", report.to_markdown())
    manifest["verdict"] = report.verdict
    manifest["report_sha256"] = sha256_file(root / "report.json")
    write_manifest(root, manifest)


def _references(
    model, teacher, x, labels, image_count, torch_model, evaluation, profile, progress, pixel_grid=False
) -> References:
    """`pixel_grid`: an artifact takes uint8 pixels, so the source also embeds the inputs snapped to them."""
    source, source_label = _source_reference(model, torch_model, x)
    on_pixels = None
    if pixel_grid:
        from zoo.runtimes.hailo import snap_to_pixels

        on_pixels, _ = _source_reference(model, torch_model, snap_to_pixels(x, model.mean, model.std))
    teacher_ref, reason = teacher_reference(model, teacher, x.shape[-1], progress, evaluation, profile)
    return References(x, tuple(labels), image_count, source, source_label, teacher_ref, reason, on_pixels)


def _takes_pixels(target: TargetSpec, artifacts) -> bool:
    from zoo.validators import runtime_for

    return any(runtime_for(a, target).takes_uint8_pixels for a in artifacts if a.runnable)


def _validate(model, target, refs: References, out_dir, artifacts, latency_runs, progress, torch_model) -> tuple:
    """(checks, diagnoses): every artifact against the source model (real images + random inputs) and,
    where it means something, against the teacher on the evaluation set under the acceptance profile;
    for each artifact whose parity vs source fails, where it breaks, layer by layer (zoo.diagnose)."""
    from zoo.diagnose.run import diagnose_failures

    rows = [] if refs.teacher is None or refs.teacher.self_judged else [_separation_check(refs.teacher)]
    rows += validate_artifacts(model, target, out_dir, artifacts, refs, latency_runs=latency_runs, progress=progress)
    diagnoses, explained = diagnose_failures(model, target, out_dir, artifacts, refs, rows, torch_model, progress)
    return rows + explained, diagnoses


def _eval_record(evaluation: EvaluationSet, out_dir: Path) -> dict:
    """The set as the manifest records it: a user's set by its path relative to the output folder."""
    record = evaluation.record()
    if not evaluation.builtin:
        record["source"] = os.path.relpath(os.path.abspath(evaluation.source), os.path.abspath(out_dir))
    return record


def _separation_check(teacher_ref) -> Check:
    """The vacuity guard, shown in the report: the teacher meets its profile's guard rules on the set."""
    first = next(iter(teacher_ref.metrics.values()), None)
    guard_rules = ", ".join(teacher_ref.metrics) or "none"
    return Check(
        f"teacher {teacher_ref.name} separates identities (vacuity guard)",
        Status.PASS if teacher_ref.meaningful else Status.INFO,
        Fidelity.MEASURED,
        value=None if first is None else round(first, 4),
        threshold=f"profile {teacher_ref.profile.name}: {guard_rules}",
        artifact="teacher (torch)",
        detail=teacher_ref.separation
        + ("" if teacher_ref.meaningful else "; NOT meaningful: teacher parity is not run")
        + f"; {teacher_ref.eval_description}; teacher embeddings {teacher_ref.embeddings_status}",
        data=teacher_ref.metrics,
    )


def _report_info(
    model: ModelSpec,
    target: TargetSpec,
    size: int,
    runtime,
    x: np.ndarray,
    evaluation: EvaluationSet,
    profile: Profile,
) -> dict:
    return {
        "weights": model.weights_label,
        "input": f"{size}×{size} RGB, mean {list(model.mean)}, std {list(model.std)}, NCHW",
        "validation runtime": _runtime_label(runtime),
        "validation inputs sha256": inputs_sha256(x),
        "embedding": f"{model.embedding_dim}-d, space {model.embedding_space}, "
        + ("L2-normalized in the model" if model.normalize else "L2 normalization on the host"),
        "evaluation set": evaluation.describe(),
        "acceptance profile": f"{profile.name} — {profile.description} (rules from {profile.source})",
    }


def _runtime_label(runtime) -> str:
    if runtime is None:
        return "none (--no-validate)"
    reason = runtime.unavailable_reason()
    return f"{runtime.name}: not available here ({reason})" if reason else f"{runtime.name} {runtime.version()}"


def _manifest(root: Path, model, teacher, target, artifacts, size, records: dict) -> dict:
    return {
        "schema": 1,
        "converted_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "zoo_version": __version__,
        "model": spec_to_manifest(model, root),
        "teacher": spec_to_manifest(teacher, root) if teacher else None,
        "target": target.to_dict(),
        "input_size": size,
        "checkpoint_sha256": model.checkpoint.sha256 if model.checkpoint else None,
        "weights": "trained" if model.trained else "untrained",
        "artifacts": [
            {
                **file_entry(root, a.name),
                "format": a.format,
                "runnable": a.runnable,
                "description": a.description,
                "runtime": a.runtime or target.runtime,
                "host_l2_normalize": a.host_l2_normalize,
                "facts": a.facts,
            }
            for a in artifacts
        ],
        "tools": tool_versions(),
        **records,
    }


def validate_dir(
    out_dir: Path, *, latency_runs: int = 30, eval_path: Path | None = None, progress: Progress = QUIET
) -> Outcome:
    """Re-validate an output directory from its manifest: file hashes, then every check again, on the
    evaluation set and under the acceptance profile the manifest records (or `eval_path`). Holds the
    output's lock, so a conversion of the same output never replaces it halfway through."""
    out_dir = Path(out_dir)
    read_manifest(out_dir)  # not an output directory: say so before taking a lock beside it
    with output_lock(out_dir, say=progress.say):
        return _validate_dir(out_dir, latency_runs, eval_path, progress)


def artifacts_of(manifest: dict, out_dir: Path) -> tuple:
    """(model, teacher, target, artifacts, input size) as an output folder's manifest records them."""
    try:
        size = int(manifest["input_size"])
        model = spec_from_manifest(manifest["model"], out_dir)
        teacher = spec_from_manifest(manifest["teacher"], out_dir) if manifest.get("teacher") else None
        target_fields = dict(manifest["target"])
        target = target_from_dict(target_fields.pop("name"), target_fields)
        artifacts = [
            Artifact(
                a["path"],
                a["format"],
                a["runnable"],
                a.get("description", ""),
                a.get("runtime", ""),
                a.get("host_l2_normalize", False),
                a.get("facts", {}),
            )
            for a in manifest["artifacts"]
        ]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{out_dir}/manifest.json is missing {exc}") from None
    return model, teacher, target, artifacts, size


def judging_of(manifest: dict, out_dir: Path, model, teacher, size: int) -> tuple[np.ndarray, list[str], int]:
    """The parity inputs an output folder was judged on (its recorded evaluation set's images, or the
    built-in photos), then the seeded random inputs: (inputs, labels, image count)."""
    evaluation, _ = _recorded_judging(manifest, out_dir, None, model, teacher)
    return _parity_inputs(size, model, evaluation)


def _validate_dir(out_dir: Path, latency_runs: int, eval_path: Path | None, progress: Progress) -> Outcome:
    manifest = read_manifest(out_dir)
    model, teacher, target, artifacts, size = artifacts_of(manifest, out_dir)
    checks = [_integrity_check(out_dir, manifest)]
    origin = f"conversion of {manifest.get('converted_at') or 'unknown date'}"
    checks += [Check.from_dict(c).carried(origin) for c in manifest.get("conversion_checks", [])]
    intact = checks[0].status is Status.PASS
    if intact:
        checks += inspect_artifacts(out_dir, artifacts)
    runtime = get_runtime(target.runtime)
    warnings = untrained_warnings(model, teacher)
    evaluation, profile = _recorded_judging(manifest, out_dir, eval_path, model, teacher)
    torch_model = None
    if model.architecture_kind != "onnx":
        from zoo.models import build_model

        with progress.step(f"building {model.name} source model"):
            torch_model = build_model(model)
    x, labels, image_count = _parity_inputs(size, model, evaluation)
    diagnoses = ()
    if intact:
        grid = _takes_pixels(target, artifacts)
        refs = _references(model, teacher, x, labels, image_count, torch_model, evaluation, profile, progress, grid)
        rows, diagnoses = _validate(model, target, refs, out_dir, artifacts, latency_runs, progress, torch_model)
        checks += rows
    report = Report(
        model.name,
        target.name,
        tuple(checks),
        tuple(warnings),
        tuple(a.name for a in artifacts),
        info=_report_info(model, target, size, runtime, x, evaluation, profile),
        diagnoses=diagnoses,
    )
    manifest["eval_set"] = _eval_record(evaluation, out_dir)
    manifest["acceptance_profile"] = profile.record()
    _write_report(out_dir, report, manifest)
    return Outcome(out_dir, report)


def _recorded_judging(manifest: dict, out_dir: Path, eval_path, model, teacher) -> tuple:
    """(evaluation set, profile) of a re-validation: `eval_path`, else the set the manifest records
    (its sha256 must still match), and the profile's rules as the manifest keeps them."""
    from zoo.evalset import load_evaluation_set

    recorded = manifest.get("eval_set") or {}
    if eval_path is not None:
        evaluation = load_evaluation_set(eval_path)
    elif recorded and not recorded.get("source", "").startswith("built-in"):
        evaluation = load_evaluation_set(out_dir / recorded["source"])
        if evaluation.sha256 != recorded.get("sha256"):
            raise UsageError(
                f"the evaluation set {evaluation.source} changed since {out_dir} was validated "
                f"(sha256 {evaluation.sha256[:12]}…, recorded {str(recorded.get('sha256'))[:12]}…)",
                hint="pass --eval to judge on the set as it is now",
            )
    else:
        evaluation = resolve_evaluation_set(None, model, teacher)
    record = manifest.get("acceptance_profile")
    profile = (
        Profile.from_record(record) if isinstance(record, dict) and "rule" in record else profile_for(model, teacher)
    )
    return evaluation, profile


def _integrity_check(root: Path, manifest: dict) -> Check:
    bad = []
    for entry in manifest["artifacts"]:
        path = root / entry["path"]
        if not path.exists():
            bad.append(f"{entry['path']} missing")
        elif file_entry(root, entry["path"])["sha256"] != entry["sha256"]:
            bad.append(f"{entry['path']} sha256 differs")
    return Check(
        "artifact files match the manifest (sha256)",
        Status.FAIL if bad else Status.PASS,
        Fidelity.MEASURED,
        value=f"{len(manifest['artifacts']) - len(bad)}/{len(manifest['artifacts'])}",
        threshold="all match",
        detail="; ".join(bad),
    )
