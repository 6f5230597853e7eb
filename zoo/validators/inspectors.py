"""Format inspectors: checks read from an artifact file itself, keyed by the artifact's format.

An inspector re-checks a saved artifact without the step that wrote it (a Core ML model's structure,
say), so `zoo convert` and `zoo validate` produce the same rows. What it needs to know about the
conversion (the deployment target asked for, the metadata promised) travels in the artifact's
`facts`, which the manifest keeps. Rows that only a conversion can produce (the parity of a graph
before simplification, an int8 speedup against a baseline that is not kept) are stored in the manifest
instead and carried into a re-validation labelled "not re-run" (see zoo.pipeline).

Built-in inspectors are listed in BUILTIN; third-party ones arrive through the entry-point group
`zoo.validators` (name = "module:Class"). Each class has `name`, `formats` and `inspect()`; nothing
is imported until an artifact of one of its formats is inspected.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from zoo.errors import UsageError
from zoo.fidelity import Check

if TYPE_CHECKING:
    from zoo.converters import Artifact

ENTRY_POINT_GROUP = "zoo.validators"

# name → "module:Class", and the formats each one inspects (so no module is imported to find out)
BUILTIN = {
    "coreml_structure": ("zoo.validators.coreml_structure:StructureInspector", ("mlpackage", "mlmodel")),
    "hailo_preflight": ("zoo.hailo.inspector:HailoPreflightInspector", ("onnx",)),
}


class Inspector(Protocol):
    name: str
    formats: frozenset[str]

    def inspect(self, path: Path, artifact: Artifact) -> list[Check]:
        """Rows about the artifact at `path`, from the file and `artifact.facts` alone."""


@cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load(name: str) -> Inspector:
    if name in BUILTIN:
        module_name, _, cls = BUILTIN[name][0].partition(":")
        return getattr(importlib.import_module(module_name), cls)()
    try:
        return _entry_points()[name].load()()
    except KeyError:
        raise UsageError(f"format inspector {name!r} is not installed") from None


def inspectors_for(fmt: str) -> list[Inspector]:
    found = [_load(n) for n, (_, formats) in BUILTIN.items() if fmt in formats]
    for name in sorted(_entry_points()):
        inspector = _load(name)
        if fmt in inspector.formats:
            found.append(inspector)
    return found


def inspect_artifacts(out_dir: Path, artifacts: list[Artifact]) -> list[Check]:
    """Every inspector of every artifact's format, in artifact order."""
    rows: list[Check] = []
    for artifact in artifacts:
        for inspector in inspectors_for(artifact.format):
            rows += inspector.inspect(Path(out_dir) / artifact.name, artifact)
    return rows
