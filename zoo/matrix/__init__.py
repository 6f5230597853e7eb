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
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    seconds: float | None = None  # this run's wall time for the cell (a cached cell: the time to restore it)
    cached: str = ""  # "cached (from …)" when the conversion came from the cache

    @classmethod
    def from_dict(cls, d: dict) -> Cell:
        budget = d.get("latency_budget") or {}
        return cls(
            d["model"],
            d["target"],
            d["state"],
            Report.from_dict(d["report"]) if d.get("report") else None,
            d.get("detail", ""),
            d.get("output", ""),
            budget.get("ms"),
            budget.get("percentile"),
            budget.get("on", ""),
            d.get("converted", False),
            d.get("seconds"),
            d.get("cached", ""),
        )

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
            "seconds": self.seconds,
            "cached": self.cached,
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

    @classmethod
    def from_dict(cls, d: dict) -> Matrix:
        if d.get("schema") != "zoo.matrix":
            raise UsageError(
                "not a zoo matrix report (schema zoo.matrix)", hint="pass the matrix.json `zoo matrix` wrote"
            )
        return cls(tuple(d["models"]), tuple(d["targets"]), tuple(Cell.from_dict(c) for c in d["cells"]))

    def slowest(self, n: int = 5) -> list[Cell]:
        timed = [c for c in self.cells if c.seconds is not None]
        return sorted(timed, key=lambda c: -c.seconds)[:n]

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
        report = Report.read(out_dir)
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


def _selection(models, targets, tier, outputs, convert, registry_paths):
    """(all targets, models, targets) the user asked for, every name checked."""
    from zoo.converters import missing_steps
    from zoo.registry import load_registry
    from zoo.targets import load_targets

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
    for m in models:
        registry.get(m)  # an unknown name fails here, with a did-you-mean hint
    for t in targets:
        if t not in all_targets:
            from zoo.errors import unknown_name

            raise unknown_name("target", t, all_targets)
    return all_targets, models, targets


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'2/4' → (2, 4): the second of four shards."""
    if not text:
        return None
    index, _, count = str(text).partition("/")
    if not (index.isdigit() and count.isdigit()) or not 1 <= int(index) <= int(count):
        raise UsageError(f"--shard must be K/N with 1 ≤ K ≤ N, not {text!r}", hint="e.g. --shard 1/2")
    return int(index), int(count)


def shard_cells(cells: list[tuple[str, str]], index: int, count: int) -> list[tuple[str, str]]:
    """Shard `index` of `count`, dealt along diagonals (cell i goes to (i + i // count) mod count), so
    each shard gets a share of every model and of every target, not one target's column."""
    return [cell for i, cell in enumerate(cells) if (i + i // count) % count == index - 1]


def plan(
    *,
    shards: int,
    models: Sequence[str] = (),
    targets: Sequence[str] = (),
    tier: str | None = None,
    registry_paths: Sequence[Path] = (),
) -> dict:
    """The job matrix GitHub Actions' `strategy.matrix` reads (`fromJSON`): one entry per shard, with
    the `--shard` argument its job passes and the cells it will convert."""
    if shards < 1:
        raise UsageError(f"--shards must be at least 1, not {shards}")
    _, models, targets = _selection(models, targets, tier, Path("out"), True, registry_paths)
    cells = [(m, t) for m in models for t in targets]
    include = []
    for k in range(1, shards + 1):
        mine = shard_cells(cells, k, shards)
        if mine:
            include.append(
                {"shard": f"{k}/{shards}", "name": f"shard-{k}-of-{shards}", "cells": [f"{m}/{t}" for m, t in mine]}
            )
    return {"include": include}


def merge(matrices: Sequence[Matrix]) -> Matrix:
    """Shards' matrices as one: models and targets in first-seen order, every cell once."""
    models: list[str] = []
    targets: list[str] = []
    cells: dict[tuple[str, str], Cell] = {}
    for matrix in matrices:
        models += [m for m in matrix.models if m not in models]
        targets += [t for t in matrix.targets if t not in targets]
        for cell in matrix.cells:
            key = (cell.model, cell.target)
            if key in cells:
                raise UsageError(
                    f"cell {cell.model} → {cell.target} is in more than one shard report",
                    hint="merge the reports of one `zoo matrix plan`, each shard once",
                )
            cells[key] = cell
    order = {(m, t): i for i, (m, t) in enumerate((m, t) for m in models for t in targets)}
    return Matrix(
        tuple(models), tuple(targets), tuple(sorted(cells.values(), key=lambda c: order[(c.model, c.target)]))
    )


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
    jobs: int = 1,
    executor: str = "",
    address: str | None = None,
    shard: tuple[int, int] | None = None,
    progress: Progress = QUIET,
) -> Matrix:
    """Every model × target (or one shard of them): with `convert`, each cell converted and validated
    through zoo.pipeline.convert — unchanged ones come back from the cache in seconds — on the
    executor asked for (zoo.matrix.executors); without it, the existing output directory's report,
    else a `missing` cell."""
    from zoo.converters import missing_steps
    from zoo.matrix.executors import EXECUTORS, RUNNERS, CellJob, threads_per_cell
    from zoo.runtimes import THREADS_ENV

    outputs = Path(outputs)
    executor = executor or ("process" if jobs > 1 else "local")
    if executor not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, not {executor!r}")
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    all_targets, models, targets = _selection(models, targets, tier, outputs, convert, registry_paths)
    if eval_path is not None:
        from zoo.evalset import load_evaluation_set

        load_evaluation_set(eval_path)  # a bad set fails before any cell is converted
    wanted = [(m, t) for m in models for t in targets]
    if shard:
        wanted = shard_cells(wanted, *shard)

    cells: dict[tuple[str, str], Cell] = {}
    to_convert = []
    threads = threads_per_cell(jobs)
    env = tuple((k, v) for k, v in os.environ.items() if k.startswith("ZOO_") and k != THREADS_ENV)
    for model, target in wanted:
        out_dir = outputs / model / target
        if convert:
            missing = missing_steps(all_targets[target])
            if missing:
                why = f"target not built here: needs step(s) {', '.join(missing)}"
                cells[(model, target)] = Cell(model, target, "missing", detail=why)
            else:
                paths = tuple(str(Path(p).resolve()) for p in registry_paths)
                job = CellJob(model, target, str(outputs.resolve()), paths, latency_runs, _str(eval_path), threads, env)
                to_convert.append(job)
        elif (out_dir / "report.json").is_file():
            cells[(model, target)] = read_cell(out_dir, model, target)
        else:
            cells[(model, target)] = Cell(
                model,
                target,
                "missing",
                detail=f"no output directory {out_dir} (run `zoo convert --model {model} --target {target}` "
                "or pass --convert)",
                out_dir=str(out_dir),
            )
    if to_convert and executor != "local":
        to_convert = _restore_cached(to_convert, cells, outputs, registry_paths, eval_path, progress)
    if to_convert:
        progress.say(
            f"converting {len(to_convert)} cell(s) on the {executor} executor"
            + (f", {jobs} at a time, {threads} thread(s) each" if executor != "local" else "")
        )
    for done, (job, cell) in enumerate(RUNNERS[executor](to_convert, jobs, address), 1):
        cell = replace(cell, out_dir=_relative_out(cell.out_dir, outputs))
        cells[(job.model, job.target)] = cell
        how = f"{cell.seconds:.1f} s" + (", cached" if cell.cached else "") if cell.seconds is not None else ""
        progress.say(f"[{done}/{len(to_convert)}] {job.model} → {job.target}: {cell.label} ({how})")
    kept_models = [m for m in models if any(k[0] == m for k in cells)]
    kept_targets = [t for t in targets if any(k[1] == t for k in cells)]
    return Matrix(tuple(kept_models), tuple(kept_targets), tuple(cells[k] for k in wanted))


def _restore_cached(jobs, cells, outputs, registry_paths, eval_path, progress) -> list:
    """Cells the cache holds are restored here, in this process, before any worker is started (a
    worker costs seconds to spawn and import); the jobs left are the ones to convert."""
    from zoo.cache import cache_root
    from zoo.matrix.executors import thread_budget_of
    from zoo.registry import load_registry

    if cache_root() is None:  # the cache is off: every cell is the workers'
        return jobs

    registry = load_registry([Path(p) for p in registry_paths])
    left = []
    for job in jobs:
        start = time.perf_counter()
        with thread_budget_of(job.threads):  # part of the key: the worker would run with these threads
            cell = _convert_cell(job.model, job.target, outputs, registry, job.latency_runs, QUIET, eval_path, True)
        if cell is None or cell.state == "error":  # not cached; an error is the worker's to report
            left.append(job)
            continue
        cell = replace(
            cell, seconds=round(time.perf_counter() - start, 3), out_dir=_relative_out(cell.out_dir, outputs)
        )
        cells[(job.model, job.target)] = cell
        progress.say(f"{job.model} → {job.target}: {cell.label} (from the cache, {cell.seconds:.1f} s)")
    return left


def _str(path: Path | None) -> str | None:
    return str(Path(path).resolve()) if path is not None else None


def _relative_out(out_dir: str, outputs: Path) -> str:
    """A worker reports absolute paths; the matrix names outputs as the user passed --outputs."""
    if not out_dir:
        return out_dir
    try:
        return str(outputs / Path(out_dir).relative_to(outputs.resolve()))
    except ValueError:
        return out_dir


def _convert_cell(model, target, outputs, registry, latency_runs, progress, eval_path=None, cached_only=False):
    """The cell converted and validated; with `cached_only`, the cached conversion or None."""
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
                cached_only=cached_only,
            )
    except ZooError as exc:
        detail = f"{type(exc).__name__}: {exc}" + (f" (hint: {exc.hint})" if exc.hint else "")
        return Cell(model, target, "error", detail=detail)
    except Exception as exc:  # a crash in one cell must not hide the others; it counts as a failure
        return Cell(model, target, "error", detail=f"unexpected {type(exc).__name__}: {exc}")
    if outcome is None:
        return None
    cell = read_cell(outcome.out_dir, model, target, converted=True)
    return replace(cell, cached=outcome.report.info.get("cache", ""))


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
