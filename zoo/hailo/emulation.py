"""int8 emulation of the Hailo build, for hosts without the Dataflow Compiler: ONNX Runtime QDQ
quantization of the Hailo-ready ONNX, set up like Hailo's scheme. Its numbers are `emulated`.

What is mirrored:
- the interface of the .hef: the emulated model takes NHWC pixels 0–255 quantized exactly as uint8
  (scale 1, zero point 0) and runs the model script's `normalization` (mean/std × 255) first;
- 8-bit weights, per channel, symmetric (int8); 8-bit activations, asymmetric (uint8), calibrated
  min/max on the bundle's calibration set (the same calibration.npy the DFC gets), with ONNX Runtime's
  conventions (Softmax output on a fixed [0, 1] grid, Relu/Clip inputs on their output's range) —
  how Hailo's own quantizer places the softmax output is not public, so zoo keeps ORT's;
- fake quantization: the model runs with its Q/DQ pairs as written (zoo.runtimes.hailo), not ONNX
  Runtime's fused integer kernels;
- 16-bit activations wherever the model script asks for them (`quantization_param(…, precision_mode=
  a16_…)`) on layers zoo can map to ONNX tensors: Hailo's `ew_add<N>` layers (element-wise adds that
  are not a bias, numbered in graph order — zoo's assumption about Hailo's numbering) and
  `output_layer<N>` (the graph outputs). Later commands win, as in the script (the ViT recipe's
  `ew_add1` back to a8_w8).

What is not (so the figure is a baseline, not a prediction of the .hef): Hailo's optimization
algorithms (equalization, matmul correction, bias correction, AdaRound, fine-tuning), its fixed-point
kernels for LayerNorm/Softmax/GELU (ONNX Runtime runs ops it does not quantize in float between
quantized tensors), 4-bit weights (compression_level > 0), and script commands on layers zoo cannot
map (listed in the manifest as `not_emulated`).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from zoo.converters.onnx_quantize import quantize_qdq
from zoo.errors import require
from zoo.hailo.model_script import precision_commands

PIXELS_INPUT = "pixels"
# Metadata keys of the emulated model (read by zoo.runtimes.hailo to feed it).
META_KIND = "zoo_hailo_emulation"
META_MEAN = "folded_mean"  # applied inside the model: a consumer must not apply it again
META_STD = "folded_std"
BIAS_PRODUCERS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


@dataclass(frozen=True)
class PrecisionPlan:
    ew_adds: tuple[str, ...]  # output tensors of the Add nodes taken as Hailo's ew_add1, ew_add2, …
    sixteen_bit: tuple[str, ...]  # activation tensors quantized to 16 bits
    emulated: tuple[str, ...]  # script commands applied
    not_emulated: tuple[str, ...]  # script commands on layers zoo cannot map to ONNX tensors
    sixteen_bit_weights: tuple[str, ...] = ()  # weight initializers quantized to 16 bits

    def record(self) -> dict:
        return {
            "scheme": "ONNX Runtime QDQ: int8 per-channel symmetric weights, uint8 asymmetric activations "
            "(min/max calibration), uint8 pixel input (scale 1), 16-bit activations where the model script says",
            "ew_add_layers": len(self.ew_adds),
            "sixteen_bit_tensors": list(self.sixteen_bit),
            "sixteen_bit_weights": list(self.sixteen_bit_weights),
            "emulated_commands": list(self.emulated),
            "not_emulated_commands": list(self.not_emulated),
        }


ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Tanh", "Erf", "Sigmoid", "Sqrt", "Neg"}


def ew_add_outputs(graph) -> list[str]:
    """Output tensors of the element-wise adds Hailo keeps as `ew_add` layers, in graph order.

    zoo's reading of Hailo's parser (an assumption): an Add is an `ew_add` unless it is a bias (a
    constant added to a conv/dense/matmul output, folded into that layer), a scalar constant (part of
    an activation or a normalization, e.g. GELU's `1 + erf(…)`), or internal to an element-wise
    activation (both inputs come from one tensor through element-wise ops only, e.g. tanh-GELU's
    `x + 0.044715·x³`). What remains: residual adds and tensor-constant adds (a position embedding).
    """
    constants = {i.name: i for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    constants[n.output[0]] = a.t
    producer = {o: n for n in graph.node for o in n.output}

    def size(name: str) -> int:
        t = constants[name]
        return int(np.prod(list(t.dims))) if len(t.dims) else 1

    def roots(tensor: str, depth: int = 8) -> set[str]:
        """The tensors `tensor` is computed from through element-wise ops only (constants left out)."""
        if tensor in constants:
            return set()
        node = producer.get(tensor)
        if node is None or node.op_type not in ELEMENTWISE or depth == 0:
            return {tensor}
        out: set[str] = set()
        for t in node.input:
            out |= roots(t, depth - 1)
        return out

    outs = []
    for node in graph.node:
        if node.op_type != "Add":
            continue
        a, b = node.input[0], node.input[1]
        const = a if a in constants else b if b in constants else None
        if const is not None:
            other = b if const == a else a
            if size(const) == 1:
                continue  # a scalar: part of an activation / normalization
            if other in producer and producer[other].op_type in BIAS_PRODUCERS:
                continue  # a bias
        elif roots(a) & roots(b):
            continue  # inside an element-wise activation
        outs.append(node.output[0])
    return outs


def plan_precision(graph, script_text: str, net_name: str) -> PrecisionPlan:
    adds = ew_add_outputs(graph)
    names = {f"ew_add{i + 1}": t for i, t in enumerate(adds)}
    names |= {f"output_layer{i + 1}": o.name for i, o in enumerate(graph.output)}
    state: dict[str, str] = {}
    emulated, skipped = [], []
    for layers, mode in precision_commands(script_text):
        patterns = [p.strip() for p in layers.strip("{}[] ").split(",") if p.strip()]
        targets = []
        for pattern in patterns:
            pattern = pattern.strip("{}[] ")
            pattern = pattern.split("/", 1)[1] if pattern.startswith(f"{net_name}/") else pattern
            targets += [t for name, t in names.items() if fnmatch.fnmatchcase(name, pattern)]
        command = f"quantization_param({layers}, precision_mode={mode})"
        if not targets or not (mode.startswith("a16") or mode.startswith("a8")):
            skipped.append(command)
            continue
        emulated.append(command)
        for t in targets:
            state[t] = mode
    sixteen = tuple(t for t, m in state.items() if m.startswith("a16"))
    return PrecisionPlan(tuple(adds), sixteen, tuple(emulated), tuple(skipped))


def weight_axes(graph, nodes: set[str]) -> dict[str, int]:
    """The weight initializers of `nodes` (conv, dense, matmul by a constant) → their output-channel
    axis, the axis their per-channel scales run along."""
    initializers = {i.name: len(i.dims) for i in graph.initializer}
    axes: dict[str, int] = {}
    for node in graph.node:
        if (node.name or node.output[0]) not in nodes or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        rank = initializers[node.input[1]]
        if node.op_type == "Conv":
            axes[node.input[1]] = 0
        elif node.op_type == "ConvTranspose":
            axes[node.input[1]] = 1
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 0 if trans_b else 1
        elif node.op_type == "MatMul" and rank >= 2:
            axes[node.input[1]] = rank - 1
    return axes


def device_interface_model(model, mean_255, std_255):
    """The Hailo-ready ONNX behind the .hef's interface: NHWC 0–255 pixels → normalization → network."""
    onnx = require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inp = graph.input[0]
    n, c, h, w = (d.dim_value for d in inp.type.tensor_type.shape.dim)
    original = inp.name
    mean = np.asarray(mean_255, np.float32).reshape(1, c, 1, 1)
    inv_std = (1.0 / np.asarray(std_255, np.float64)).astype(np.float32).reshape(1, c, 1, 1)
    graph.initializer.extend(
        [numpy_helper.from_array(mean, "hailo_norm_mean"), numpy_helper.from_array(inv_std, "hailo_norm_inv_std")]
    )
    front = [
        helper.make_node("Transpose", [PIXELS_INPUT], ["pixels_nchw"], perm=[0, 3, 1, 2], name="hailo_input_nhwc"),
        helper.make_node("Sub", ["pixels_nchw", "hailo_norm_mean"], ["pixels_centered"], name="hailo_norm_sub"),
        helper.make_node("Mul", ["pixels_centered", "hailo_norm_inv_std"], [original], name="hailo_normalization1"),
    ]
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input.remove(inp)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS_INPUT, TensorProto.FLOAT, [n, h, w, c]))
    return model


def build_emulated_model(
    onnx_path: Path,
    out_path: Path,
    *,
    script_text: str,
    net_name: str,
    calibration_nhwc: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    metadata: dict[str, str],
    sixteen_bit: list[str] = (),
    sixteen_bit_weights: dict[str, int] | None = None,
) -> PrecisionPlan:
    """Write the emulated int8 model to `out_path`; returns what the emulation applied. `sixteen_bit`:
    more activation tensors at 16 bits, `sixteen_bit_weights`: weight initializer → its channel axis,
    quantized per channel at 16 bits (together: `precision_mode=a16_w16` on the model's float_modules)."""
    onnx = require("onnx", "onnx")
    from onnxruntime.quantization import QuantType

    source = onnx.load(str(onnx_path))
    plan = plan_precision(source.graph, script_text, net_name)
    if sixteen_bit:
        plan = replace(plan, sixteen_bit=tuple(dict.fromkeys([*plan.sixteen_bit, *sixteen_bit])))
    plan = replace(plan, sixteen_bit_weights=tuple(sorted(sixteen_bit_weights or {})))
    mean_255 = [m * 255.0 for m in mean]
    std_255 = [s * 255.0 for s in std]
    float_model = device_interface_model(source, mean_255, std_255)
    tmp = out_path.with_name(out_path.stem + ".float.tmp.onnx")
    onnx.save_model(float_model, str(tmp))
    overrides: dict = {t: [{"quant_type": QuantType.QUInt16}] for t in plan.sixteen_bit}
    overrides |= {
        w: [{"quant_type": QuantType.QInt16, "axis": axis}] for w, axis in (sixteen_bit_weights or {}).items()
    }
    # The device receives uint8 pixels: quantize the input on exactly that grid.
    overrides[PIXELS_INPUT] = [
        {"quant_type": QuantType.QUInt8, "scale": np.array(1.0, np.float32), "zero_point": np.array(0, np.uint8)}
    ]
    try:
        quantize_qdq(
            tmp,
            out_path,
            np.ascontiguousarray(calibration_nhwc, np.float32),
            per_channel=True,
            activation_type="QUInt8",
            weight_type="QInt8",
            tensor_overrides=overrides,
            preprocess=False,  # keep tensor names: the 16-bit overrides address them
            batch=1,
            stream_ranges=True,
        )
    finally:
        tmp.unlink(missing_ok=True)
    quantized = onnx.load(str(out_path))
    props = {
        **metadata,
        META_KIND: "ONNX Runtime QDQ int8, Hailo-like scheme (zoo.hailo.emulation)",
        "layout": "NHWC",
        "input": "NHWC float32 RGB pixels 0–255 (quantized as uint8), normalization inside",
        META_MEAN: json.dumps(list(mean)),
        META_STD: json.dumps(list(std)),
        "sixteen_bit_tensors": json.dumps(list(plan.sixteen_bit)),
        "sixteen_bit_weights": json.dumps(list(plan.sixteen_bit_weights)),
        # ONNX Runtime's extended optimizations fuse Q/DQ groups into its own integer kernels, which on CPUs
        # without VNNI saturate (u8×s8) and need not compute what the Q/DQ pairs say: run it as written
        "onnxruntime_graph_optimization": "basic",
    }
    onnx.helper.set_model_props(quantized, props)
    onnx.save_model(quantized, str(out_path))
    return plan
