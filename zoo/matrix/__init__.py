"""`zoo matrix`: every model × target, from existing output directories or converted on the spot,
summed up in reports CI can read (zoo.matrix.reports: JSON, Markdown, JUnit XML; zoo.matrix.html:
a self-contained page with plots).

A cell is one model × target: `pass` (its report's verdict; checks not run stay counted), `fail`
(a check failed), `error` (the conversion itself failed: counted as a failure, fail closed) or
`missing` (no output directory, or the target cannot be built here: nothing was checked).

`--fail-on` chooses what fails the job: `fail` (a failed check or a conversion error), `not-run`
(also any check not run and any missing cell), or `never` (report only).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import UsageError, ZooError
from zoo.fidelity import Status
from zoo.progress import QUIET, Progress
from zoo.report import Report

FAIL_ON = ("fail", "not-run", "never")
STATES = ("pass", "fail", "error", "missing")


@dataclass(frozen=True)
class Cell:
    model: str
    target: str
    state: str  # pass | fail | error | missing
    report: Report | None = None
    detail: str = ""  # why missing, or the conversion error
    out_dir: str = ""
    budget_ms: float | None = None  # the target's latency budget, for the plots
    budget_percentile: int | None = None
    budget_on: str = ""  # host | device
    converted: bool = False  # converted by this run (else read from an existing output directory)

    @property
    def counts(self) -> dict[str, int]:
        return self.report.counts if self.report else {s.value: 0 for s in Status}

    @property
    def not_run(self) -> int:
        return self.counts[Status.NOT_RUN.value]

    @property
    def label(self) -> str:
        if self.state == "pass":
            return f"PASS ({self.not_run} not run)" if self.not_run else "PASS"
        if self.state == "fail":
            return f"FAIL ({self.counts['fail']} check(s))"
        return {"error": "ERROR", "missing": "NOT RUN"}[self.state]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "target": self.target,
            "state": self.state,
            "label": self.label,
            "detail": self.detail,
            "output": self.out_dir,
            "converted": self.converted,
            "latency_budget": {"ms": self.budget_ms, "percentile": self.budget_percentile, "on": self.budget_on},
            "report": self.report.to_dict() if self.report else None,
        }


@dataclass(frozen=True)
class Matrix:
    models: tuple[str, ...]
    targets: tuple[str, ...]
    cells: tuple[Cell, ...]

    def cell(self, model: str, target: str) -> Cell | None:
        return next((c for c in self.cells if c.model == model and c.target == target), None)

    @property
    def totals(self) -> dict:
        cells = {s: sum(c.state == s for c in self.cells) for s in STATES}
        checks = {s.value: sum(c.counts[s.value] for c in self.cells) for s in Status}
        return {"cells": cells, "checks": checks}

    def should_fail(self, fail_on: str) -> bool:
        if fail_on not in FAIL_ON:
            raise UsageError(f"--fail-on must be one of {', '.join(FAIL_ON)}, not {fail_on!r}")
        if fail_on == "never":
            return False
        t = self.totals
        failed = t["cells"]["fail"] + t["cells"]["error"] > 0
        if fail_on == "fail":
            return failed
        return failed or t["cells"]["missing"] > 0 or t["checks"][Status.NOT_RUN.value] > 0

    def to_dict(self) -> dict:
        return {
            "schema": "zoo.matrix",
            "schema_version": 1,
            "models": list(self.models),
            "targets": list(self.targets),
            "totals": self.totals,
            "cells": [c.to_dict() for c in self.cells],
        }


def _budget(manifest: dict | None, target_name: str) -> tuple[float | None, int | None, str]:
    target = (manifest or {}).get("target")
    if not target:
        try:
            from zoo.targets import get_target

            target = get_target(target_name).to_dict()
        except ZooError:
            return None, None, ""
    return target.get("latency_budget_ms"), target.get("latency_percentile"), target.get("latency_on", "")


def read_cell(out_dir: Path, model: str, target: str, converted: bool = False) -> Cell:
    """A cell from an output directory's report.json (and its manifest, for the latency budget)."""
    try:
        report = Report.from_dict(json.loads((out_dir / "report.json").read_text()))
    except (OSError, ValueError, KeyError) as exc:
        return Cell(model, target, "error", detail=f"{out_dir}/report.json unreadable: {exc}", out_dir=str(out_dir))
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = None
    budget, pct, on = _budget(manifest, target)
    state = "fail" if report.failed else ("missing" if not report.validated else "pass")
    detail = "converted with --no-validate: nothing was checked" if not report.validated else ""
    return Cell(model, target, state, report, detail, str(out_dir), budget, pct, on, converted)


def _output_dirs(outputs: Path) -> list[tuple[str, str]]:
    """(model, target) of every `<outputs>/<model>/<target>/report.json`. Hidden entries are left
    out: they are zoo's staging, swapped-out and lock files (`.server.old-123`), not outputs."""
    found = []
    for report in outputs.glob("*/*/report.json"):
        model, target = report.parent.parent.name, report.parent.name
        if not model.startswith(".") and not target.startswith("."):
            found.append((model, target))
    return found


def collect(
    *,
    models: Sequence[str] = (),
    targets: Sequence[str] = (),
    tier: str | None = None,
    outputs: Path = Path("out"),
    convert: bool = False,
    latency_runs: int = 30,
    registry_paths: Sequence[Path] = (),
    eval_path: Path | None = None,
    progress: Progress = QUIET,
) -> Matrix:
    """Every model × target: the existing output directory's report, else (with `convert`) a fresh
    conversion through zoo.pipeline.convert, else a `missing` cell."""
    from zoo.converters import missing_steps
    from zoo.registry import load_registry
    from zoo.targets import load_targets

    outputs = Path(outputs)
    registry = load_registry(registry_paths)
    all_targets = load_targets(registry.files)
    models = list(models)
    if tier:
        models += [s.name for s in registry if s.tags.get("tier") == tier and s.name not in models]
        if not models:
            raise UsageError(f"no registered model has tier {tier!r}")
    targets = list(targets)
    if not models:
        if convert:
            raise UsageError("--convert needs the models to convert", hint="pass --models NAME … or --tier tiny")
        models = sorted({model for model, _ in _output_dirs(outputs)})
    if not targets:
        if convert:
            targets = [t.name for t in all_targets.values() if not missing_steps(t)]
        else:
            targets = sorted({target for _, target in _output_dirs(outputs)})
    if not models or not targets:
        raise UsageError(
            f"no output directories under {outputs}", hint="run `zoo convert` first, or pass --convert with --models"
        )
    if eval_path is not None:
        from zoo.evalset import load_evaluation_set

        load_evaluation_set(eval_path)  # a bad set fails before any cell is converted
    for m in models:
        registry.get(m)  # an unknown name fails here, with a did-you-mean hint
    for t in targets:
        if t not in all_targets:
            from zoo.errors import unknown_name

            raise unknown_name("target", t, all_targets)

    cells = []
    for model in models:
        for target in targets:
            out_dir = outputs / model / target
            if (out_dir / "report.json").is_file():
                cells.append(read_cell(out_dir, model, target))
                continue
            if not convert:
                cells.append(
                    Cell(
                        model,
                        target,
                        "missing",
                        detail=f"no output directory {out_dir} (run `zoo convert --model {model} --target {target}` "
                        "or pass --convert)",
                        out_dir=str(out_dir),
                    )
                )
                continue
            missing = missing_steps(all_targets[target])
            if missing:
                cells.append(
                    Cell(model, target, "missing", detail=f"target not built here: needs step(s) {', '.join(missing)}")
                )
                continue
            cells.append(_convert_cell(model, target, outputs, registry, latency_runs, progress, eval_path))
    return Matrix(tuple(models), tuple(targets), tuple(cells))


def _convert_cell(model, target, outputs, registry, latency_runs, progress, eval_path=None) -> Cell:
    from zoo.pipeline import convert

    try:
        with progress.step(f"converting {model} for {target}"):
            outcome = convert(
                model,
                target,
                out_root=outputs,
                registry=registry,
                latency_runs=latency_runs,
                eval_path=eval_path,
                progress=progress,
            )
    except ZooError as exc:
        detail = f"{type(exc).__name__}: {exc}" + (f" (hint: {exc.hint})" if exc.hint else "")
        return Cell(model, target, "error", detail=detail)
    except Exception as exc:  # a crash in one cell must not hide the others; it counts as a failure
        return Cell(model, target, "error", detail=f"unexpected {type(exc).__name__}: {exc}")
    return read_cell(outcome.out_dir, model, target, converted=True)


def write_reports(matrix: Matrix, report_dir: Path) -> dict[str, Path]:
    """matrix.json, matrix.md, junit.xml and matrix.html in `report_dir`."""
    from zoo.matrix.html import to_html
    from zoo.matrix.reports import to_json, to_junit, to_markdown
    from zoo.outputs import write_text_atomic

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": report_dir / "matrix.json",
        "markdown": report_dir / "matrix.md",
        "junit": report_dir / "junit.xml",
        "html": report_dir / "matrix.html",
    }
    write_text_atomic(paths["json"], to_json(matrix))
    write_text_atomic(paths["markdown"], to_markdown(matrix))
    write_text_atomic(paths["junit"], to_junit(matrix))
    write_text_atomic(paths["html"], to_html(matrix))
    return paths
