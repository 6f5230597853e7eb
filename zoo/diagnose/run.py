"""Diagnoses of an output folder (`zoo diagnose`) and of a conversion's failed parity rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.diagnose import DEFAULT_INPUTS, Diagnosis, NotExposed, diagnose_session, fp32_twin, worst_inputs
from zoo.errors import UsageError
from zoo.fidelity import Check, Fidelity, Status
from zoo.progress import QUIET, Progress

SOURCE_PARITY = "parity vs source"
FILES = ("diagnosis.json", "diagnosis.md", "diagnosis.svg")


def parity_rows(checks) -> dict[str, Check]:
    """{artifact: its parity-vs-source row} of a report's checks."""
    return {c.artifact: c for c in checks if c.name.startswith(SOURCE_PARITY)}


def diagnose_failures(model, target, out_dir: Path, artifacts, refs, checks, torch_model, progress=QUIET) -> tuple:
    """(diagnoses, rows) for the artifacts whose parity vs source failed: what `zoo convert` and
    `zoo validate` put in the report. A diagnosis that cannot run is a 'not run' row, never an error
    that hides the failed check it was meant to explain."""
    failed = {a: c for a, c in parity_rows(checks).items() if c.status is Status.FAIL}
    if not failed:
        return (), []
    if torch_model is None:
        return (), [
            _not_run(a, "the source is an ONNX file: the diagnosis pairs the artifact with a torch model's modules")
            for a in failed
        ]
    from zoo.validators import runtime_for

    diagnoses, rows = [], []
    sessions = _sessions(out_dir, artifacts, target)
    for artifact in artifacts:
        if artifact.name not in failed or sessions.get(artifact.name) is None:
            continue
        runtime = runtime_for(artifact, target)
        pick = worst_inputs(failed[artifact.name].data.get("per_sample_cosine"), len(refs.inputs), DEFAULT_INPUTS)
        try:
            with progress.step(f"diagnosing {artifact.name} layer by layer"):
                d = _diagnose(
                    artifact.name, sessions, runtime, torch_model, refs.inputs, list(refs.labels), pick, model
                )
        except NotExposed as exc:
            rows.append(_not_run(artifact.name, f"{exc}; the diagnosis of the artifact it was made from applies"))
            continue
        except Exception as exc:  # the failed parity row stands; this only says why it is not explained
            rows.append(_not_run(artifact.name, f"{type(exc).__name__}: {exc}"))
            continue
        diagnoses.append(d.to_dict())
        rows.append(_row(d))
    return tuple(diagnoses), rows


def _sessions(out_dir: Path, artifacts, target) -> dict:
    """{artifact name: an open session, or None where its runtime cannot open it here}."""
    from zoo.validators import runtime_for

    sessions = {}
    for a in artifacts:
        runtime = runtime_for(a, target) if a.runnable else None
        if runtime is None or a.format not in runtime.formats or runtime.unavailable_reason():
            continue
        try:
            sessions[a.name] = runtime.open(out_dir / a.name)
        except Exception:
            sessions[a.name] = None
    return sessions


def _diagnose(name, sessions, runtime, torch_model, x, labels, pick, model) -> Diagnosis:
    twin_name = fp32_twin(name, sessions)
    twin = (twin_name, sessions[twin_name]) if twin_name else None
    chosen = x[pick]
    if runtime.takes_uint8_pixels:  # what the artifact receives, for the source too
        from zoo.runtimes.hailo import snap_to_pixels

        chosen = snap_to_pixels(chosen, model.mean, model.std)
    return diagnose_session(name, sessions[name], runtime, torch_model, chosen, [labels[i] for i in pick], twin)


def _row(d: Diagnosis) -> Check:
    start = d.layers[d.start] if d.start is not None else None
    return Check(
        "divergence starts at (zoo diagnose)",
        Status.INFO,
        d.fidelity,
        value=d.start_module or "no layer adds error",
        threshold="not gated",
        artifact=d.artifact,
        detail=(
            f"{len(d.layers)} layers paired on {d.paired_on}; "
            + (
                f"cosine {start.cosine_min:.4f} / relative error {start.relative_error:.4f} there; "
                f"top contributors: {', '.join(d.layers[i].module for i in d.top[:3])}"
                if start
                else "no layer adds error"
            )
            + (f"; {d.unmapped}" if d.unmapped else "")
        ),
    )


def _not_run(artifact: str, why: str) -> Check:
    return Check(
        "divergence starts at (zoo diagnose)",
        Status.NOT_RUN,
        Fidelity.NOT_RUN,
        threshold="not gated",
        artifact=artifact,
        detail=f"the per-layer diagnosis could not run: {why}",
    )


def diagnose_dir(
    out_dir: Path,
    *,
    artifact: str | None = None,
    inputs: int = DEFAULT_INPUTS,
    suggest: bool = False,
    progress: Progress = QUIET,
) -> tuple[list[Diagnosis], dict]:
    """Diagnose an output folder's artifacts: `artifact`, else those whose parity vs source failed,
    else (the output passes) the one whose parity was lowest. Writes diagnosis.json/.md/.svg beside
    the report. Returns (diagnoses, {artifact: passed parity?})."""
    from zoo.models import build_model
    from zoo.outputs import output_lock, read_manifest
    from zoo.pipeline import artifacts_of, judging_of
    from zoo.report import Report
    from zoo.validators import runtime_for

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if inputs < 1:
        raise UsageError(f"--inputs must be at least 1, not {inputs}")
    model, teacher, target, artifacts, size = artifacts_of(manifest, out_dir)
    if model.architecture_kind == "onnx":
        raise UsageError(
            f"{model.name}'s source is an ONNX file: zoo diagnose pairs the artifact with a torch model's modules"
        )
    report_path = out_dir / "report.json"
    checks = Report.read(out_dir).checks if report_path.is_file() else ()
    rows = parity_rows(checks)
    runnable = [a for a in artifacts if a.runnable]
    names = [a.name for a in runnable]
    if artifact is not None and artifact not in names:
        from difflib import get_close_matches

        near = get_close_matches(artifact, names, n=1)
        raise UsageError(
            f"{out_dir} has no runnable artifact {artifact!r}",
            hint=(f"did you mean {near[0]!r}? " if near else "") + f"artifacts: {', '.join(names)}",
        )
    with output_lock(out_dir, say=progress.say):
        sessions = _sessions(out_dir, runnable, target)
        chosen = _choose(artifact, rows, sessions)
        if not chosen:
            raise UsageError(f"no artifact of {out_dir} can be run here to diagnose", hint="zoo validate says why")
        x, labels, _ = judging_of(manifest, out_dir, model, teacher, size)
        with progress.step(f"building {model.name} source model"):
            torch_model = build_model(model)
        diagnoses = []
        for name in chosen:
            a = next(a for a in runnable if a.name == name)
            row = rows.get(name)
            pick = worst_inputs(row.data.get("per_sample_cosine") if row else None, len(x), inputs)
            try:
                with progress.step(f"diagnosing {name} layer by layer on {len(pick)} inputs"):
                    d = _diagnose(name, sessions, runtime_for(a, target), torch_model, x, labels, pick, model)
            except NotExposed as exc:
                if artifact is not None:
                    raise UsageError(str(exc), hint="diagnose the artifact it was made from (--artifact)") from None
                progress.say(f"{name}: {exc}; skipped")
                continue
            if suggest:
                from zoo.diagnose.suggest import suggestions

                d.suggestions = suggestions(d, manifest, out_dir, model, teacher, target, progress)
            diagnoses.append(d)
        passed = {n: (rows[n].status is not Status.FAIL) if n in rows else None for n in chosen}
        _write(out_dir, diagnoses, passed)
    return diagnoses, passed


def _choose(artifact, rows, sessions) -> list[str]:
    if artifact is not None:
        return [artifact] if sessions.get(artifact) is not None else []
    failed = [n for n, c in rows.items() if c.status is Status.FAIL and sessions.get(n) is not None]
    if failed:
        return failed
    scored = [(c.value, n) for n, c in rows.items() if isinstance(c.value, float) and sessions.get(n) is not None]
    if scored:
        return [min(scored)[1]]
    return [n for n, s in sessions.items() if s is not None][:1]


def parity_said(passed: bool | None) -> str:
    """How an artifact's parity-vs-source row ended, in words (None: it has none)."""
    return {True: "parity vs source passed", False: "parity vs source FAILED", None: "no parity row"}[passed]


def _write(out_dir: Path, diagnoses: list[Diagnosis], passed: dict) -> None:
    from zoo.outputs import write_text_atomic

    body = {"diagnoses": [d.to_dict() for d in diagnoses], "parity_passed": passed}
    write_text_atomic(out_dir / "diagnosis.json", json.dumps(body, indent=2) + "\n")
    text = ["# zoo diagnose", ""]
    for d in diagnoses:
        text += [f"{d.artifact}: {parity_said(passed.get(d.artifact))}", "", d.to_markdown(every_layer=True)]
    write_text_atomic(out_dir / "diagnosis.md", "\n".join(text))
    write_text_atomic(out_dir / "diagnosis.svg", error_svg(diagnoses))


def error_svg(diagnoses: list[Diagnosis]) -> str:
    """Relative error by layer (log scale), one line per artifact, the starting layer marked."""
    width, height, left, top, bottom = 720, 260, 60, 20, 40
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    errors = [r.relative_error for d in diagnoses for r in d.layers if r.relative_error > 0]
    lo = np.log10(min(errors)) if errors else -6.0
    hi = np.log10(max(errors)) if errors else 0.0
    hi = hi if hi > lo else lo + 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
        'font-size="11">',
        f'<text x="{left}" y="13">relative error vs the source model, layer by layer (log scale)</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#999"/>',
    ]
    for k, d in enumerate(diagnoses):
        n = max(len(d.layers) - 1, 1)
        points = []
        for i, r in enumerate(d.layers):
            x = left + (width - left - 10) * i / n
            e = np.log10(max(r.relative_error, 10**lo))
            y = height - bottom - (height - top - bottom) * (e - lo) / (hi - lo)
            points.append((x, y))
        colour = colours[k % len(colours)]
        if points:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        if d.start is not None:
            x, y = points[d.start]
            label = d.layers[d.start].module.replace("&", "&amp;").replace("<", "&lt;")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
            parts.append(f'<text x="{x + 6:.1f}" y="{y - 6:.1f}" fill="{colour}">{label}</text>')
        parts.append(f'<text x="{left}" y="{height - 8 - 12 * k}" fill="{colour}">{d.artifact}</text>')
    parts.append(f'<text x="4" y="{top + 8}">{10**hi:.0e}</text>')
    parts.append(f'<text x="4" y="{height - bottom}">{10**lo:.0e}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
