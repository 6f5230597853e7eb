"""ONNX Runtime static quantization to QDQ int8: the shared engine behind int8 ONNX artifacts
(android-int8) and the int8 emulation of other toolchains (e.g. Hailo's scheme)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from zoo.errors import ConversionError, require


def quantize_qdq(
    src: Path,
    dst: Path,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    activation_type: str = "QUInt8",
    weight_type: str = "QInt8",
    op_types: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
    tensor_overrides: dict | None = None,
    preprocess: bool = True,
    batch: int = 1,
    extra_options: dict | None = None,
    stream_ranges: bool = False,
    reduce_range: bool = False,
) -> None:
    """Quantize `src` into `dst` (QDQ format) calibrated on `calibration` (NCHW, as the model takes it).

    `tensor_overrides` maps tensor names to ORT TensorQuantOverrides entries, e.g. 16-bit activations
    for residual adds. `preprocess` runs ORT's quant_pre_process (shape inference + optimizations).
    `extra_options` are passed on to quantize_static's extra_options.
    `reduce_range` quantizes weights to 7 bits: x86 CPUs without VNNI multiply u8 × s8 in saturating
    16-bit pairs, which a full 8-bit range can overflow.
    `stream_ranges` computes the activation min/max over the whole calibration set one batch at a time
    (memory: one batch of activations — ORT's calibrator keeps every batch's activations, ~180 MB per
    image for convnext_tiny at 224, and its CalibMaxIntermediateOutputs option drops data in this ORT)
    and hands them to ORT as rmin/rmax overrides, with ORT's own range adjustments (Softmax output
    [0, 1], Relu/Clip input = output range): the same MinMax calibration, in bounded memory.
    """
    require("onnxruntime", "onnx")
    onnx = require("onnx", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

    if stream_ranges:
        tensor_overrides = _with_ranges(tensor_overrides, activation_ranges(Path(src), calibration, batch))
        calibration = calibration[:batch]  # ranges come from the overrides; ORT still wants one batch

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(
                [{input_name: calibration[i : i + batch]} for i in range(0, len(calibration) - batch + 1, batch)]
            )

        def get_next(self):
            return next(self._batches, None)

    source = Path(src)
    log = io.StringIO()
    logging.getLogger("root").setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            if preprocess:
                prepared = dst.with_name(dst.stem + ".pre.onnx")
                try:
                    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
                except Exception:
                    # ORT's symbolic shape inference gives up on some exporter graphs (a value without a
                    # shape); ONNX's own shape inference is enough for the static shapes quantized here.
                    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                source = prepared
            extra = {"ActivationSymmetric": activation_type.startswith("QInt"), **(extra_options or {})}
            if tensor_overrides:
                extra["TensorQuantOverrides"] = tensor_overrides
            quantize_static(
                str(source),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=getattr(QuantType, activation_type),
                weight_type=getattr(QuantType, weight_type),
                op_types_to_quantize=op_types,
                nodes_to_exclude=nodes_to_exclude,
                reduce_range=reduce_range,
                extra_options=extra,
            )
    except Exception as exc:
        raise ConversionError(f"int8 quantization (ONNX Runtime QDQ) failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if preprocess and source != Path(src):
            source.unlink(missing_ok=True)


def activation_ranges(src: Path, calibration: np.ndarray, batch: int = 1) -> dict[str, tuple[float, float]]:
    """Min/max of every float activation of the model at `src` over `calibration`, one batch at a time,
    adjusted as ORT's MinMax calibration adjusts them (base_quantizer.adjust_tensor_ranges)."""
    ort = require("onnxruntime", "onnx")
    onnx = require("onnx", "onnx")

    from zoo.runtimes.onnxruntime import float_activations, with_outputs

    source = onnx.load(str(src))
    names = float_activations(source)
    model = with_outputs(source, names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in model.graph.output]
    wanted = set(names)
    ranges: dict[str, tuple[float, float]] = {}
    for i in range(0, len(calibration) - batch + 1, batch):
        values = session.run(outputs, {input_name: np.ascontiguousarray(calibration[i : i + batch], np.float32)})
        for name, value in zip(outputs, values):
            if name not in wanted or value.size == 0:
                continue
            lo, hi = float(np.min(value)), float(np.max(value))
            old = ranges.get(name)
            ranges[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers[t] = consumers.get(t, 0) + 1
    for node in model.graph.node:
        if node.op_type in ("Relu", "Clip") and consumers.get(node.input[0]) == 1 and node.output[0] in ranges:
            ranges[node.input[0]] = ranges[node.output[0]]
        elif node.op_type == "Softmax" and node.output[0] in ranges:
            ranges[node.output[0]] = (0.0, 1.0)
    return ranges


def _with_ranges(overrides: dict | None, ranges: dict[str, tuple[float, float]]) -> dict:
    """Add rmin/rmax to the overrides of every tensor that does not fix its scale/zero point itself."""
    merged = {k: [dict(e) for e in v] for k, v in (overrides or {}).items()}
    for name, (lo, hi) in ranges.items():
        entry = merged.setdefault(name, [{}])[0]
        if "scale" in entry or "rmin" in entry:
            continue
        entry["rmin"], entry["rmax"] = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    return merged
