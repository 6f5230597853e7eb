"""Exact rewrites of ONNX ops the Dataflow Compiler does not take into ops it does (zoo.hailo.ops).

Each is the op's own definition in supported ops, so the numbers do not move beyond float rounding
(torch_to_hailo_onnx re-checks parity on ONNX Runtime after them, with onnxslim's pass):
  - Neg(x)              → Mul(x, −1)                      (rotary embeddings' rotate-half)
  - ReduceL2(x, axes)   → Pow(ReduceSum(Mul(x, x), axes), ½)   (ConvNeXt-V2's and EdgeNeXt's GRN)
"""

from __future__ import annotations


def _constant(onnx, name: str, value: float, like_dtype: int):
    import numpy as np

    dtype = onnx.helper.tensor_dtype_to_np_dtype(like_dtype) if like_dtype else np.float32
    return onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name)  # a scalar, or the axes


def _neg(onnx, node, add_init, dtype):
    minus_one = add_init(f"{node.name or node.output[0]}/minus_one", -1.0, dtype)
    return [onnx.helper.make_node("Mul", [node.input[0], minus_one], list(node.output), name=f"{node.name}/as_mul")]


def _reduce_l2(onnx, node, add_init, dtype):
    base = node.name or node.output[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    inputs = [f"{base}/square_output"] + list(node.input[1:])  # opset 18+: axes already an input
    if "axes" in attrs:  # ReduceL2 ≤ 17 has axes as an attribute, ReduceSum ≥ 13 takes them as an input
        inputs.append(add_init(f"{base}/axes", attrs.pop("axes"), onnx.TensorProto.INT64))
    squared = onnx.helper.make_node("Mul", [node.input[0], node.input[0]], [inputs[0]], name=f"{base}/square")
    summed = onnx.helper.make_node("ReduceSum", inputs, [f"{base}/sum_output"], name=f"{base}/sum", **attrs)
    half = add_init(f"{base}/half", 0.5, dtype)
    root = onnx.helper.make_node("Pow", [f"{base}/sum_output", half], list(node.output), name=f"{base}/sqrt")
    return [squared, summed, root]


REWRITES = {"Neg": _neg, "ReduceL2": _reduce_l2}


def rewrite_for_dfc(model) -> tuple[object, dict[str, int]]:
    """(a copy of `model` with every rewritable op replaced, op type → how many were rewritten)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if not any(n.op_type in REWRITES for n in graph.node):
        return model, {}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    dtypes = {vi.name: vi.type.tensor_type.elem_type for vi in [*inferred.graph.value_info, *inferred.graph.input]}
    dtypes |= {init.name: init.data_type for init in graph.initializer}
    counts: dict[str, int] = {}
    nodes = []
    for node in graph.node:
        rewrite = REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rewrite is None:
            nodes.append(node)
            continue

        def add_init(name, value, dtype):
            graph.initializer.append(_constant(onnx, name, value, dtype))
            return name

        nodes += rewrite(onnx, node, add_init, dtypes.get(node.input[0], onnx.TensorProto.FLOAT))
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    del graph.node[:]
    graph.node.extend(nodes)
    return model, counts
