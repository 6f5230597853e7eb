"""Validation runtimes: what executes an artifact so its numbers can be checked.

Each runtime says which artifact formats it opens and the fidelity of what it measures
(ONNX Runtime on this host: measured; a numpy execution of a Core ML program: emulated; HailoRT
on the Pi: device). Runtimes are named in target specs (or per artifact), imported only when
used; third-party runtimes arrive through the entry-point group `zoo.runtimes`.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

from zoo.errors import UsageError
from zoo.fidelity import Fidelity

ENTRY_POINT_GROUP = "zoo.runtimes"

BUILTIN = {
    "onnxruntime": "zoo.runtimes.onnxruntime:OnnxRuntime",
    "openvino": "zoo.runtimes.openvino:OpenVinoRuntime",
    "litert": "zoo.runtimes.litert:LiteRtRuntime",
    "hailort": "zoo.runtimes.hailo:HailoRT",
    "hailo_int8_emulation": "zoo.runtimes.hailo:HailoInt8Emulation",
    "coreml": "zoo.runtimes.coreml:CoreML",
    "coreml_neuralnetwork": "zoo.runtimes.coreml:CoreMLNeuralNetwork",
    "immich_face": "zoo.runtimes.immich_face:ImmichFaceRuntime",
}


class Session(Protocol):
    batch: int | None  # the fixed batch size the artifact takes, None when dynamic

    def run(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 images → (N, D) float32 embeddings."""


class SessionBase:
    """A session's optional hooks with their defaults (as Polygraphy's BaseRunner declares its own).
    Every session subclasses it, so the validators call the hooks without probing for them."""

    batch: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def latency_variants(self) -> dict[str, SessionBase]:
        """{label: session}: the same artifact in other runtime configurations, timed beside the main
        row and never gated (e.g. OpenVINO at its default precision). None by default."""
        return {}

    def with_batch(self, n: int) -> SessionBase | None:
        """The artifact resized to batch n, or None when it cannot be (the default)."""
        return None

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """{tensor name: value} of every intermediate float tensor for the images x, batch first, in the
        artifact's execution order (what `zoo diagnose` pairs with the source model's modules). Empty by
        default: the runtime cannot expose them."""
        return {}

    def reference_twin(self) -> SessionBase | None:
        """The same artifact computed in float32, where the runtime can (an fp16 program run unrounded):
        what a diagnosis pairs the source model's modules on. None by default."""
        return None

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """{tensor name: (the node that computes it, that node's input tensors)} in the artifact's own
        names — the graph a diagnosis walks to find the nodes inside a module. Empty by default."""
        return {}


class Runtime(Protocol):
    name: str
    formats: frozenset[str]
    fidelity: Fidelity
    extra: str
    measures_latency: bool

    def unavailable_reason(self) -> str | None:
        """None when the runtime can run here, else why not (shown as 'not run' in the report)."""

    def version(self) -> str: ...

    def open(self, path: Path) -> SessionBase: ...


class RuntimeBase:
    """Defaults for a runtime; every runtime subclasses it (a plugin that does not is refused)."""

    name = ""
    formats: frozenset[str] = frozenset()
    fidelity = Fidelity.MEASURED
    extra = ""
    measures_latency = True  # False for an emulation: its speed is not the device's
    # True where the session feeds the artifact resampled pixels (e.g. Immich's 112-px face crop): random
    # tensors are not pictures a resize carries, so parity vs source is judged on the photos
    parity_on_photos_only = False
    # True where the artifact takes uint8 pixels (a Hailo .hef): inputs off that grid (random tensors) are
    # clipped and rounded on the way in, so parity compares with the source run on the same snapped inputs
    takes_uint8_pixels = False

    def unavailable_reason(self) -> str | None:
        return None

    def version(self) -> str:
        return ""

    def open(self, path: Path) -> SessionBase:
        raise NotImplementedError


def get_runtime(name: str) -> Runtime:
    if name in BUILTIN:
        module_name, _, cls = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module_name), cls)()
    eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name in eps:
        runtime = eps[name].load()()
        if not isinstance(runtime, RuntimeBase):
            raise UsageError(
                f"validation runtime {name!r} ({type(runtime).__qualname__}) does not subclass "
                "zoo.runtimes.RuntimeBase",
                hint="subclass RuntimeBase (and SessionBase for its sessions): they declare the optional hooks",
            )
        return runtime
    raise UsageError(
        f"validation runtime {name!r} is not built into this version of zoo",
        hint=f"available runtimes: {', '.join(sorted(set(BUILTIN) | set(eps)))}",
    )


THREADS_ENV = "ZOO_THREADS"


def thread_budget() -> int:
    """Threads one runtime session may use: `$ZOO_THREADS` (set per cell by `zoo matrix --jobs`, so
    cells side by side do not oversubscribe the cores); 0 = the runtime's own default (all cores)."""
    import os

    try:
        return max(0, int(os.environ.get(THREADS_ENV, "0")))
    except ValueError:
        return 0


def module_missing(module: str, extra: str) -> str | None:
    """A reason string when `module` cannot be imported (for unavailable_reason)."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'zoo[{extra}]')"
    return None


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
