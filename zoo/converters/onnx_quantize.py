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
) -> None:
    """Quantize `src` into `dst` (QDQ format) calibrated on `calibration` (NCHW, as the model takes it).

    `tensor_overrides` maps tensor names to ORT TensorQuantOverrides entries, e.g. 16-bit activations
    for residual adds. `preprocess` runs ORT's quant_pre_process (shape inference + optimizations).
    """
    require("onnxruntime", "onnx")
    onnx = require("onnx", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src), load_external_data=False).graph.input[0].name

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
                quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
                source = prepared
            extra = {"ActivationSymmetric": activation_type.startswith("QInt")}
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
                extra_options=extra,
            )
    except Exception as exc:
        raise ConversionError(f"int8 quantization (ONNX Runtime QDQ) failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if preprocess and source != Path(src):
            source.unlink(missing_ok=True)
