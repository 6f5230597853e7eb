"""`zoo verify PACKAGE`: re-hash every file, then run the golden inputs through every artifact whose
runtime is available here. A runtime that is not available is reported as "not run", never as pass.

PACKAGE is a package folder, or its .tar.gz (unpacked with the same checks as `zoo pull`; a
`<archive>.sha256` beside it is checked first).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.fidelity import Check, Fidelity, Status
from zoo.outputs import file_entry
from zoo.packaging import golden as golden_mod
from zoo.packaging.archive import SUMS_NAME, check_tree, read_sha256_sidecar, safe_extract
from zoo.packaging.package import read_package_manifest
from zoo.progress import QUIET, Progress
from zoo.report import Report
from zoo.runtimes import module_missing
from zoo.validators.metrics import cosine_rows

NORM_TOLERANCE = 1e-3


def verify_package(path: Path, *, progress: Progress = QUIET) -> Report:
    path = Path(path)
    if path.is_file():
        return _verify_archive(path, progress)
    return verify_directory(path, progress=progress)


def _verify_archive(archive: Path, progress: Progress) -> Report:
    from zoo.checkpoints import sha256_file

    pre: list[Check] = []
    sidecar = archive.with_name(archive.name + ".sha256")
    if sidecar.is_file():
        expected, actual = read_sha256_sidecar(sidecar), sha256_file(archive)
        pre.append(
            Check(
                "archive sha256 (.sha256 beside it)",
                Status.PASS if expected == actual else Status.FAIL,
                Fidelity.MEASURED,
                actual[:16] + "…",
                f"{expected[:16]}…",
                archive.name,
                "" if expected == actual else f"archive sha256 {actual}, expected {expected}",
            )
        )
    with tempfile.TemporaryDirectory(prefix="zoo-verify-") as tmp:
        root = safe_extract(archive, Path(tmp) / "x")
        report = verify_directory(root, progress=progress)
    return Report(
        report.model, report.target, tuple(pre) + report.checks, report.warnings, report.artifacts, info=report.info
    )


def verify_directory(root: Path, *, progress: Progress = QUIET) -> Report:
    root = Path(root)
    manifest = read_package_manifest(root)
    checks: list[Check] = []
    mismatched, missing, unlisted, listed = check_tree(root)
    bad = set(mismatched) | set(missing)
    problems = (
        [f"sha256 differs: {p}" for p in mismatched]
        + [f"missing: {p}" for p in missing]
        + [f"not listed: {p}" for p in unlisted]
    )
    checks.append(
        Check(
            f"files match {SUMS_NAME}",
            Status.FAIL if problems else Status.PASS,
            Fidelity.MEASURED,
            f"{listed - len(bad)}/{listed}" + (f", {len(unlisted)} unlisted" if unlisted else ""),
            "every file listed and matching",
            detail="; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""),
            data={"mismatched": mismatched, "missing": missing, "unlisted": unlisted, "listed": listed},
        )
    )
    warnings = tuple(manifest.get("warnings", ()))
    artifacts = []
    for model in manifest["models"]:
        for entry in model["artifacts"]:
            artifacts.append(entry["path"])
            checks.append(_artifact_hash(root, entry))
        if model["role"] in ("detector", "keypoints"):
            staged = isinstance(model.get("validation"), dict) and model["validation"].get("checks")
            checks.append(
                Check(
                    "golden outputs",
                    Status.NOT_APPLICABLE,
                    Fidelity.NOT_RUN,
                    artifact=model["artifacts"][0]["path"],
                    detail=f"{model['name']}: a pipeline stage, checked by the consumer-path row below"
                    if staged
                    else f"detector {model['name']} was supplied, not validated by zoo: no golden outputs",
                )
            )
            continue
        if model.get("untrained_weights"):
            checks.append(
                Check(
                    "weights",
                    Status.INFO,
                    Fidelity.MEASURED,
                    "UNTRAINED",
                    artifact=model["name"],
                    detail="UNTRAINED WEIGHTS: the embeddings mean nothing; the package was built with --allow-untrained",
                )
            )
        checks += _golden_checks(root, model, bad, progress)
    if manifest.get("pipeline"):
        checks.append(_pipeline_check(root, manifest, bad, progress))
    return Report(
        f"{manifest['name']}:{manifest['version']}",
        manifest["consumer"],
        tuple(checks),
        warnings,
        tuple(artifacts),
        info={"package": str(root), "models": ", ".join(m["name"] for m in manifest["models"])},
    )


def _pipeline_check(root: Path, manifest: dict, bad: set[str], progress: Progress) -> Check:
    from zoo.detection.golden import CHECK_NAME, consumer_path_check

    folder = (root / manifest["pipeline"]["manifest"]).parent
    golden = root / "golden" / f"{manifest['pipeline']['name']}-pipeline"
    stage_files = {
        a["path"]
        for m in manifest["models"]
        if m.get("pipeline") or m["role"] in ("detector", "keypoints")
        for a in m["artifacts"]
    }
    why = (
        "not run: a stage file does not match its sha256"
        if bad & stage_files
        else module_missing("onnxruntime", "onnx")
        and "not run: ONNX Runtime is not installed (pip install 'zoo[onnx]')"
    )
    if why:
        return Check(CHECK_NAME, Status.NOT_RUN, Fidelity.NOT_RUN, artifact=str(folder.relative_to(root)), detail=why)
    with progress.step("the service's path on the golden scenes"):
        return consumer_path_check(root, folder, golden)


def _artifact_hash(root: Path, entry: dict) -> Check:
    path = root / entry["path"]
    if not path.exists():
        status, value, detail = Status.FAIL, "missing", f"{entry['path']} is missing"
    else:
        actual = file_entry(root, entry["path"])["sha256"]
        ok = actual == entry["sha256"]
        status = Status.PASS if ok else Status.FAIL
        value = actual[:16] + "…"
        detail = "" if ok else f"sha256 {actual}, the manifest says {entry['sha256']}"
    return Check(
        "artifact sha256 (manifest)",
        status,
        Fidelity.MEASURED,
        value,
        entry["sha256"][:16] + "…",
        entry["path"],
        detail,
    )


def _golden_checks(root: Path, model: dict, bad: set[str], progress: Progress) -> list[Check]:
    checks: list[Check] = []
    goldens: dict[str, golden_mod.Golden] = {}
    for g in model.get("golden", []):
        try:
            golden = golden_mod.load_golden(root / g["dir"])
        except (OSError, ValueError, KeyError) as exc:
            checks.append(
                Check("golden set readable", Status.FAIL, Fidelity.MEASURED, artifact=g["dir"], detail=str(exc))
            )
            continue
        goldens[g["dir"]] = golden
        diff = golden_mod.preprocessing_difference(golden)
        ok = diff <= golden_mod.PREPROCESS_TOLERANCE
        checks.append(
            Check(
                "golden preprocessing reproduces inputs.npy",
                Status.PASS if ok else Status.FAIL,
                Fidelity.MEASURED,
                round(diff, 9),
                f"max |Δ| ≤ {golden_mod.PREPROCESS_TOLERANCE}",
                g["dir"],
                f"zoo's preprocessing of the {golden.record['count']} golden PNGs",
            )
        )
    for entry in model["artifacts"]:
        if not entry.get("runnable", True):
            continue
        golden = goldens.get(entry.get("golden", ""))
        if golden is None:
            checks.append(
                Check(
                    "golden outputs",
                    Status.NOT_RUN,
                    Fidelity.NOT_RUN,
                    artifact=entry["path"],
                    detail="no readable golden set for this artifact",
                )
            )
            continue
        checks.append(_run_golden(root, entry, model, golden, entry["path"] in bad, progress))
    return checks


def _run_golden(root: Path, entry: dict, model: dict, golden, tampered: bool, progress: Progress) -> Check:
    name = "golden outputs vs expected (cosine)"
    min_cos = float(entry.get("min_cosine_vs_source", golden.min_cosine))
    threshold = f"min cosine ≥ {min_cos}"
    path = entry["path"]

    def not_run(why: str) -> Check:
        return Check(name, Status.NOT_RUN, Fidelity.NOT_RUN, None, threshold, path, why)

    if tampered or file_entry(root, path)["sha256"] != entry["sha256"]:
        return not_run("not run: the file does not match its sha256")
    from zoo.runtimes import get_runtime, run_in_batches

    runtime_name = entry.get("runtime") or ""
    try:
        runtime = get_runtime(runtime_name)
    except ZooError as exc:
        return not_run(f"runtime {runtime_name!r}: {exc}")
    if entry["format"] not in runtime.formats:
        return not_run(f"runtime {runtime.name} does not open {entry['format']} artifacts")
    reason = runtime.unavailable_reason()
    if reason:
        return not_run(f"{runtime.name} is not available here: {reason}")
    fid = runtime.fidelity
    try:
        with progress.step(f"golden inputs through {path} on {runtime.name}"):
            out = np.asarray(run_in_batches(runtime.open(root / path), golden.inputs), np.float32)
    except Exception as exc:  # a runtime that cannot open or run the artifact is a failure, not a skip
        return Check(
            name, Status.FAIL, fid, None, threshold, path, f"{runtime.name} failed: {type(exc).__name__}: {exc}"
        )
    expected = golden.expected
    if out.shape != expected.shape:
        return Check(
            name, Status.FAIL, fid, None, threshold, path, f"output shape {out.shape}, expected {expected.shape}"
        )
    if entry.get("host_l2_normalize"):
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    cos = cosine_rows(expected, out)
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    norm_err = float(np.max(np.abs(norms - 1.0)))
    norm_ok = not model["embedding"]["l2_normalized"] or norm_err <= NORM_TOLERANCE
    ok = bool(cos.min() >= min_cos) and norm_ok
    detail = (
        f"{len(cos)} golden inputs on {runtime.name} {runtime.version()}; mean {cos.mean():.7f}; "
        f"max |‖e‖−1| {norm_err:.2e}" + ("" if norm_ok else " (not unit norm)")
    )
    return Check(
        name,
        Status.PASS if ok else Status.FAIL,
        fid,
        round(float(cos.min()), 7),
        threshold,
        path,
        detail,
        {
            "per_sample_cosine": [round(float(c), 7) for c in cos],
            "cosine_min": float(cos.min()),
            "max_abs_diff": float(np.max(np.abs(out - expected))),
            "norm_error_max": norm_err,
        },
    )
