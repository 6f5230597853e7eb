"""ONNX → OpenVINO IR (.xml + .bin), weights stored at the precision the target names.

`openvino.save_model` compresses weights to fp16 unless told not to, so the choice is explicit here:
fp32 targets (and int8 targets, whose quantization step starts from this IR) keep fp32 weights,
fp16 targets store fp16 weights (decompressed to the inference precision at load time). The model's
metadata goes into the IR's rt_info under `zoo/<key>`. Before converting, every ONNX operator that
OpenVINO's ONNX frontend cannot convert is listed with its node name, all at once.
"""

from __future__ import annotations

from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require

EXTRA = "openvino"
RT_INFO_SECTION = "zoo"


def unsupported_onnx_ops(onnx_path: Path) -> list[str]:
    """'OpType (domain) at node NAME' for every node OpenVINO's ONNX frontend leaves unconverted."""
    ov = require("openvino", EXTRA)
    onnx = require("onnx", "onnx")
    frontend = ov.frontend.FrontEndManager().load_by_framework("onnx")
    input_model = frontend.load(str(onnx_path))
    partial = frontend.convert_partially(input_model)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    by_output = {out: node for node in graph.node for out in node.output}
    problems = []
    for op in partial.get_ordered_ops():
        if "FrameworkNode" not in op.get_type_name():
            continue
        attrs = op.get_attributes()
        op_type, domain = attrs.get("ONNX_META_type", "?"), attrs.get("ONNX_META_domain", "") or "ai.onnx"
        node_name = op.get_friendly_name()
        for output in op.outputs():  # the frontend names some nodes after their output: map back
            for tensor in output.get_names():
                if tensor in by_output and by_output[tensor].name:
                    node_name = by_output[tensor].name
        problems.append(f"{op_type} ({domain}) at node {node_name!r}")
    return problems


def set_rt_info(model, metadata: dict[str, str]) -> None:
    for key, value in metadata.items():
        model.set_rt_info(str(value), [RT_INFO_SECTION, key])


def read_rt_info(model) -> dict[str, str]:
    info = model.get_rt_info()
    if RT_INFO_SECTION not in info:
        return {}
    section = info[RT_INFO_SECTION]
    section = section.astype(dict) if hasattr(section, "astype") else section
    return {k: (v.astype(str) if hasattr(v, "astype") else str(v)) for k, v in section.items()}


def save_ir(model, xml: Path, *, fp16_weights: bool) -> list[Artifact]:
    ov = require("openvino", EXTRA)
    ov.save_model(model, str(xml), compress_to_fp16=fp16_weights)
    weights = "fp16" if fp16_weights else "fp32"
    return [
        Artifact(xml.name, "openvino", description=f"OpenVINO IR ({weights} weights)"),
        Artifact(xml.with_suffix(".bin").name, "openvino-weights", runnable=False, description="IR weights"),
    ]


class OnnxToOpenVino:
    name = "onnx_to_openvino"
    extra = EXTRA

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("openvino", self.extra)
        if upstream is None or upstream.format != "onnx":
            return ["onnx_to_openvino needs an ONNX model from the previous step"]
        unsupported = unsupported_onnx_ops(ctx.workdir / upstream.name)
        if unsupported:
            return [f"{len(unsupported)} operator(s) OpenVINO cannot convert: " + ", ".join(unsupported)]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        ov = require("openvino", self.extra)
        try:
            model = ov.convert_model(str(ctx.workdir / upstream.name))
        except Exception as exc:
            raise ConversionError(f"ONNX → OpenVINO conversion failed: {type(exc).__name__}: {exc}") from exc
        fp16 = ctx.target.precision == "fp16"
        set_rt_info(model, {**ctx.metadata, "ir_weights": "fp16" if fp16 else "fp32"})
        return save_ir(model, ctx.workdir / f"{ctx.target.artifact_name}.xml", fp16_weights=fp16)
