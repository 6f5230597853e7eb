"""Targets are data: one TOML file per target in this folder (add a file to add a target).

A target names its converter chain (steps in `zoo.converters`), the runtime that validates its
artifacts (`zoo.runtimes`), its precision and the thresholds its artifacts must meet.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from zoo.errors import UsageError, unknown_name

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


def load_targets(extra_files: tuple[Path, ...] = ()) -> dict[str, TargetSpec]:
    targets = builtin_targets()
    for file in extra_files:
        name = Path(file).stem
        targets[name] = target_from_dict(name, tomllib.loads(Path(file).read_text()), str(file))
    return targets


def get_target(name: str) -> TargetSpec:
    targets = load_targets()
    try:
        return targets[name]
    except KeyError:
        raise unknown_name("target", name, targets) from None
