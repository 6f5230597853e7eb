"""Hailo runtimes: HailoRT on the device (`device` fidelity) and zoo's int8 emulation (`emulated`).

Both take what every validation session takes — NCHW float32 images normalized with the model's
mean/std — and turn it into what the compiled network takes: NHWC RGB pixels 0–255 (uint8 on the
device), the normalization being inside the network (the model script's `normalization` layer).
Validation inputs that are not photos (seeded random tensors) land partly outside 0–255 and are
clipped there, as any input to the device would be; parity then compares with the source model run on
the same clipped, rounded inputs (`snap_to_pixels`), so it measures the artifact, not the interface.

HailoRT (`hailo_platform`) is Hailo's proprietary wheel, imported only when a .hef is opened; the
calls follow HailoRT's published Python API (hailo-ai/hailort v4.23.0,
hailort/libhailort/bindings/python/platform/hailo_tutorials/notebooks/HRT_0_Async_Inference_Tutorial
.ipynb and pyhailort.py): `VDevice()` → `create_infer_model(hef)` → `configure()` →
`create_bindings()` → `set_buffer` → `run([bindings], timeout_ms)`.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing

TIMEOUT_MS = 10_000


def to_pixels(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalized NCHW float32 → NHWC float32 pixels (0–255 for real images)."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return np.ascontiguousarray((np.asarray(x, np.float32).transpose(0, 2, 3, 1) * std + mean) * 255.0)


def to_uint8_pixels(x: np.ndarray, mean, std) -> np.ndarray:
    return np.clip(np.rint(to_pixels(x, mean, std)), 0, 255).astype(np.uint8)


def snap_to_pixels(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalized NCHW float32 → the same, as the device receives it: on the uint8 pixel grid."""
    from zoo.validators.inputs import normalize

    return normalize(to_uint8_pixels(x, mean, std), mean, std)


class EmulatedSession(SessionBase):
    """The emulated int8 model on ONNX Runtime, as fake quantization: Q/DQ pairs run as written.

    Graph optimizations stay at the basic level on purpose: ONNX Runtime's extended level fuses QDQ
    groups into its own integer kernels (e.g. QLinearSoftmax, which assumes the [0, 1] output range),
    which need not compute what the Q/DQ pairs describe (seen here: with a calibrated softmax range,
    tiny_vit's min cosine was 0.94 as written and 0.29 fused).
    """

    batch = 1

    def __init__(self, path: Path):
        ort = require("onnxruntime", "onnx")
        onnx = require("onnx", "onnx")
        from zoo.hailo.emulation import META_KIND, META_MEAN, META_STD

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        if META_KIND not in props:
            raise ValueError(f"{path} is not a zoo Hailo int8 emulation model (no {META_KIND} metadata)")
        self.mean = json.loads(props[META_MEAN])
        self.std = json.loads(props[META_STD])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.output_name = self._session.get_outputs()[0].name
        self.path, self._options, self._taps = Path(path), options, None

    def run(self, x: np.ndarray) -> np.ndarray:
        pixels = to_pixels(x, self.mean, self.std)  # the model's uint8 input quantizer clips and rounds
        out = self._session.run([self.output_name], {self.input_name: pixels})[0]
        return out.reshape(len(x), -1).astype(np.float32)

    def _tapped(self):
        if self._taps is None:
            from zoo.runtimes.onnxruntime import OnnxTaps

            model = require("onnx", "onnx").load(str(self.path))
            self._taps = OnnxTaps(model, self._options, lambda x: to_pixels(x, self.mean, self.std), self.batch)
        return self._taps

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self._tapped().run(x)

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return self._tapped().producers


class HailoInt8Emulation(RuntimeBase):
    name = "hailo_int8_emulation"
    formats = frozenset({"onnx-hailo-int8-emulated"})
    fidelity = Fidelity.EMULATED
    extra = "hailo"
    measures_latency = False  # a CPU emulation's speed says nothing about the chip's
    takes_uint8_pixels = True

    def unavailable_reason(self) -> str | None:
        return module_missing("onnxruntime", self.extra)

    def version(self) -> str:
        return f"ONNX Runtime {require('onnxruntime', 'onnx').__version__} (QDQ int8 emulation of Hailo's scheme)"

    def open(self, path: Path) -> EmulatedSession:
        return EmulatedSession(path)


def _input_spec(hef_path: Path) -> tuple[list[float], list[float]]:
    """mean/std (0–1 units) of the model the .hef was compiled from, from the bundle's manifest."""
    from zoo.outputs import read_manifest

    manifest = read_manifest(Path(hef_path).parent)
    model = manifest["model"]
    return list(model["mean"]), list(model["std"])


class HailoRTSession(SessionBase):
    """A .hef on the Hailo device through HailoRT: batch 1, uint8 NHWC in, float32 out."""

    batch = 1

    def __init__(self, path: Path):
        platform = require("hailo_platform", "hailo")
        self.mean, self.std = _input_spec(path)
        self._stack = contextlib.ExitStack()
        try:
            vdevice = self._stack.enter_context(platform.VDevice())
            self._model = vdevice.create_infer_model(str(path))
            self._model.set_batch_size(1)
            self._model.input().set_format_type(platform.FormatType.UINT8)
            self._model.output().set_format_type(platform.FormatType.FLOAT32)
            self._configured = self._stack.enter_context(self._model.configure())
        except BaseException:
            self._stack.close()
            raise
        weakref.finalize(self, self._stack.close)

    def run(self, x: np.ndarray) -> np.ndarray:
        frames = to_uint8_pixels(x, self.mean, self.std)
        outs = []
        for frame in frames:
            bindings = self._configured.create_bindings()
            bindings.input().set_buffer(np.ascontiguousarray(frame))
            out = np.empty(self._model.output().shape, dtype=np.float32)
            bindings.output().set_buffer(out)
            self._configured.run([bindings], TIMEOUT_MS)
            outs.append(np.asarray(bindings.output().get_buffer(), np.float32).reshape(1, -1))
        return np.concatenate(outs)


class HailoRT(RuntimeBase):
    name = "hailort"
    formats = frozenset({"hef"})
    fidelity = Fidelity.DEVICE
    extra = "hailo"
    takes_uint8_pixels = True

    def unavailable_reason(self) -> str | None:
        from zoo.hailo import HAILORT_HINT

        if module_missing("hailo_platform", self.extra):
            return f"HailoRT (hailo_platform) is not installed here; {HAILORT_HINT}"
        return None

    def version(self) -> str:
        return f"HailoRT {require('hailo_platform', 'hailo').__version__}"

    def open(self, path: Path) -> HailoRTSession:
        return HailoRTSession(path)
