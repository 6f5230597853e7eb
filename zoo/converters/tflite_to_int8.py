"""TFLite fp32 → TFLite int8 through ai-edge-quantizer (LiteRT's quantizer), static int8, calibrated
on the model's calibration set (zoo.calibration).

Like the ONNX int8 step, only the operators that carry weights are quantized (FULLY_CONNECTED,
CONV_2D, DEPTHWISE_CONV_2D: per-channel int8 weights, int8 activations); attention's
activation×activation BATCH_MATMULs, normalizations, softmax and the L2 normalization stay in float
(quantizing every supported op cost a tiny ConvNeXt 0.96 cosine vs fp32), and so does the weight op
right after attention (ViT's output projection, see float_after_attention). Input and output stay
float32. The int8-vs-fp32 speedup on LiteRT (XNNPACK, this host's CPU) goes into the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.converters.torch_to_tflite import EXTRA, finish, quiet_fds
from zoo.errors import ConversionError, require

AEQ_RECOMMENDED = 100
DEFAULT_COUNT = 128
WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


_PASS_THROUGH = ("RESHAPE", "TRANSPOSE")


def float_after_attention(path: Path) -> list[str]:
    """Output tensor names of the weight ops fed by attention's float BATCH_MATMUL (through reshapes
    and transposes): ViT's attention output projection, whose int8 input costs the most accuracy
    (a tiny ViT: cosine vs fp32 0.959 with it quantized, 0.992 without)."""
    from zoo.converters.torch_to_tflite import tflite_schema

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


class TfliteToInt8:
    name = "tflite_to_int8"
    extra = EXTRA

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("ai_edge_quantizer", self.extra)
        require("ai_edge_litert.interpreter", self.extra)
        if upstream is None or upstream.format != "tflite":
            return ["tflite_to_int8 needs a TFLite model from the previous step"]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        from zoo.calibration import build_calibration_set
        from zoo.runtimes.litert import LiteRtSession
        from zoo.validators.timing import speedup_check

        require("ai_edge_quantizer", self.extra)
        from ai_edge_quantizer import quantizer as aeq
        from ai_edge_quantizer.qtyping import TFLOperationName

        source = ctx.workdir / upstream.name
        dst = ctx.workdir / f"{Path(upstream.name).stem}.int8.tflite"
        calib = build_calibration_set(
            ctx.model,
            ctx.input_size,
            folder=ctx.calibration_dir,
            count=ctx.calibration_count or DEFAULT_COUNT,
            recommended=AEQ_RECOMMENDED,
            layout=ctx.target.input_layout,
        )
        ctx.records["calibration"] = calib.record()
        if calib.warning:
            ctx.warnings.append(calib.warning)
        signature, input_name = signature_input(source)
        float_ops = float_after_attention(source)
        scope = scope_regex(float_ops)
        samples = {signature: [{input_name: calib.images[i : i + 1]} for i in range(calib.count)]}
        log = io.StringIO()
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            with quiet_fds(ctx.workdir / "aeq.log"), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                quantizer = aeq.Quantizer(str(source))
                quantizer.load_quantization_recipe([])
                for op in WEIGHT_OPS:
                    quantizer.add_static_config(scope, getattr(TFLOperationName, op), 8, 8)
                result = quantizer.quantize(quantizer.calibrate(samples))
                result.export_model(str(dst), overwrite=True)
        except Exception as exc:
            raise ConversionError(
                f"TFLite int8 quantization (ai-edge-quantizer) failed: {type(exc).__name__}: {exc}"
            ) from exc
        (ctx.workdir / "aeq.log").unlink(missing_ok=True)
        try:
            quantized = LiteRtSession(dst)
        except Exception as exc:  # fail closed: an int8 file LiteRT will not load is no artifact
            raise ConversionError(
                f"ai-edge-quantizer wrote an int8 model that LiteRT refuses to load: {str(exc).splitlines()[0][:300]}",
                hint="use the android-int8 or openvino-int8 target for this model",
            ) from exc
        finish(ctx, dst, "int8", {"quantization": "ai-edge-quantizer static int8, weight ops"})
        ctx.records["quantization"] = {
            "tool": "ai-edge-quantizer",
            "scheme": "static int8 activations, per-channel int8 weights",
            "op_types": list(WEIGHT_OPS),
            "float_ops": len(float_ops),
        }
        ctx.checks.append(speedup_check("LiteRT XNNPACK", LiteRtSession(source), quantized, ctx.input_size, dst.name))
        return [Artifact(dst.name, "tflite", description="TFLite int8 (static, weight ops; float I/O)")]
