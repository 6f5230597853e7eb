"""LiteRT (TFLite) on this host through ai_edge_litert's Interpreter (XNNPACK delegate on CPU): opens
.tflite files; its numbers are `measured`.

The session takes NCHW float32 like every session; an NHWC artifact gets the images transposed, an
int8-input/-output artifact gets them (de)quantized with the tensor's own scale and zero point.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing, thread_budget

EXTRA = "tflite"


class LiteRtSession(SessionBase):
    def __init__(self, path: Path, threads: int | None = None):
        interpreter_module = require("ai_edge_litert.interpreter", EXTRA)
        self.path = Path(path)
        self._threads = threads or thread_budget() or os.cpu_count() or 1
        self._interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=self._threads)
        self._interpreter.allocate_tensors()
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"expected one input, the model has {len(inputs)}")
        self._input = inputs[0]
        self._output = self._interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in self._input["shape"])
        self.batch = shape[0]
        self.layout = "NHWC" if len(shape) == 4 and shape[3] == 3 and shape[1] != 3 else "NCHW"

    def _feed(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 images as the artifact's input takes them (its layout, its int8 grid)."""
        x = np.asarray(x, np.float32)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        dtype = self._input["dtype"]
        if dtype != np.float32:
            scale, zero = self._input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return np.ascontiguousarray(x)

    def run(self, x: np.ndarray) -> np.ndarray:
        self._interpreter.set_tensor(self._input["index"], self._feed(x))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"])
        if y.dtype != np.float32:
            scale, zero = self._output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, dtype=np.float32)

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """Tensor name → (its op, named by the op's first output tensor — the scope ai-edge-quantizer
        matches — and the op's input tensor names)."""
        names = {d["index"]: d["name"] for d in self._interpreter.get_tensor_details()}
        table = {}
        for op in self._interpreter._get_ops_details():
            outputs = [names[i] for i in op["outputs"] if i in names]
            inputs = tuple(names[i] for i in op["inputs"] if i in names)
            for output in outputs:
                table[output] = (outputs[0], inputs)
        return table

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every float (or dequantized int8) tensor, from an interpreter that keeps them all (LiteRT's
        experimental_preserve_all_tensors), one sample at a time; NHWC tensors stay NHWC."""
        interpreter_module = require("ai_edge_litert.interpreter", EXTRA)
        with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging: it is here
            warnings.simplefilter("ignore", UserWarning)
            tapped = interpreter_module.Interpreter(
                model_path=str(self.path), num_threads=self._threads, experimental_preserve_all_tensors=True
            )
        tapped.allocate_tensors()
        details = [d for d in tapped.get_tensor_details() if d["index"] != self._input["index"]]
        runs = []
        for i in range(0, len(x), self.batch or 1):
            chunk = x[i : i + (self.batch or 1)]
            tapped.set_tensor(self._input["index"], self._feed(chunk))
            tapped.invoke()
            values = {}
            for d in details:
                try:
                    value = tapped.get_tensor(d["index"])
                except ValueError:  # a tensor with no data (e.g. a scratch buffer)
                    continue
                scale, zero = d["quantization"]
                if value.dtype in (np.int8, np.uint8, np.int16) and scale:
                    value = (value.astype(np.float32) - zero) * scale
                elif value.dtype not in (np.float32, np.float16):
                    continue
                if value.ndim and value.shape[0] == len(chunk):
                    values[d["name"] or f"tensor_{d['index']}"] = np.array(value, np.float32)
            runs.append(values)
        from zoo.runtimes.onnxruntime import batch_first

        return batch_first(runs)

    def with_batch(self, n: int):
        """The artifact resized to batch n, or None when its graph fixes the batch (reshapes to 1)."""
        try:
            session = LiteRtSession(self.path, self._threads)
            shape = list(session._input["shape"])
            shape[0] = n
            session._interpreter.resize_tensor_input(session._input["index"], shape, strict=False)
            session._interpreter.allocate_tensors()
            session._input = session._interpreter.get_input_details()[0]
            session._output = session._interpreter.get_output_details()[0]
            session.batch = n
            probe = np.zeros((n, 3, *_spatial(shape, session.layout)), np.float32)
            if session.run(probe).shape[0] != n:
                return None
            return session
        except Exception:
            return None


def _spatial(shape, layout: str) -> tuple[int, int]:
    return (shape[1], shape[2]) if layout == "NHWC" else (shape[2], shape[3])


class LiteRtRuntime(RuntimeBase):
    name = "litert"
    formats = frozenset({"tflite"})
    fidelity = Fidelity.MEASURED
    extra = EXTRA

    def unavailable_reason(self) -> str | None:
        return module_missing("ai_edge_litert", self.extra)

    def version(self) -> str:
        from importlib import metadata

        try:
            return metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            return "unknown"

    def open(self, path: Path) -> LiteRtSession:
        return LiteRtSession(path)
