"""Exact rewrites of ONNX ops the Dataflow Compiler does not take into ops it does (zoo.hailo.ops).

Each is the op's own definition in supported ops, so the numbers do not move beyond float rounding
(torch_to_hailo_onnx re-checks parity on ONNX Runtime after them, with onnxslim's pass):
  - Neg(x)                → Mul(x, −1)                              (rotary embeddings' rotate-half)
  - ReduceL2(x, axes)     → Pow(ReduceSum(Mul(x, x), axes), ½)      (ConvNeXt-V2's and EdgeNeXt's GRN)
  - ReduceMean over the tokens of a (1, N, C) tensor → Transpose to (1, C, N), Unsqueeze to (1, C, 1, N),
    a spatial ReduceMean, Reshape to the original output: the token mean as the global average pool
    the DFC takes (LeViT's and DINOv3's pooled head)
  - Expand(x, shape) whose every consumer is an element-wise Add/Sub/Mul/Div with an operand of that
    shape → removed: the consumer's own broadcasting computes the same (MobileViT-v2's context vector)
  - Div(x, Clip|Max(ReduceL2(x, last axis), ε)) — an L2 normalization, F.normalize — → a
    LayerNormalization over the last axis of [x, −x] (mean 0, so it divides by √(Σx²/N + ε′)), scaled by
    1/√N, its first half kept: x / √(Σx² + Nε′) with Nε′ = ε² (EdgeNeXt's XCA normalizes q and k so).
    The tensor is viewed as (1, rows, N) around it, the layout of a ViT's layer norm.
A rewrite that does not apply to a node (another rank, axes given as an input) leaves it as it is.
"""

from __future__ import annotations

from zoo.hailo.ops import TensorType, node_attribute, tensor_types


def _constant(onnx, name: str, value, dtype: int):
    import numpy as np

    return onnx.numpy_helper.from_array(
        np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(dtype or onnx.TensorProto.FLOAT)), name
    )


def _attrs(onnx, node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _neg(onnx, node, add_init, x: TensorType):
    base = node.name or node.output[0]
    minus_one = add_init(f"{base}/minus_one", -1.0, x.dtype)
    return [onnx.helper.make_node("Mul", [node.input[0], minus_one], list(node.output), name=f"{base}/as_mul")]


def _reduce_l2(onnx, node, add_init, x: TensorType):
    base = node.name or node.output[0]
    attrs = _attrs(onnx, node)
    inputs = [f"{base}/square_output"] + list(node.input[1:])  # opset 18+: axes already an input
    if "axes" in attrs:  # ReduceL2 ≤ 17 has axes as an attribute, ReduceSum ≥ 13 takes them as an input
        inputs.append(add_init(f"{base}/axes", attrs.pop("axes"), onnx.TensorProto.INT64))
    squared = onnx.helper.make_node("Mul", [node.input[0], node.input[0]], [inputs[0]], name=f"{base}/square")
    summed = onnx.helper.make_node("ReduceSum", inputs, [f"{base}/sum_output"], name=f"{base}/sum", **attrs)
    half = add_init(f"{base}/half", 0.5, x.dtype)
    root = onnx.helper.make_node("Pow", [f"{base}/sum_output", half], list(node.output), name=f"{base}/sqrt")
    return [squared, summed, root]


def _token_mean(onnx, node, add_init, x: TensorType):
    shape = x.shape
    if len(node.input) > 1 or shape is None or len(shape) != 3 or None in shape or shape[0] != 1:
        return None
    if sorted(a % 3 for a in node_attribute(node, "axes", [])) != [1]:
        return None
    _, _, channels = shape
    keep = bool(node_attribute(node, "keepdims", 1))
    base = node.name or node.output[0]
    make = onnx.helper.make_node
    return [
        make("Transpose", [node.input[0]], [f"{base}/tokens_last"], name=f"{base}/to_channels_first", perm=[0, 2, 1]),
        make(
            "Unsqueeze",
            [f"{base}/tokens_last", add_init(f"{base}/row_axis", [2], onnx.TensorProto.INT64)],
            [f"{base}/as_image"],
            name=f"{base}/as_image",
        ),
        make("ReduceMean", [f"{base}/as_image"], [f"{base}/pooled"], name=f"{base}/pool", axes=[2, 3], keepdims=1),
        make(
            "Reshape",
            [
                f"{base}/pooled",
                add_init(f"{base}/shape", [1, 1, channels] if keep else [1, channels], onnx.TensorProto.INT64),
            ],
            list(node.output),
            name=f"{base}/as_before",
        ),
    ]


def l2_normalizations(graph, tensors, expands: dict[str, str]) -> dict[str, float]:
    """{Div node: ε} for each Div(x, Clip/Max(ReduceL2(x, last axis, keepdims), ε)) on a static x whose
    leading axis is 1 (`expands`: Expand outputs already removed, read through)."""
    import numpy as np
    import onnx

    producer = {o: n for n in graph.node for o in n.output}
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            value = onnx.helper.get_attribute_value(n.attribute[0])
            constants[n.output[0]] = (
                onnx.numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
            )
    found = {}
    for node in graph.node:
        if node.op_type != "Div" or len(node.input) != 2:
            continue
        x = node.input[0]
        shape = getattr(tensors.get(x), "shape", None)
        if not shape or None in shape or shape[0] != 1 or len(shape) < 2:
            continue
        clamp = producer.get(expands.get(node.input[1], node.input[1]))
        if clamp is None or clamp.op_type not in ("Clip", "Max"):
            continue
        operands = [i for i in clamp.input if i]
        eps = [constants[i] for i in operands[1:] if i in constants]
        if len(operands) != 2 or len(eps) != 1:
            continue  # a Clip with a max, or a computed floor, is something else
        norm = producer.get(operands[0])
        if norm is None or norm.op_type != "ReduceL2" or norm.input[0] != x or len(norm.input) > 1:
            continue
        axes = [a % len(shape) for a in node_attribute(norm, "axes", [])]
        if axes != [len(shape) - 1] or not node_attribute(norm, "keepdims", 1):
            continue
        found[node.name or node.output[0]] = float(eps[0].reshape(-1)[0])
    return found


def _layer_norm_l2(onnx, node, add_init, x: TensorType, eps: float):
    """x / max(‖x‖, ε) along the last axis as a layer norm of [x, −x] (see the module's docstring)."""
    import math

    shape = list(x.shape)
    n = shape[-1]
    rows = math.prod(shape[1:-1])
    base = node.name or node.output[0]
    make = onnx.helper.make_node
    i64 = onnx.TensorProto.INT64
    return [
        make("Reshape", [node.input[0], add_init(f"{base}/rows", [1, rows, n], i64)], [f"{base}/x"], name=f"{base}/x"),
        make("Mul", [f"{base}/x", add_init(f"{base}/minus_one", -1.0, x.dtype)], [f"{base}/neg"], name=f"{base}/neg"),
        make("Concat", [f"{base}/x", f"{base}/neg"], [f"{base}/pair"], name=f"{base}/pair", axis=-1),
        make(
            "LayerNormalization",
            [
                f"{base}/pair",
                add_init(f"{base}/scale", [1.0 / math.sqrt(n)] * (2 * n), x.dtype),
                add_init(f"{base}/bias", [0.0] * (2 * n), x.dtype),
            ],
            [f"{base}/normalized"],
            name=f"{base}/layer_norm",
            axis=-1,
            epsilon=max(eps, 1e-30) ** 2 / n,
        ),
        make(
            "Slice",
            [
                f"{base}/normalized",
                add_init(f"{base}/start", [0], i64),
                add_init(f"{base}/end", [n], i64),
                add_init(f"{base}/axis", [2], i64),
            ],
            [f"{base}/half"],
            name=f"{base}/first_half",
        ),
        make("Reshape", [f"{base}/half", add_init(f"{base}/shape", shape, i64)], list(node.output), name=f"{base}/y"),
    ]


BROADCASTING = {"Add", "Sub", "Mul", "Div"}


def redundant_expands(graph, tensors) -> dict[str, str]:
    """{Expand output: its input} for the Expands whose every consumer is a broadcasting element-wise op
    whose other operand already has the Expand's (static) output shape."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    found = {}
    for node in graph.node:
        if node.op_type != "Expand" or node.output[0] in outputs:
            continue
        shape = getattr(tensors.get(node.output[0]), "shape", None)
        users = consumers.get(node.output[0], [])
        if not users or shape is None or None in shape:
            continue
        ok = all(
            user.op_type in BROADCASTING
            and len(user.input) == 2
            and list(user.input).count(node.output[0]) == 1
            and getattr(tensors.get(next(i for i in user.input if i != node.output[0])), "shape", None) == shape
            for user in users
        )
        if ok:
            found[node.output[0]] = node.input[0]
    return found


REWRITES = {"Neg": _neg, "ReduceL2": _reduce_l2, "ReduceMean": _token_mean}


def rewrite_for_dfc(model) -> tuple[object, dict[str, int]]:
    """(a copy of `model` with every rewritable op replaced, op type → how many were rewritten)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if not any(n.op_type in REWRITES or n.op_type in ("Expand", "Div") for n in graph.node):
        return model, {}
    tensors = tensor_types(model)
    expands = redundant_expands(graph, tensors)
    norms = l2_normalizations(graph, tensors, expands)

    def add_init(name, value, dtype):
        graph.initializer.append(_constant(onnx, name, value, dtype))
        return name

    counts: dict[str, int] = {"Expand": len(expands)} if expands else {}
    if norms:
        counts["Div"] = len(norms)  # the L2 normalizations; their ReduceL2/Clip are left unused
    first = []
    for node in graph.node:
        if node.op_type == "Expand" and node.output[0] in expands:
            continue
        for i, name in enumerate(node.input):
            if name in expands:
                node.input[i] = expands[name]
        key = node.name or node.output[0]
        if key in norms:
            first += _layer_norm_l2(onnx, node, add_init, tensors[node.input[0]], norms[key])
        else:
            first.append(node)
    nodes = []
    for node in _live(first, {o.name for o in graph.output}):
        rewrite = REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        x = tensors.get(node.input[0], TensorType(onnx.TensorProto.FLOAT, None)) if node.input else None
        replaced = rewrite(onnx, node, add_init, x) if rewrite and x else None
        if replaced is None:
            nodes.append(node)
            continue
        nodes += replaced
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    return model, counts


def _live(nodes: list, outputs: set[str]) -> list:
    """The nodes the graph's outputs depend on (a removed Expand leaves its shape computation unused)."""
    needed, kept = set(outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1]
