"""ONNX Runtime (CPU) on this host: opens .onnx and .ort files; its numbers are `measured`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing, thread_budget


def float_activations(model) -> list[str]:
    """The float tensors computed by the graph's nodes (constants left out), in graph order, after the input."""
    onnx = require("onnx", "onnx")
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        vi.name
        for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = [t for n in model.graph.node for t in n.output if t in floats and t not in constants]
    return [model.graph.input[0].name, *dict.fromkeys(names)]


def with_outputs(model, names: list[str]):
    """A copy of the ONNX model with `names` added as graph outputs (ONNX Runtime then returns them)."""
    onnx = require("onnx", "onnx")
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return model


def onnx_producers(model) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {o: (n.name or o, tuple(i for i in n.input if i)) for n in model.graph.node for o in n.output}


def quantized_views(model) -> dict[str, str]:
    """{tensor: the DequantizeLinear output its QuantizeLinear → DequantizeLinear pair gives}: in a QDQ
    graph a tensor's own name holds its float value before quantization; its consumers see the pair's."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    views = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        dq = [c for c in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"]
        if dq:
            views[node.input[0]] = dq[0].output[0]
    return views


class OnnxTaps:
    """Every float activation of an ONNX model as an output, on ONNX Runtime with the session's options
    (the validation's own optimization level: what it fuses, it fuses here too, except around the taps).
    A quantized tensor is reported as its consumers see it: after its Q/DQ pair."""

    def __init__(self, model, options, feed=lambda x: x, batch: int | None = None):
        ort = require("onnxruntime", "onnx")
        self.names = float_activations(model)
        self.producers = onnx_producers(model)
        self.views = quantized_views(model)
        tapped = with_outputs(model, self.names)
        self._outputs = [o.name for o in tapped.graph.output]
        self._session = ort.InferenceSession(tapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._feed, self._batch = feed, batch

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        step = self._batch or len(x)
        runs = [self._run_one(x[i : i + step]) for i in range(0, len(x), step)]
        return batch_first(runs)

    def _run_one(self, x: np.ndarray) -> dict[str, np.ndarray]:
        values = self._session.run(self._outputs, {self._input: np.ascontiguousarray(self._feed(x), np.float32)})
        got = dict(zip(self._outputs, values))
        got = {n: got.get(self.views.get(n, n), got.get(n)) for n in got}
        # in graph order: the first tensor computed comes first
        return {n: np.asarray(got[n]) for n in self.names if got.get(n) is not None and _batch_first(got[n], len(x))}


def _batch_first(value, n: int) -> bool:
    return getattr(value, "ndim", 0) > 0 and value.shape[0] == n


def batch_first(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensors of several runs (one batch each) joined along the batch, those every run gave, in order."""
    common = set.intersection(*(set(r) for r in runs)) if runs else set()
    return {name: np.concatenate([r[name] for r in runs]) for name in (runs[0] if runs else {}) if name in common}


class OrtSession(SessionBase):
    def __init__(self, path_or_bytes: Path | bytes, threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_budget() if threads is None else threads
        options.log_severity_level = 3
        source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
        self._source, self._options, self._taps = path_or_bytes, options, None
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

    def _tapped(self) -> OnnxTaps | None:
        """None for an .ort file: ONNX Runtime's own format cannot be given extra outputs."""
        if self._taps is None and (isinstance(self._source, bytes) or Path(self._source).suffix == ".onnx"):
            onnx = require("onnx", "onnx")
            source = self._source
            model = onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source))
            self._taps = OnnxTaps(model, self._options, batch=self.batch)
        return self._taps

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        taps = self._tapped()
        return taps.run(x) if taps else {}

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        taps = self._tapped()
        return taps.producers if taps else {}


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
