"""ONNX Runtime (CPU) on this host: opens .onnx and .ort files; its numbers are `measured`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing, thread_budget


class OrtSession(SessionBase):
    def __init__(self, path_or_bytes: Path | bytes, threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_budget() if threads is None else threads
        options.log_severity_level = 3
        source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected one input, the model has {len(inputs)}")
        self.input_name = inputs[0].name
        first = inputs[0].shape[0]
        self.batch = first if isinstance(first, int) else None
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(self.output_names[:1], {self.input_name: np.ascontiguousarray(x, np.float32)})[0]


class OnnxRuntime(RuntimeBase):
    name = "onnxruntime"
    formats = frozenset({"onnx", "ort"})
    fidelity = Fidelity.MEASURED
    extra = "onnx"

    def unavailable_reason(self) -> str | None:
        return module_missing("onnxruntime", self.extra)

    def version(self) -> str:
        return require("onnxruntime", "onnx").__version__

    def open(self, path: Path) -> OrtSession:
        return OrtSession(path)
