"""TFLite fp32 → TFLite int8 through ai-edge-quantizer (LiteRT's quantizer), two schemes:

- `tflite_to_int8` (target tflite-int8): dynamic-range int8 — per-channel int8 weights, activations
  quantized by LiteRT at run time. No calibration set; parity stays near fp32.
- `tflite_to_int8_static` (target tflite-int8-static): static int8 activations calibrated on the
  model's calibration set (zoo.calibration) with each tensor's range the min/max over the whole set
  (calibrate_min_max), for integer-only accelerators; it costs more accuracy than dynamic range.

Only the operators that carry weights are quantized (FULLY_CONNECTED, CONV_2D, and in the static
scheme DEPTHWISE_CONV_2D);
attention's activation×activation BATCH_MATMULs, normalizations, softmax and the L2 normalization
stay in float (quantizing every supported op cost a tiny ConvNeXt 0.96 cosine vs fp32), and in the
static scheme so does the weight op right after attention (ViT's output projection, see
float_after_attention). Input and output stay float32. The int8-vs-fp32 speedup on LiteRT
(XNNPACK, this host's CPU) goes into the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import numpy as np

from zoo.converters import Artifact, ConvertContext
from zoo.converters.torch_to_tflite import EXTRA, finish, quiet_fds, tflite_schema
from zoo.errors import ConversionError, require

AEQ_RECOMMENDED = 100
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


_PASS_THROUGH = ("RESHAPE", "TRANSPOSE")


def float_after_attention(path: Path) -> list[str]:
    """Output tensor names of the weight ops fed by attention's float BATCH_MATMUL (through reshapes
    and transposes): ViT's attention output projection, whose int8 input costs the most accuracy
    (a tiny ViT: cosine vs fp32 0.959 with it quantized, 0.992 without)."""
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    graph = model.Subgraphs(0)
    producer, ops = {}, []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "")
        ops.append((kind, op))
        for j in range(op.OutputsLength()):
            producer[op.Outputs(j)] = kind, op

    def from_attention(tensor: int) -> bool:
        while tensor in producer:
            kind, op = producer[tensor]
            if kind == "BATCH_MATMUL":
                return True
            if kind not in _PASS_THROUGH or not op.InputsLength():
                return False
            tensor = op.Inputs(0)
        return False

    return [
        graph.Tensors(op.Outputs(0)).Name().decode()
        for kind, op in ops
        if kind in WEIGHT_OPS and op.InputsLength() and from_attention(op.Inputs(0))
    ]


def flatten_fc_biases(src: Path, dst: Path) -> int:
    """Copy `src` to `dst` with every FULLY_CONNECTED bias as a 1-D tensor; returns how many changed.

    litert-torch folds a trained ConvNeXt's layer scale into the MLP's last FULLY_CONNECTED and writes
    the bias as [1, 1, 1, C]; ai-edge-quantizer then gives it C per-axis scales on axis 0 (size 1),
    which LiteRT refuses to load. Untrained weights (layer scale of ones) never show this."""
    import flatbuffers

    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(Path(src).read_bytes()), 0)
    fully_connected = schema.BuiltinOperator.FULLY_CONNECTED
    changed = 0
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            inputs = list(op.inputs) if op.inputs is not None else []
            if max(code.builtinCode, code.deprecatedBuiltinCode) != fully_connected or len(inputs) < 3:
                continue
            if inputs[2] < 0:
                continue
            bias = graph.tensors[inputs[2]]
            shape = [int(d) for d in bias.shape]
            if len(shape) > 1 and int(np.prod(shape)) == shape[-1]:
                bias.shape = [shape[-1]]
                bias.shapeSignature = None
                changed += 1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(dst).write_bytes(builder.Output())
    return changed


def scope_regex(excluded: list[str]) -> str:
    """Every op scope except the named ones (ai-edge-quantizer searches "name1;name2;" scopes)."""
    if not excluded:
        return ".*"
    return "^(?!(?:" + "|".join(re.escape(n) for n in excluded) + ")(?:;|$)).*"  # scope: "name;"


def signature_input(path: Path) -> tuple[str, str]:
    """(signature key, input name) of a single-signature .tflite, as the quantizer's calibration wants."""
    interpreter = require("ai_edge_litert.interpreter", EXTRA).Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    key = next(iter(signatures))
    return key, signatures[key]["inputs"][0]


def calibrate_min_max(quantizer, samples: dict) -> dict:
    """Activation ranges: the min and max over every calibration sample.

    ai-edge-quantizer's own calibrate() keeps a moving average of each sample's min/max (weight 0.95
    on the running value), so the last twenty or so samples set the ranges and every view brighter
    than those clips. On the reference students the report's parity vs fp32 went from 0.946 to 0.987
    (ConvNeXt) and from 0.961 to 0.988 (EfficientNet) with the full range."""
    ranges: dict = {}
    for signature, inputs in samples.items():
        for sample in inputs:
            for tensor, qsv in quantizer.calibrate({signature: [sample]}).items():
                seen = ranges.setdefault(tensor, dict(qsv))
                seen["min"] = np.minimum(seen["min"], qsv["min"])
                seen["max"] = np.maximum(seen["max"], qsv["max"])
    return ranges


class TfliteToInt8:
    """Static int8: int8 activations from the calibration set, for integer-only accelerators."""

    name = "tflite_to_int8_static"
    extra = EXTRA
    calibrated = True  # reads a calibration set (--calibration)
    dynamic = False
    op_types = WEIGHT_OPS
    float_modules = True  # leaves the model's float_modules in float

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("ai_edge_quantizer", self.extra)
        require("ai_edge_litert.interpreter", self.extra)
        if upstream is None or upstream.format != "tflite":
            return [f"{self.name} needs a TFLite model from the previous step"]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        from zoo.runtimes.litert import LiteRtSession
        from zoo.validators.timing import speedup_check

        require("ai_edge_quantizer", self.extra)
        from ai_edge_quantizer import quantizer as aeq
        from ai_edge_quantizer.qtyping import TFLOperationName

        source = ctx.workdir / upstream.name
        dst = ctx.workdir / f"{Path(upstream.name).stem}.int8.tflite"
        prepared = ctx.workdir / f"{Path(upstream.name).stem}.fcbias.tflite"  # the quantizer's input only
        flatten_fc_biases(source, prepared)
        float_ops = []
        if not self.dynamic:  # dynamic-range int8 leaves activations float anyway (and takes no float_modules)
            from zoo.diagnose import nodes_kept_in_float

            kept = nodes_kept_in_float(ctx, lambda: LiteRtSession(prepared), dst.name)
            float_ops = list(dict.fromkeys([*float_after_attention(prepared), *kept]))
        scope = scope_regex(float_ops)
        samples = None if self.dynamic else self._calibration_samples(ctx, prepared)
        log = io.StringIO()
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            with quiet_fds(ctx.workdir / "aeq.log"), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                quantizer = aeq.Quantizer(str(prepared))
                quantizer.load_quantization_recipe([])
                for op in self.op_types:
                    if self.dynamic:
                        quantizer.add_dynamic_config(scope, getattr(TFLOperationName, op), 8)
                    else:
                        quantizer.add_static_config(scope, getattr(TFLOperationName, op), 8, 8)
                result = quantizer.quantize(None if self.dynamic else calibrate_min_max(quantizer, samples))
                result.export_model(str(dst), overwrite=True)
        except Exception as exc:
            raise ConversionError(
                f"TFLite int8 quantization (ai-edge-quantizer) failed: {type(exc).__name__}: {exc}"
            ) from exc
        (ctx.workdir / "aeq.log").unlink(missing_ok=True)
        prepared.unlink()
        try:
            quantized = LiteRtSession(dst)
        except Exception as exc:  # fail closed: an int8 file LiteRT will not load is no artifact
            raise ConversionError(
                f"ai-edge-quantizer wrote an int8 model that LiteRT refuses to load: {str(exc).splitlines()[0][:300]}",
                hint="use the android-int8 or openvino-int8 target for this model",
            ) from exc
        scheme = (
            "dynamic-range int8: per-channel int8 weights, activations quantized at run time"
            if self.dynamic
            else "static int8 activations (calibrated), per-channel int8 weights"
        )
        finish(ctx, dst, "int8", {"quantization": f"ai-edge-quantizer {scheme}"})
        ctx.records["quantization"] = {
            "tool": "ai-edge-quantizer",
            "scheme": scheme,
            "op_types": list(self.op_types),
            "float_ops": len(float_ops),
        }
        ctx.checks.append(speedup_check("LiteRT XNNPACK", LiteRtSession(source), quantized, ctx.input_size, dst.name))
        kind = "dynamic-range" if self.dynamic else "static, calibrated"
        return [Artifact(dst.name, "tflite", description=f"TFLite int8 ({kind}, weight ops; float I/O)")]

    def _calibration_samples(self, ctx: ConvertContext, model: Path) -> dict:
        calib = ctx.calibration_set(AEQ_RECOMMENDED, layout=ctx.target.input_layout)
        signature, input_name = signature_input(model)
        return {signature: [{input_name: calib.images[i : i + 1]} for i in range(calib.count)]}


class TfliteToInt8Dynamic(TfliteToInt8):
    """Dynamic-range int8: int8 weights; LiteRT quantizes each activation at run time from its own
    range, so no calibration set and no clipping of inputs unlike the calibration images. On the
    trained reference ConvNeXt: worst view vs fp32 0.9996 here, static int8 0.987."""

    name = "tflite_to_int8"
    calibrated = False  # dynamic-range: no calibration set
    dynamic = True
    float_modules = False  # activations stay float already
    # Depthwise convolutions stay float: XNNPACK has no fast dynamically quantized depthwise kernel
    # (efficientnet_b0 at 224 px: 0.50× the fp32 speed with them int8, 1.08–1.22× without).
    op_types = ("FULLY_CONNECTED", "CONV_2D")
