"""Validators: run each artifact on its validation runtime and turn the outputs into checks.

Every check carries its fidelity. The references (the source model's outputs, the teacher's)
are computed once per conversion and shared by all artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.converters import Artifact
from zoo.fidelity import Check
from zoo.progress import QUIET, Progress
from zoo.registry import ModelSpec
from zoo.runtimes import Runtime, run_in_batches
from zoo.targets import TargetSpec
from zoo.validators import checks, latency


@dataclass(frozen=True)
class References:
    """What the artifacts are compared against."""

    inputs: np.ndarray  # NCHW float32 at the artifact's input size: photos first, then random
    labels: tuple[str, ...]
    photo_count: int
    source: np.ndarray  # the source model's embeddings of `inputs`
    source_label: str  # e.g. "torch fp32"
    teacher: np.ndarray | None  # the teacher's embeddings of the photos (its own size and preprocessing)
    teacher_reason: str  # why teacher parity is not applicable, when teacher is None
    teacher_name: str = ""


def validate_artifacts(
    model: ModelSpec,
    target: TargetSpec,
    out_dir: Path,
    artifacts: list[Artifact],
    refs: References,
    runtime: Runtime,
    *,
    latency_runs: int = 30,
    progress: Progress = QUIET,
) -> list[Check]:
    results: list[Check] = []
    runnable = [a for a in artifacts if a.runnable and a.format in runtime.formats]
    if not runnable:
        results.append(checks.not_applicable("artifact validation", f"no artifact that {runtime.name} can open"))
    for artifact in runnable:
        with progress.step(f"validating {artifact.name} on {runtime.name}"):
            results += validate_one(model, target, out_dir / artifact.name, artifact.name, refs, runtime, latency_runs)
    return results


def validate_one(
    model: ModelSpec,
    target: TargetSpec,
    path: Path,
    name: str,
    refs: References,
    runtime: Runtime,
    latency_runs: int,
) -> list[Check]:
    fid = runtime.fidelity
    session = runtime.open(path)
    out = run_in_batches(session, refs.inputs)
    rows = [
        checks.output_shape(out, len(refs.inputs), model.embedding_dim, fid, name),
        checks.unit_norm(out, fid, name, normalized=model.normalize),
    ]
    if out.shape != refs.source.shape:
        return rows  # nothing to compare: the shape check already failed
    rows.append(
        checks.parity(
            f"parity vs source ({refs.source_label})",
            refs.source,
            out,
            target.min_cosine_vs_source,
            fid,
            name,
            detail=f"{refs.photo_count} photos + {len(refs.inputs) - refs.photo_count} random",
        )
    )
    if refs.teacher is None:
        rows.append(checks.not_applicable("parity vs teacher", refs.teacher_reason, name))
    else:
        rows.append(
            checks.parity(
                f"parity vs teacher ({refs.teacher_name}, torch)",
                refs.teacher,
                out[: refs.photo_count],
                target.min_cosine_vs_teacher,
                fid,
                name,
                detail=f"{refs.photo_count} photos",
            )
        )
    stats = latency.measure(session, refs.inputs.shape[-1], runs=latency_runs)
    rows += latency.latency_checks(stats, target, fid, name)
    return rows
