"""Validators: run each artifact on its validation runtime and turn the outputs into checks.

Every check carries its fidelity. The references (the source model's outputs, the teacher's)
are computed once per conversion and shared by all artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.converters import Artifact
from zoo.errors import ConversionError, UsageError, ZooError
from zoo.fidelity import Check, Fidelity, Status
from zoo.profiles import Profile
from zoo.progress import QUIET, Progress
from zoo.registry import ModelSpec
from zoo.runtimes import Runtime, SessionBase, get_runtime, run_in_batches
from zoo.targets import TargetSpec
from zoo.validators import acceptance, checks, latency, timing


@dataclass(frozen=True)
class TeacherReference:
    """The trained teacher on an evaluation set's views, and the profile its students are judged by."""

    name: str
    inputs: np.ndarray  # the views, preprocessed for the artifact (its size, mean/std), NCHW
    labels: np.ndarray  # identity per view, -1 for unknown images
    conditions: tuple[str, ...]
    view_embeddings: np.ndarray  # the teacher's embeddings of the same views (its own size)
    gallery: np.ndarray  # one unit vector per identity: the teacher's embedding of its gallery images
    meaningful: bool  # the vacuity guard: the teacher meets the profile's guard rules
    separation: str  # the guard's figures, in words
    metrics: dict  # the guard rules' values on the teacher, by rule name
    profile: Profile
    eval_description: str  # which evaluation set, in words
    embeddings_status: str  # how the teacher's embeddings were obtained (computed, or from the cache)
    self_judged: bool = False  # no teacher: the model's own source gallery, the profile's rules, no parity row
    # photographs of cards in no gallery (preprocessed like `inputs`), or None: reported, never gated
    unseen_inputs: np.ndarray | None = None


@dataclass(frozen=True)
class References:
    """What the artifacts are compared against."""

    inputs: np.ndarray  # NCHW float32 at the artifact's input size: photos first, then random
    labels: tuple[str, ...]
    photo_count: int
    source: np.ndarray  # the source model's embeddings of `inputs`
    source_label: str  # e.g. "torch fp32"
    teacher: TeacherReference | None  # None when teacher parity is not applicable
    teacher_reason: str  # why teacher parity is not applicable, when teacher is None
    # the source's embeddings of `inputs` snapped to the uint8 pixel grid, for runtimes that take pixels
    # (Runtime.takes_uint8_pixels); None when the target has none
    source_on_pixels: np.ndarray | None = None


def runtime_for(artifact: Artifact, target: TargetSpec) -> Runtime:
    return get_runtime(artifact.runtime or target.runtime)


def validate_artifacts(
    model: ModelSpec,
    target: TargetSpec,
    out_dir: Path,
    artifacts: list[Artifact],
    refs: References,
    *,
    latency_runs: int = 30,
    progress: Progress = QUIET,
) -> list[Check]:
    results: list[Check] = []
    validated = 0
    for artifact in artifacts:
        if not artifact.runnable:
            continue
        runtime = runtime_for(artifact, target)
        if artifact.format not in runtime.formats:
            continue
        reason = runtime.unavailable_reason()
        if reason:
            results.append(
                Check(
                    "artifact validation",
                    Status.NOT_RUN,
                    Fidelity.NOT_RUN,
                    artifact=artifact.name,
                    detail=f"{runtime.name}: {reason}",
                )
            )
            continue
        with progress.step(f"validating {artifact.name} on {runtime.name}"):
            results += validate_one(model, target, out_dir / artifact.name, artifact, refs, runtime, latency_runs)
        validated += 1
    if not validated and not results:
        results.append(
            Check(
                "artifact validation",
                Status.NOT_RUN,
                Fidelity.NOT_RUN,
                detail="no artifact that a validation runtime can open",
            )
        )
    return results


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def validate_one(
    model: ModelSpec,
    target: TargetSpec,
    path: Path,
    artifact: Artifact,
    refs: References,
    runtime: Runtime,
    latency_runs: int,
) -> list[Check]:
    fid = runtime.fidelity
    name = artifact.name
    try:
        session = runtime.open(path)
        out = run_in_batches(session, refs.inputs)
    except (ZooError, OSError):
        raise
    except Exception as exc:  # a freshly built artifact that its own runtime cannot run
        raise ConversionError(
            f"{name} does not run on {runtime.name}: {type(exc).__name__}: {exc}",
            hint="the artifact was written but its runtime refuses it; run with --traceback for details",
        ) from exc
    if not isinstance(session, SessionBase):
        raise UsageError(
            f"runtime {runtime.name!r} opened {name} as a {type(session).__qualname__}, which does not subclass "
            "zoo.runtimes.SessionBase",
            hint="subclass SessionBase: it declares the optional hooks (latency_variants, with_batch)",
        )
    rows = [checks.output_shape(out, len(refs.inputs), model.embedding_dim, fid, name)]
    if artifact.host_l2_normalize:
        out = _l2(out.astype(np.float32)).astype(np.float32)
        rows.append(
            checks.not_applicable(
                "unit L2 norm",
                "the artifact leaves L2 normalization to the host; parity below is after host normalization",
                name,
            )
        )
    else:
        rows.append(checks.unit_norm(out, fid, name, normalized=model.normalize))
    if out.shape != refs.source.shape:
        return rows  # nothing to compare: the shape check already failed
    photos_only = bool(getattr(runtime, "parity_on_photos_only", False))
    judged = slice(0, refs.photo_count) if photos_only else slice(None)
    source, inputs = refs.source, f"{refs.photo_count} photos + {len(refs.inputs) - refs.photo_count} random"
    if photos_only:
        inputs = f"{refs.photo_count} photos (random tensors are not pictures {runtime.name}'s resampled input carries)"
    elif runtime.takes_uint8_pixels and refs.source_on_pixels is not None:
        source = refs.source_on_pixels
        inputs += " on the uint8 pixel grid the artifact takes (clipped to 0–255 and rounded, for the source too)"
    rows.append(
        checks.source_parity(
            f"parity vs source ({refs.source_label})",
            source[judged],
            out[judged],
            target.min_cosine_vs_source,
            fid,
            name,
            detail=inputs,
        )
    )
    if refs.teacher is None:
        rows.append(checks.not_applicable("parity vs teacher", refs.teacher_reason, name))
    else:
        rows += teacher_checks(target, artifact, session, refs.teacher, fid)
    if not runtime.measures_latency:  # an emulation's speed is not the device's
        return rows
    stats = latency.measure(session, refs.inputs.shape[-1], runs=latency_runs)
    rows += latency.latency_checks(stats, target, fid, name)
    rows += timing.extra_timing_checks(session, target, fid, name, refs.inputs.shape[-1], latency_runs)
    return rows


def teacher_checks(target: TargetSpec, artifact: Artifact, session, teacher: TeacherReference, fid) -> list[Check]:
    """Parity vs the teacher on held-out views, and the product's acceptance numbers, unless the
    teacher itself does not separate identities (then they would mean nothing: not run)."""
    out = run_in_batches(session, teacher.inputs)
    if artifact.host_l2_normalize:
        out = _l2(out)
    name = artifact.name
    if teacher.self_judged:
        rules = acceptance.profile_checks(
            teacher.profile, teacher.gallery, out, teacher.labels, teacher.conditions, fid, name
        )
        reason = f"{teacher.separation}; {teacher.eval_description}; source embeddings {teacher.embeddings_status}"
        return [checks.not_applicable("parity vs teacher", reason, name), *rules]
    # Gated on the identities' held-out views (clean, occluded, glare): a student must reproduce its
    # teacher on cards. On images that are no card the product's rule is "no match", checked below;
    # how closely the student follows the teacher there is reported, not gated.
    cards = teacher.labels >= 0
    query_conditions = ", ".join(dict.fromkeys(c for c, known in zip(teacher.conditions, cards) if known))
    minimum = max(target.min_cosine_vs_teacher, teacher.profile.teacher_parity_min)
    parity_row = checks.parity(
        f"parity vs teacher ({teacher.name}, torch)",
        teacher.view_embeddings[cards],
        out[cards],
        minimum,
        fid,
        name,
        detail=f"{int(cards.sum())} held-out views of the identities ({query_conditions}); "
        f"{teacher.eval_description}; threshold: target {target.min_cosine_vs_teacher:g}, "
        f"profile {teacher.profile.name} {teacher.profile.teacher_parity_min:g}",
    )
    unknown = checks.parity(
        "cosine vs teacher on unknown images",
        teacher.view_embeddings[~cards],
        out[~cards],
        0.0,
        fid,
        name,
        detail=f"{int((~cards).sum())} images that are no identity; not gated (their rule is 'no match')",
    )
    unknown = Check(unknown.name, Status.INFO, fid, unknown.value, "not gated", name, unknown.detail, unknown.data)
    if not teacher.meaningful:
        return [
            Check(
                parity_row.name,
                Status.NOT_RUN,
                fid,
                parity_row.value,
                parity_row.threshold,
                name,
                f"not meaningful: the teacher does not separate identities ({teacher.separation})",
                parity_row.data,
            )
        ]
    rules = acceptance.profile_checks(
        teacher.profile, teacher.gallery, out, teacher.labels, teacher.conditions, fid, name
    )
    unseen = [] if teacher.unseen_inputs is None else [_unseen_cards(session, artifact, teacher, fid)]
    return [parity_row, *([unknown] if (~cards).any() else []), *rules, *unseen]


UNSEEN_CARDS = "unseen cards: nearest distance (not gated)"


def _unseen_cards(session, artifact: Artifact, teacher: TeacherReference, fid) -> Check:
    """How far photographs of cards that are in no gallery land from the nearest gallery card. Reported
    only: an unseen card is still a card, so the "no match" rule (which gates unknown images, scenes
    with no card in them) does not apply, and no rule of the product says what it should be."""
    out = run_in_batches(session, teacher.unseen_inputs)
    out = _l2(out)  # the distance is on unit vectors, whatever the artifact's own normalization
    distance = 1 - (out @ teacher.gallery.T).max(axis=1)
    beyond = float(np.mean(distance > acceptance.UNKNOWN_MIN_DISTANCE))
    return Check(
        UNSEEN_CARDS,
        Status.INFO,
        fid,
        round(float(np.median(distance)), 4),
        "not gated",
        artifact.name,
        f"median nearest distance over {len(out)} photographs of cards never in the gallery or in training "
        f"(min {distance.min():.3f}, max {distance.max():.3f}; {beyond:.0%} beyond {acceptance.UNKNOWN_MIN_DISTANCE:g}); "
        "the 'no match' rule gates unknown images (scenes with no card); unseen cards are reported only",
        {"nearest_distance": [round(float(d), 5) for d in distance], "beyond_no_match_distance": beyond},
    )
