"""Conversions and converter steps reused from the cache (zoo.cache) when nothing they depend on changed.

Two levels, both content-addressed:

- a **step** is keyed by its name and place in the chain, the model (spec, checkpoint, ONNX source or
  factory module, by sha256), the target, the input size, the calibration set, the sample inputs, the
  metadata artifacts embed, the sha256 of every artifact written before it, zoo's own files and the
  installed distributions. Its entry holds the files it wrote and the artifacts, checks, records and
  warnings it added, so a re-run with e.g. only a new evaluation set converts nothing and re-validates;
- a **conversion** adds what validation depends on (the teacher, the evaluation set, the acceptance
  profile, the latency runs, this host's CPU): with nothing changed the whole output directory comes
  back, each file re-hashed, and the report says "cached (from …)" with every check's original
  fidelity, value and date — never a fresh claim.

What is not in a key: modules a user's factory imports beyond its own file, and files a toolchain
reads from outside zoo's inputs. After changing those, run with `--no-cache`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import time
from dataclasses import asdict, replace
from functools import lru_cache
from pathlib import Path

from zoo import cache
from zoo.fidelity import Check
from zoo.report import Report


@lru_cache(maxsize=1)
def installed_distributions() -> dict[str, str]:
    """name → version of every installed distribution: an upgraded toolchain is a new key."""
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name and name != "zoo":
            found[name] = dist.version
    return dict(sorted(found.items()))


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """What latency was measured on: a cached latency is only reused on the same kind of CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()} ×{os.cpu_count()}"


def model_files(spec) -> dict[str, str]:
    """sha256 of the files a model is built from: checkpoint, ONNX source, a factory's own module."""
    files = {}
    if spec.checkpoint:
        files["checkpoint"] = cache.file_fingerprint(Path(spec.checkpoint.path))
    if spec.architecture_kind == "onnx":
        files["onnx"] = cache.file_fingerprint(Path(spec.architecture))
    elif spec.architecture_kind == "factory":
        module = spec.architecture.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.origin or not Path(found.origin).is_file():
            raise FileNotFoundError(module)  # not importable: the conversion fails, nothing to key
        files["factory"] = cache.file_fingerprint(Path(found.origin))
    return files


def step_fingerprint(step) -> str:
    """A converter step's implementation: its class, its module file and its `convert`'s bytecode, so
    a plugin step edited in place (or replaced at run time) is a new key even at the same version."""
    cls = type(step)
    parts = [f"{cls.__module__}.{cls.__qualname__}"]
    try:
        parts.append(cache.file_fingerprint(Path(inspect.getsourcefile(cls))))
    except (TypeError, OSError):
        pass
    code = getattr(getattr(cls, "convert", None), "__code__", None)
    if code is not None:
        parts.append(_code_digest(code, hashlib.sha256()).hexdigest())
    return ":".join(parts)


def _code_digest(code, digest):
    """Bytecode, names and constants, nested functions included (marshal's bytes vary with refcounts)."""
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames)).encode())
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            _code_digest(const, digest)
        else:
            digest.update(repr(const).encode())
    return digest


def step_base_key(
    model, target, steps, size, sample_inputs, metadata, calibration_dir, calibration_count, out_dir: Path
) -> dict | None:
    """What every step of this conversion depends on, before the artifacts it reads. None: the cache is
    off, or not keyable (a file that cannot be read is left to the conversion to report)."""
    from zoo.registry import spec_to_manifest
    from zoo.validators.inputs import inputs_sha256

    if cache.cache_root() is None:
        return None
    try:
        calibration = cache.tree_fingerprint(calibration_dir) if calibration_dir else "reference photos"
        return {
            "model": spec_to_manifest(model, out_dir),
            "model_files": model_files(model),
            "target": target.to_dict(),
            "steps": [step_fingerprint(step) for step in steps],
            "input_size": size,
            "sample_inputs": inputs_sha256(sample_inputs),
            "metadata": metadata,
            "calibration": calibration,
            "calibration_count": calibration_count,
            "zoo": cache.zoo_fingerprint(),
            "distributions": installed_distributions(),
        }
    except OSError:
        return None


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def run_step(step, index: int, ctx, upstream, base_key: dict | None, run):
    """`run(step, ctx, upstream)` — or its output from the cache. Returns (artifacts, "cached (from …)" or "")."""
    if base_key is None:  # the cache is off, or the conversion cannot be keyed
        return run(step, ctx, upstream), ""
    try:
        written = {a.name: cache.tree_fingerprint(ctx.workdir / a.name) for a in ctx.artifacts}
    except OSError:
        return run(step, ctx, upstream), ""
    key = cache.cache_key({**base_key, "step": step.name, "index": index, "artifacts": written})
    entry = cache.lookup("steps", key)
    if entry is not None and cache.restore(entry, ctx.workdir):
        from zoo.converters import Artifact

        meta = entry.meta
        ctx.checks += [Check.from_dict(c).carried(f"cached {step.name} step ({entry.label})") for c in meta["checks"]]
        ctx.records.update(meta["records"])
        ctx.warnings += meta["warnings"]
        return [Artifact(**a) for a in meta["artifacts"]], f"cached (from {entry.label})"
    before_tree, before_checks, before_warnings = _tree(ctx.workdir), len(ctx.checks), len(ctx.warnings)
    before_records = copy.deepcopy(ctx.records)
    start = time.perf_counter()
    produced = run(step, ctx, upstream)
    seconds = time.perf_counter() - start
    changed = [name for name, stat in _tree(ctx.workdir).items() if before_tree.get(name) != stat]
    meta = {
        "step": step.name,
        "seconds": seconds,
        "artifacts": [asdict(a) for a in produced],
        "checks": [c.to_dict() for c in ctx.checks[before_checks:]],
        "records": {k: v for k, v in ctx.records.items() if k not in before_records or before_records[k] != v},
        "warnings": ctx.warnings[before_warnings:],
    }
    try:
        json.dumps(meta)  # an entry keeps only what JSON holds exactly; anything else is simply not cached
    except (TypeError, ValueError):
        return produced, ""
    cache.store("steps", key, ctx.workdir, changed, meta)
    return produced, ""


def conversion_key(step_key: dict, **validation) -> str:
    """The key of a whole conversion: its steps' inputs plus what validation depends on."""
    from zoo.runtimes import thread_budget

    fields = {**step_key, **validation, "host_cpu": host_cpu(), "threads": thread_budget(), "level": "conversion"}
    return cache.cache_key(fields)


def restore_conversion(key: str, work: Path) -> tuple[Report, dict] | None:
    """The cached output directory copied into `work`: (report labelled as cached, manifest). None on a miss."""
    from zoo.outputs import read_manifest

    entry = cache.lookup("conversions", key)
    if entry is None or not cache.restore(entry, work):
        return None
    try:
        report = Report.read(work)
        manifest = read_manifest(work)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    origin = f"cached conversion ({entry.label})"
    report = replace(
        report,
        checks=tuple(c.carried(origin) for c in report.checks),
        info={
            **report.info,
            "cache": f"cached (from {entry.label}): nothing was re-run; every check keeps the fidelity and "
            "value it had then (`--no-cache` re-runs them)",
        },
    )
    manifest["cache"] = {
        "entry": f"conversions/{key}",
        "made": entry.meta.get("made"),
        "seconds": entry.meta.get("seconds"),
    }
    return report, manifest


def store_conversion(key: str, work: Path, seconds: float) -> None:
    names = [p.name for p in work.iterdir()]
    cache.store("conversions", key, work, names, {"seconds": seconds})
