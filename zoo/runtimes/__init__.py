"""Validation runtimes: what executes an artifact so its numbers can be checked.

Each runtime says which artifact formats it opens and the fidelity of what it measures
(ONNX Runtime on this host: measured; a numpy execution of a Core ML program: emulated).
Runtimes are named in target specs and imported only when used.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from zoo.errors import UsageError
from zoo.fidelity import Fidelity

BUILTIN = {
    "onnxruntime": "zoo.runtimes.onnxruntime:OnnxRuntime",
}


class Session(Protocol):
    batch: int | None  # the fixed batch size the artifact takes, None when dynamic

    def run(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 images → (N, D) float32 embeddings."""


class Runtime(Protocol):
    name: str
    formats: frozenset[str]
    fidelity: Fidelity
    extra: str

    def version(self) -> str: ...

    def open(self, path: Path) -> Session: ...


def get_runtime(name: str) -> Runtime:
    if name not in BUILTIN:
        raise UsageError(
            f"validation runtime {name!r} is not built into this version of zoo",
            hint=f"available runtimes: {', '.join(sorted(BUILTIN))}",
        )
    module_name, _, cls = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module_name), cls)()


def run_in_batches(session: Session, x: np.ndarray) -> np.ndarray:
    """Run all of x, one fixed-size batch at a time when the artifact has a static batch."""
    if session.batch is None:
        return session.run(x)
    step = session.batch
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        if len(chunk) < step:  # pad the last chunk to the static batch, drop the padding after
            pad = np.repeat(chunk[-1:], step - len(chunk), axis=0)
            outs.append(session.run(np.concatenate([chunk, pad]))[: len(chunk)])
        else:
            outs.append(session.run(chunk))
    return np.concatenate(outs)
