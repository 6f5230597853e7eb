"""OpenVINO's CPU runtime on this host: opens IR (.xml + .bin); its numbers are `measured`.

Parity is judged with INFERENCE_PRECISION_HINT=f32, so the CPU plugin cannot trade precision for
speed behind our back (on CPUs with bf16 or fp16 units it does so by default). The same artifact at
the plugin's default precision is timed too (`latency_variants`), because that is how a deployment
that sets nothing runs it; on a CPU without bf16/fp16 units the two are the same configuration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing, thread_budget

EXTRA = "openvino"
PARITY_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
DEFAULT_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}  # precision left to the plugin


def core():
    ov = require("openvino", EXTRA)
    return ov.Core()


class OpenVinoSession(SessionBase):
    def __init__(self, path: Path, config: dict | None = None, batch: int | None = 0, _model=None):
        ov = require("openvino", EXTRA)
        self._core = core()
        self.path = Path(path)
        self.config = dict(PARITY_CONFIG if config is None else config)
        if thread_budget() and "INFERENCE_NUM_THREADS" not in self.config:
            self.config["INFERENCE_NUM_THREADS"] = thread_budget()
        model = _model if _model is not None else self._core.read_model(str(path))
        if len(model.inputs) != 1:
            raise ValueError(f"expected one input, the model has {len(model.inputs)}")
        if batch:  # a fixed batch asked for: reshape (dynamic-batch IRs take any)
            shape = model.input(0).get_partial_shape()
            shape[0] = batch
            model.reshape({model.input(0): shape})
        self._model = model
        self._compiled = self._core.compile_model(model, "CPU", self.config)
        self._request = self._compiled.create_infer_request()
        first = model.input(0).get_partial_shape()[0]
        self.batch = first.get_length() if first.is_static else None
        self.inference_precision = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        self._ov = ov

    def run(self, x: np.ndarray) -> np.ndarray:
        result = self._request.infer({0: np.ascontiguousarray(x, np.float32)})
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32)

    def _tensor_name(self, output) -> str:
        names = output.get_names()
        return sorted(names)[0] if names else f"{output.get_node().get_friendly_name()}:{output.get_index()}"

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every float op output added to the model as a result, compiled with the parity configuration."""
        model = self._core.read_model(str(self.path))
        taps = []
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Constant", "Result"):
                continue
            for output in op.outputs():
                if output.get_element_type().is_real():
                    taps.append((self._tensor_name(output), output))
        # a tensor NNCF quantizes is reported as its consumers see it: after its FakeQuantize
        views = {
            self._tensor_name(op.input(0).get_source_output()): self._tensor_name(op.output(0))
            for op in model.get_ordered_ops()
            if op.get_type_name() == "FakeQuantize"
        }
        model.add_outputs([o for _, o in taps])
        compiled = self._core.compile_model(model, "CPU", self.config)
        step = self.batch or len(x)
        runs = []
        for i in range(0, len(x), step):
            result = compiled.create_infer_request().infer({0: np.ascontiguousarray(x[i : i + step], np.float32)})
            by_name = {}
            for out, value in result.items():
                for name in out.get_names():
                    by_name[name] = value
            by_name = {n: by_name.get(views.get(n, n), v) for n, v in by_name.items()}
            chunk = len(x[i : i + step])
            runs.append(
                {
                    n: np.asarray(by_name[n])
                    for n, _ in taps
                    if n in by_name and np.ndim(by_name[n]) and len(by_name[n]) == chunk
                }
            )
        from zoo.runtimes.onnxruntime import batch_first

        return batch_first(runs)

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        model = self._core.read_model(str(self.path))
        table = {}
        for op in model.get_ordered_ops():
            inputs = tuple(self._tensor_name(i.get_source_output()) for i in op.inputs())
            for output in op.outputs():
                table[self._tensor_name(output)] = (op.get_friendly_name(), inputs)
        return table

    def latency_variants(self) -> dict:
        """The artifact at the plugin's default inference precision (what an untuned deployment gets)."""
        if self.config == DEFAULT_CONFIG:
            return {}
        default = OpenVinoSession(self.path, DEFAULT_CONFIG, batch=0, _model=self._model)
        return {f"OpenVINO default precision ({_precision_name(default.inference_precision)} on this CPU)": default}

    def with_batch(self, n: int):
        if self.batch is None:
            return self
        try:
            return OpenVinoSession(self.path, self.config, batch=n)
        except Exception:
            return None


def _precision_name(value: str) -> str:
    return value.replace("<Type: '", "").replace("'>", "").split(":")[-1].strip() or value


class OpenVinoRuntime(RuntimeBase):
    name = "openvino"
    formats = frozenset({"openvino"})
    fidelity = Fidelity.MEASURED
    extra = EXTRA

    def unavailable_reason(self) -> str | None:
        return module_missing("openvino", self.extra)

    def version(self) -> str:
        return require("openvino", self.extra).__version__

    def open(self, path: Path) -> OpenVinoSession:
        return OpenVinoSession(path)
