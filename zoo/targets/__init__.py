"""Targets are data: one TOML file per target in this folder (add a file to add a target).

A target names its converter chain (steps in `zoo.converters`), the runtime that validates its
artifacts (`zoo.runtimes`), its precision and the thresholds its artifacts must meet.

A team adds its own targets without forking: `[targets.NAME]` tables in a registry file (the files
of `--registry` / `$ZOO_REGISTRY` / the `zoo.registries` entry points, beside `[models.NAME]`), or
TOML files of such tables returned by a `zoo.targets` entry point. Replacing a built-in target needs
`override = true` on the table.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from zoo.errors import UsageError, unknown_name

ENTRY_POINT_GROUP = "zoo.targets"  # callables returning TOML files of [targets.NAME] tables
PRECISIONS = ("fp32", "fp16", "int8")
LAYOUTS = ("NCHW", "NHWC")
LATENCY_WHERE = ("host", "device")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    chain: tuple[str, ...]  # converter step names, applied in order
    runtime: str  # validation runtime name
    precision: str = "fp32"
    input_size: int | None = None  # overrides the model's when set
    dynamic_batch: bool = False
    opset: int = 18
    min_cosine_vs_source: float = 0.9999
    min_cosine_vs_teacher: float = 0.95
    latency_budget_ms: float | None = None
    latency_percentile: int = 90
    latency_on: str = "host"  # where the budget applies; a host figure cannot prove a device budget
    device: str = ""  # the device the budget is for, in words
    artifact_name: str = "model"
    input_layout: str = "NCHW"  # the artifact's input layout; NHWC (channels-last) where a step offers it

    def to_dict(self) -> dict:
        d = asdict(self)
        d["chain"] = list(self.chain)
        return d


def target_from_dict(name: str, data: dict, source: str = "") -> TargetSpec:
    where = f"target {name!r}" + (f" in {source}" if source else "")
    data = {k: v for k, v in data.items() if k != "name"}
    try:
        spec = TargetSpec(name=name, chain=tuple(data.pop("chain")), **data)
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{where}: {exc}") from exc
    if spec.precision not in PRECISIONS:
        raise UsageError(f"{where}: precision must be one of {', '.join(PRECISIONS)}")
    if spec.input_layout not in LAYOUTS:
        raise UsageError(f"{where}: input_layout must be one of {', '.join(LAYOUTS)}")
    if spec.latency_on not in LATENCY_WHERE:
        raise UsageError(f"{where}: latency_on must be one of {', '.join(LATENCY_WHERE)}")
    if not 0 < spec.latency_percentile < 100:
        raise UsageError(f"{where}: latency_percentile must be between 0 and 100")
    return spec


def builtin_targets() -> dict[str, TargetSpec]:
    targets = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            name = entry.name.removesuffix(".toml")
            targets[name] = target_from_dict(name, tomllib.loads(entry.read_text()), str(entry))
    return targets


def load_targets(registry_files: Sequence[Path] = ()) -> dict[str, TargetSpec]:
    """The built-in targets, then those of `zoo.targets` entry points, then of the registry files."""
    targets = builtin_targets()
    problems = []
    from zoo.registry import entry_point_files

    for file in [*entry_point_files(ENTRY_POINT_GROUP), *registry_files]:
        try:
            data = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: {exc}")
            continue
        tables = data.get("targets", {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            problems.append(f"{file}: [targets] must hold [targets.NAME] tables")
            continue
        for name, table in tables.items():
            table = dict(table)
            override = table.pop("override", False)
            if name in targets and override is not True:
                problems.append(f"target {name!r} in {file} is already defined; set `override = true` to replace it")
                continue
            try:
                targets[name] = target_from_dict(name, table, str(file))
            except UsageError as exc:
                problems.append(str(exc))
    if problems:
        raise UsageError("; ".join(problems), hint="a target table takes the fields of zoo/targets/*.toml")
    return targets


def get_target(name: str, registry_files: Sequence[Path] = ()) -> TargetSpec:
    targets = load_targets(registry_files)
    try:
        return targets[name]
    except KeyError:
        raise unknown_name("target", name, targets) from None
