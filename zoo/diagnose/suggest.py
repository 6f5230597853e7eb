"""A measured fix for an int8 artifact: re-quantize with the layers that add most error left in float.

Each try is a real conversion of the same model and target with the model's `float_modules` knob set
(ONNX Runtime's nodes_to_exclude, NNCF's ignored scope, 16-bit activations in the Hailo emulation),
validated like any other: its parity vs source and its int8 speedup are what the knob buys.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from zoo.errors import ZooError
from zoo.fidelity import Status
from zoo.progress import QUIET, Progress

TRIES = (1, 3)  # the top contributor alone (then its parent), the top three, then the blocks of the top five
BLOCK_DEPTH = 3  # "backbone.stages.2": the block a contributor sits in


def _module_path(label: str) -> str:
    return label.split("#", 1)[0]  # a module's second call is the same module


def candidate_sets(diagnosis, tries=TRIES) -> list[list[str]]:
    # a row's hidden modules (outputs the artifact does not hold) come first: the error it adds is theirs or its own
    ranked = list(
        dict.fromkeys(
            _module_path(m) for i in diagnosis.top for m in (*diagnosis.layers[i].hidden, diagnosis.layers[i].module)
        )
    )
    sets = []
    for n in tries:
        chosen = ranked[:n]
        if chosen and chosen not in sets:
            sets.append(chosen)
        if n == 1 and chosen and chosen[0].count("."):  # the module holding the worst layer, whole
            parent = [chosen[0].rsplit(".", 1)[0]]
            if parent not in sets and parent != ["backbone"]:
                sets.append(parent)
    # error spread over many layers: whole blocks in float (what a user would try next)
    blocks = list(dict.fromkeys(".".join(m.split(".")[:BLOCK_DEPTH]) for m in ranked[:5]))
    if blocks and blocks not in sets and blocks != ranked[: len(blocks)]:
        sets.append(blocks)
    return sets


def knob(model: str, target: str, modules: list[str]) -> str:
    listed = ", ".join(f'"{m}"' for m in modules)
    return f'[models.{model}] float_modules = {{ "{target}" = [{listed}] }}'


def suggestions(diagnosis, manifest: dict, out_dir: Path, model, teacher, target, progress: Progress = QUIET) -> list:
    """The measured tries, each {modules, knob, parity, speedup, fidelity, summary}; [] for a target
    whose steps cannot leave modules in float (the reason is one entry)."""
    from zoo.converters import get_converter, keeps_float_modules

    if not any(keeps_float_modules(get_converter(s, target.name)) for s in target.chain):
        return [
            {
                "modules": [],
                "knob": "",
                "fidelity": "not run",
                "summary": f"target {target.name}'s steps ({', '.join(target.chain)}) cannot leave modules in float; "
                "no re-quantization was tried",
            }
        ]
    from zoo.report import Report

    before = _figures(Report.read(out_dir), diagnosis.artifact)
    tried: dict[tuple[str, ...], dict] = {}

    def attempt(modules: list[str]) -> dict:
        key = tuple(modules)
        if key not in tried:
            with progress.step(f"re-quantizing {model.name} → {target.name} with {', '.join(modules)} in float"):
                tried[key] = _try(modules, diagnosis, model, teacher, target, before, manifest, out_dir)
        return tried[key]

    for modules in candidate_sets(diagnosis):
        if _passes(attempt(modules)):
            return list(tried.values())
    bisect_blocks(diagnosis, attempt)
    return list(tried.values())


def _passes(entry: dict) -> bool:
    return bool(entry.get("after", {}).get("passed"))


MAX_BLOCKS = 24  # the granularity of the search: the deepest module level with at most this many blocks
MAX_CULPRITS = 4


def blocks_of(diagnosis) -> list[str]:
    """The model's blocks in execution order, at the deepest level of the paired modules' paths that has
    at most MAX_BLOCKS of them (`backbone.blocks.3.0` for a MobileNetV4, `backbone.blocks.11` for a ViT)."""
    paths = [_module_path(r.module) for r in diagnosis.layers]
    best: list[str] = []
    for depth in range(2, 8):
        units = list(dict.fromkeys(".".join(p.split(".")[:depth]) for p in paths))
        if len(units) > MAX_BLOCKS:
            break
        best = units
    return best


def bisect_blocks(diagnosis, attempt) -> list[str]:
    """When no quick try passes: which blocks, in float, make the artifact pass? All of them first (if
    that fails too, leaving blocks in float cannot fix it); then the shortest prefix of blocks that
    passes — its last block is a culprit — kept in float while the blocks before it are searched the same
    way, up to MAX_CULPRITS. Every step is a real conversion (`attempt`); returns the culprits found."""
    units = blocks_of(diagnosis)
    if not units or not _passes(attempt(units)):
        return []
    culprits: list[str] = []
    end = len(units)
    while len(culprits) < MAX_CULPRITS and end > 0:
        if culprits and _passes(attempt(sorted_by(units, culprits))):
            break
        lo, hi = 0, end  # units[:hi] + culprits passes (hi = end did), units[:lo] + culprits does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _passes(attempt(sorted_by(units, culprits + units[:mid]))):
                hi = mid
            else:
                lo = mid
        culprits.append(units[hi - 1])
        end = hi - 1
    if culprits:
        attempt(sorted_by(units, culprits))
    return culprits


def best_fix(entries: list[dict]) -> dict | None:
    """The passing try that keeps the fewest modules in float (then the best parity), or None."""
    passing = [e for e in entries if _passes(e)]
    if not passing:
        return None
    return min(passing, key=lambda e: (len(e["modules"]), -(e["after"]["parity"] or 0)))


def sorted_by(units: list[str], chosen: list[str]) -> list[str]:
    """`chosen` in the blocks' execution order (one knob line reads in model order)."""
    order = {u: i for i, u in enumerate(units)}
    return sorted(dict.fromkeys(chosen), key=lambda u: order.get(u, len(order)))


def _figures(report, artifact: str) -> dict:
    parity = next((c for c in report.checks if c.artifact == artifact and c.name.startswith("parity vs source")), None)
    speed = next((c for c in report.checks if c.name.startswith("int8 speedup")), None)
    return {
        "parity": parity.value if parity else None,
        "passed": parity.status is Status.PASS if parity else None,
        "speedup": speed.value if speed else None,
    }


def _try(modules, diagnosis, model, teacher, target, before: dict, manifest: dict, out_dir: Path) -> dict:
    from zoo.pipeline import convert
    from zoo.registry import Registry

    spec = dataclasses.replace(model, float_modules={**model.float_modules, target.name: modules})
    registry = Registry([spec, *([teacher] if teacher else [])])
    entry = {"modules": modules, "knob": knob(model.name, target.name, modules), "before": before}
    eval_path = _recorded_eval(manifest, out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-diagnose-") as tmp:
            outcome = convert(model.name, target.name, out_root=Path(tmp), registry=registry, eval_path=eval_path)
            after = _figures(outcome.report, diagnosis.artifact)
    except ZooError as exc:
        entry.update(fidelity="not run", summary=f"the re-quantization failed: {exc}")
        return entry
    entry.update(after=after, fidelity=str(diagnosis.fidelity))
    entry["summary"] = (
        f"{', '.join(modules)} in float: parity vs source {_shown(before['parity'])} → {_shown(after['parity'])}"
        f" ({'passes' if after['passed'] else 'still fails'}), int8 speedup {_shown(before['speedup'])}× → "
        f"{_shown(after['speedup'])}×"
    )
    return entry


def _recorded_eval(manifest: dict, out_dir: Path) -> Path | None:
    source = (manifest.get("eval_set") or {}).get("source", "")
    return None if not source or source.startswith("built-in") else Path(out_dir) / source


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—"
