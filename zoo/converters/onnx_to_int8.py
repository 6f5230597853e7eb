"""ONNX fp32 → ONNX int8 (QDQ) through ONNX Runtime static quantization: quant_pre_process, then
quantize_static with per-channel int8 weights and uint8 activations, calibrated on the model's
calibration set (zoo.calibration).

What is quantized depends on the graph. With attention (a Softmax): only the operators that carry
weights (Conv, Gemm, MatMul with a constant operand); attention's activation×activation MatMuls,
layer norms, softmax and residual adds stay in float, because quantizing them costs far more
accuracy than it buys (vit_small: cosine vs fp32 0.75 with everything quantized, 0.994 without,
and 1.5× faster). Without attention (CNNs): every operator ONNX Runtime can quantize, which saves
the quantize/dequantize pairs between neighbours (convnext_tiny: 1.45× vs 1.32× for weight ops
only). Either way the ops after the last weight op (the embedding's L2 normalization) stay float. The resulting QDQ graph is what ONNX Runtime
Mobile wants: the next step (onnx_to_ort) fuses it on the device. The int8-vs-fp32 speedup on ONNX
Runtime (this host's CPU) goes into the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require

ORT_RECOMMENDED = 100  # ONNX Runtime's quantization guide: a few hundred samples; 100 as the floor
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class QdqScheme:
    """The quantization recipe, recorded in the manifest."""

    activation_type: str = "QUInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    op_types: tuple[str, ...] | None = WEIGHT_OPS  # None: every op type ONNX Runtime quantizes
    float_nodes: tuple[str, ...] = ()  # nodes left in float (activation×activation MatMuls, the tail …)

    def record(self) -> dict:
        d = asdict(self)
        d["op_types"] = list(self.op_types) if self.op_types else "all quantizable"
        d["float_nodes"] = list(self.float_nodes)
        return d


def activation_matmuls(graph) -> list[str]:
    """MatMul nodes with no constant operand (attention's q·kᵀ and attn·v)."""
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def float_tail(graph) -> list[str]:
    """Nodes after the last weight op: the embedding's L2 normalization."""
    last = max((i for i, n in enumerate(graph.node) if n.op_type in WEIGHT_OPS), default=-1)
    return [n.name for n in graph.node[last + 1 :]]


def scheme_for(graph) -> QdqScheme:
    if any(n.op_type == "Softmax" for n in graph.node):
        return QdqScheme(float_nodes=tuple(activation_matmuls(graph) + float_tail(graph)))
    return QdqScheme(op_types=None, float_nodes=tuple(float_tail(graph)))


class OnnxToInt8:
    name = "onnx_to_int8"
    extra = "onnx"
    calibrated = True  # reads a calibration set (--calibration)
    float_modules = True  # leaves the model's float_modules in float

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("onnxruntime", self.extra)
        require("onnx", self.extra)
        if upstream is None or upstream.format != "onnx":
            return ["onnx_to_int8 needs an ONNX model from the previous step"]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        from zoo.converters.onnx_quantize import quantize_qdq
        from zoo.runtimes.onnxruntime import OrtSession
        from zoo.validators.timing import speedup_check

        onnx = require("onnx", self.extra)
        source = ctx.workdir / upstream.name
        dst = ctx.workdir / f"{Path(upstream.name).stem}.int8.onnx"
        from zoo.diagnose import nodes_kept_in_float

        calib = ctx.calibration_set(ORT_RECOMMENDED)
        scheme = scheme_for(onnx.load(str(source), load_external_data=False).graph)
        kept = nodes_kept_in_float(ctx, lambda: OrtSession(source), dst.name)
        if kept:  # the model's float_modules for this target
            scheme = replace(scheme, float_nodes=tuple(dict.fromkeys([*scheme.float_nodes, *kept])))
        quantize_qdq(
            source,
            dst,
            calib.images,
            per_channel=scheme.per_channel,
            activation_type=scheme.activation_type,
            weight_type=scheme.weight_type,
            op_types=list(scheme.op_types) if scheme.op_types else None,
            nodes_to_exclude=list(scheme.float_nodes),
            # 7-bit weights: ONNX Runtime's u8×s8 kernels on x86 without VNNI saturate with 8-bit ones (seen
            # here on AVX2: tiny_vit min cosine 0.917 fused vs 0.999 as written); ARM and VNNI lose ~nothing
            reduce_range=True,
        )
        model = onnx.load(str(dst))
        onnx.helper.set_model_props(model, {**ctx.metadata, "quantization": "onnxruntime QDQ int8"})
        onnx.save_model(model, str(dst))
        try:
            onnx.checker.check_model(str(dst), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"the int8 ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        ctx.records["quantization"] = {
            "tool": "onnxruntime.quantization (QDQ)",
            **scheme.record(),
            "weights_range": "7-bit (reduce_range: no u8×s8 saturation on x86 without VNNI)",
        }
        ctx.checks.append(
            speedup_check("ONNX Runtime CPU", OrtSession(source), OrtSession(dst), ctx.input_size, dst.name)
        )
        return [
            Artifact(
                dst.name,
                "onnx",
                description="ONNX int8 QDQ (per-channel s8 weights, u8 activations)",
            )
        ]
