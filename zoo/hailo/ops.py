"""Pre-flight: the ONNX ops Hailo's Dataflow Compiler (DFC) takes for hailo8l, checked before anything runs.

The DFC's own parser has the final word; it is proprietary and absent here, so zoo keeps a table of
what it is known to take and refuses everything else *before* export work is wasted (fail closed:
an op missing from the table is reported, with its node name, even if the DFC might take it).

Where the table comes from (each entry names its sources by key):

[zoo]   Hailo's public model zoo, tag v2.18 (github.com/hailo-ai/hailo_model_zoo):
        docs/public_models/HAILO8L/HAILO8L_classification.rst lists the networks compiled for hailo8l
        ("All models were compiled using Hailo Dataflow Compiler v2.18.0"), and cfg/networks/*.yaml
        names their sources: timm's vit_tiny/small/base and deit (the opset-17 ONNX
        `vit_small_patch16_224_ops17.onnx`), swin_tiny, levit, fastvit_sa12, efficientformer_l1,
        resmlp12, resnet/resnext, regnet, repvgg, efficientnet(-lite), mobilenet v1/v2/v3. An op is
        taken as supported here when the PyTorch/timm export of such an architecture contains it —
        zoo's inference from the zoo, not a statement by Hailo.
[alls]  Layer names in that zoo's model scripts (cfg/alls/**.alls), which show the DFC has those layer
        kinds: `ew_add`, `matmul`, `norm` (layer norm), `reduce_sum`, `space_to_depth`, `resize`,
        `depth_to_space`, `concat`, `slice`, `format_conversion`.
[test]  A public compile test with DFC v3.32 on Hailo-8 (github.com/SeSac01, "Hailo-8 지원/미지원 연산
        정리"): compiled Conv2d (depthwise, grouped, dilated), ConvTranspose2d, Max/Avg/Adaptive pooling,
        ReLU, LeakyReLU, Sigmoid, Tanh, Hardswish, Hardsigmoid, GELU, ELU, PReLU, BatchNorm2d,
        LayerNorm, InstanceNorm2d, Linear, Flatten, + − × ÷, cat, squeeze, permute, ZeroPad2d, clamp,
        reshape, interpolate (bilinear, nearest); failed: Conv1d (compile timeout) and a mean over
        non-spatial dims feeding reshape + Linear ("Invalid kernel shape").
[issue] hailo-ai/hailo_model_zoo issue #98 (maintainers): not every op is supported; unsupported ops
        usually sit at the end of the network and are run on the host — hence the cut hint below.

Assumptions (zoo's, not Hailo's): conditions on Div (constant divisor), Gather (constant index, e.g.
a class token), ReduceMean (spatial or last axis) and Pow (constant exponent) follow the patterns in
which those ops appear in the architectures above; an opset above 17 is refused because 17 is what
Hailo's zoo exports at. Fused attention ops are always refused: the DFC maps attention from its
explicit MatMul/Softmax form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zoo.errors import ConversionError

MAX_OPSET = 17

# op type → (sources, note)
SUPPORTED_OPS: dict[str, tuple[str, str]] = {
    "Conv": ("zoo, test", "standard, depthwise, grouped, dilated 2-D convolution"),
    "ConvTranspose": ("test, alls", "deconvolution"),
    "Gemm": ("zoo, test", "dense layer (nn.Linear)"),
    "MatMul": ("zoo, alls", "dense layer, or activation × activation (attention) as `matmul`"),
    "Add": ("zoo, alls, test", "`ew_add` (residual) or bias"),
    "Sub": ("zoo, test", "element-wise"),
    "Mul": ("zoo, test", "element-wise / scaling"),
    "Div": ("test", "by a constant only (e.g. GELU's x/√2)"),
    "Relu": ("zoo, test", ""),
    "LeakyRelu": ("test", ""),
    "PRelu": ("test", ""),
    "Elu": ("test", ""),
    "Sigmoid": ("zoo, test", "also in SiLU/Swish"),
    "Tanh": ("test", "also in tanh-GELU"),
    "HardSigmoid": ("zoo, test", "mobilenet_v3"),
    "HardSwish": ("zoo, test", "mobilenet_v3"),
    "Erf": ("zoo, test", "inside the exact GELU pattern (x·½·(1+erf(x/√2)))"),
    "Softmax": ("zoo", "attention"),
    "LayerNormalization": ("zoo, alls, test", "`norm` layers"),
    "BatchNormalization": ("zoo, test", "folded into the preceding conv"),
    "InstanceNormalization": ("test", ""),
    "GlobalAveragePool": ("zoo, test", ""),
    "GlobalMaxPool": ("test", ""),
    "AveragePool": ("zoo, test", ""),
    "MaxPool": ("zoo, test", ""),
    "ReduceMean": ("zoo", "over spatial axes (global pool, squeeze-excite) or the last axis"),
    "ReduceSum": ("alls", "`reduce_sum` layers"),
    "ReduceMax": ("alls", "`reduce_max` layers (softmax decomposition)"),
    "Reshape": ("zoo, test", ""),
    "Transpose": ("zoo, test", "permute"),
    "Flatten": ("zoo, test", ""),
    "Squeeze": ("zoo, test", ""),
    "Unsqueeze": ("zoo", ""),
    "Concat": ("zoo, alls, test", ""),
    "Split": ("zoo", "e.g. the qkv split of attention"),
    "Slice": ("zoo, alls", ""),
    "Gather": ("zoo", "with a constant index only (e.g. the class token of a ViT)"),
    "Pad": ("test", "zero padding"),
    "Clip": ("test", "clamp / ReLU6"),
    "Resize": ("alls, test", "bilinear, nearest"),
    "SpaceToDepth": ("alls", "`space_to_depth` layers"),
    "DepthToSpace": ("alls", "`depth_to_space` layers"),
    "Pow": ("zoo", "constant exponent only"),
    "Identity": ("zoo", "removed by the parser"),
    "Dropout": ("test", "inference no-op"),
    "Constant": ("zoo", "folded by the parser"),
}

# Fused attention ops (ONNX opset 23 `Attention`, ONNX Runtime contrib ops): the DFC needs attention
# spelled out as MatMul → Softmax → MatMul.
FUSED_ATTENTION_OPS = frozenset(
    {"Attention", "MultiHeadAttention", "GroupQueryAttention", "ScaledDotProductAttention", "PackedAttention"}
)


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape as ONNX shape inference gives them (None: unknown)."""

    dtype: int
    shape: tuple[int | None, ...] | None


def tensor_types(model) -> dict[str, TensorType]:
    """Every named tensor of the graph (inputs, outputs, intermediates, initializers) → its type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types: dict[str, TensorType] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        shape = (
            tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
            if t.HasField("shape")
            else None
        )
        types[vi.name] = TensorType(t.elem_type, shape)
    for init in model.graph.initializer:
        types[init.name] = TensorType(init.data_type, tuple(init.dims))
    return types


@dataclass(frozen=True)
class Finding:
    """One node the DFC is not known to take."""

    node: str
    op_type: str
    reason: str

    def line(self) -> str:
        module = module_of_node(self.node)
        return f"{self.op_type} at node {self.node!r}" + (f" (module {module})" if module else "") + f" ({self.reason})"


def module_of_node(node: str) -> str:
    """The torch module path a node of the legacy (TorchScript) exporter comes from, read off its scope name:
    '/backbone/stages/stages.0/blocks/blocks.1/mlp/grn/Div' → 'backbone.stages.0.blocks.1.mlp.grn'
    (a segment that repeats its parent's with '.N' is that child). '' for a name that carries no scope."""
    if not node.startswith("/") or node.count("/") < 2:
        return ""
    parts: list[str] = []
    for segment in node.strip("/").split("/")[:-1]:  # the last segment is the op itself
        if parts and segment.startswith(parts[-1] + "."):
            parts[-1] = segment
        else:
            parts.append(segment)
    return ".".join(parts)


@dataclass(frozen=True)
class PreflightReport:
    nodes: int
    op_counts: dict[str, int]
    unsupported: tuple[Finding, ...]
    graph_problems: tuple[str, ...]  # opset, input shape, batch …
    output_nodes: tuple[str, ...]  # the nodes that produce the graph outputs (the DFC's end nodes)
    input_names: tuple[str, ...]
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    cut_hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.graph_problems

    def record(self) -> dict:
        return {
            "nodes": self.nodes,
            "op_counts": self.op_counts,
            "unsupported": [f.__dict__ for f in self.unsupported],
            "graph_problems": list(self.graph_problems),
            "end_node_names": list(self.output_nodes),
            "start_node_names": list(self.input_names),
            "net_input_shapes": self.input_shapes,
            "table": "zoo.hailo.ops.SUPPORTED_OPS (sources in its docstring)",
        }

    def error(self, what: str = "the ONNX graph") -> ConversionError:
        """One line: the graph's problems, then each kind of unsupported op once — its first node in full
        (node, torch module, why) and how many more nodes share it."""
        kinds: dict[tuple[str, str], list[Finding]] = {}
        for finding in self.unsupported:
            kinds.setdefault((finding.op_type, finding.reason), []).append(finding)
        lines = list(self.graph_problems)
        for findings in kinds.values():
            more = len(findings) - 1
            lines.append(findings[0].line() + (f" and {more} more {findings[0].op_type} like it" if more else ""))
        total = len(self.graph_problems) + len(self.unsupported)
        message = f"{what} cannot go to the Hailo Dataflow Compiler (hailo8l): {total} problem(s): " + "; ".join(lines)
        return ConversionError(message, hint=self.cut_hint or None)


def _is_constant(name: str, constants: set[str]) -> bool:
    return name in constants


def _node_name(node, index: int) -> str:
    return node.name or f"#{index} ({node.op_type})"


def node_attribute(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


_LAYOUT_KEEPING = {"Add", "Sub", "Mul", "Div", "Relu", "Gelu", "Sigmoid", "Identity", "Erf"}


def _channels_last(name: str, producers: dict) -> bool:
    """Whether a rank-4 tensor is NHWC: it comes (through elementwise ops) from a LayerNormalization
    over its last axis — a norm is over channels — or a Transpose NCHW → NHWC (Swin's, ConvNeXt's
    channels-last blocks)."""
    seen = set()
    while name in producers and name not in seen:
        seen.add(name)
        node = producers[name]
        if node.op_type == "LayerNormalization":
            return node_attribute(node, "axis", -1) in (-1, 3)
        if node.op_type == "Transpose":
            return list(node_attribute(node, "perm", [])) == [0, 2, 3, 1]
        if node.op_type not in _LAYOUT_KEEPING:
            return False
        name = node.input[0]
    return False


def _condition_problem(node, constants: set[str], ranks: dict[str, int], producers: dict) -> str | None:
    """None when the node meets the condition of its table entry, else why not."""
    op = node.op_type
    if op == "Div" and not _is_constant(node.input[1], constants):
        return "divides by a computed tensor (e.g. an L2 normalization); only constant divisors are supported"
    if op == "Gather" and not _is_constant(node.input[1], constants):
        return "gathers with computed indices; only a constant index is supported"
    if op == "Pow" and not _is_constant(node.input[1], constants):
        return "computed exponent"
    if op == "ReduceMean":
        axes = node_attribute(node, "axes")
        if axes is None and len(node.input) > 1:
            axes = "computed" if not _is_constant(node.input[1], constants) else None
        rank = ranks.get(node.input[0])
        if axes == "computed":
            return "computed axes"
        if axes is not None and rank:
            norm = sorted(a % rank for a in axes)
            spatial_axes = {1, 2} if rank == 4 and _channels_last(node.input[0], producers) else {2, 3}
            spatial = rank == 4 and set(norm) <= spatial_axes
            last = norm == [rank - 1]
            if not (spatial or last):
                layout = ("NHWC " if spatial_axes == {1, 2} else "NCHW ") if rank == 4 else ""
                return (
                    f"reduces over axes {norm} of a rank-{rank} {layout}tensor; only spatial or last-axis means "
                    "are supported"
                )
    return None


def preflight(model) -> PreflightReport:
    """Check an onnx.ModelProto against the DFC op table and the graph rules of the hailo8l target."""

    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ranks = {name: len(t.shape) for name, t in tensor_types(model).items() if t.shape is not None}

    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        problems.append("no ai.onnx opset import")
    elif opset > MAX_OPSET:
        problems.append(f"opset {opset} is newer than {MAX_OPSET}, the opset Hailo's zoo exports at for hailo8l")

    real_inputs = [i for i in graph.input if i.name not in constants]
    input_shapes: dict[str, list[int]] = {}
    if len(real_inputs) != 1:
        problems.append(f"the graph has {len(real_inputs)} inputs; the hailo8l target takes one image input")
    for inp in real_inputs:
        dims = inp.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if any(d is None for d in shape):
            problems.append(
                f"input {inp.name!r} has a dynamic shape {[d.dim_param or d.dim_value for d in dims]}; "
                "the DFC needs a static shape"
            )
        elif shape[0] != 1:
            problems.append(f"input {inp.name!r} has batch {shape[0]}; the Hailo-ready ONNX has a static batch of 1")
        if len(shape) != 4:
            problems.append(f"input {inp.name!r} has rank {len(shape)}; an NCHW image input (rank 4) is expected")
        input_shapes[inp.name] = [int(d or 0) for d in shape]

    findings: list[Finding] = []
    counts: dict[str, int] = {}
    tensor_producers = {o: n for n in graph.node for o in n.output}
    for index, node in enumerate(graph.node):
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        name = _node_name(node, index)
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding(name, f"{node.domain}.{node.op_type}", "custom-domain op"))
        elif node.op_type in FUSED_ATTENTION_OPS:
            findings.append(
                Finding(name, node.op_type, "fused attention; export with explicit attention (timm fused_attn=False)")
            )
        elif node.op_type not in SUPPORTED_OPS:
            findings.append(Finding(name, node.op_type, "not in the DFC op table"))
        else:
            why = _condition_problem(node, constants, ranks, tensor_producers)
            if why:
                findings.append(Finding(name, node.op_type, why))

    producers = {o: _node_name(n, i) for i, n in enumerate(graph.node) for o in n.output}
    output_nodes = tuple(dict.fromkeys(producers[o.name] for o in graph.output if o.name in producers))
    hint = _cut_hint(graph, findings) if findings else ""
    if problems and not hint:
        hint = "export the model as zoo's hailo8l target does: opset 17, static batch 1, one NCHW image input"
    return PreflightReport(
        nodes=len(graph.node),
        op_counts=dict(sorted(counts.items())),
        unsupported=tuple(findings),
        graph_problems=tuple(problems),
        output_nodes=output_nodes,
        input_names=tuple(i.name for i in real_inputs),
        input_shapes=input_shapes,
        cut_hint=hint,
    )


def _cut_hint(graph, findings: list[Finding]) -> str:
    """Where to cut: everything from the first unsupported node on can run on the host; that is a
    useful split when it is a small tail of the graph (like a final L2 normalization)."""
    names = [_node_name(n, i) for i, n in enumerate(graph.node)]
    bad = {f.node for f in findings}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            consumers.setdefault(t, []).append(i)
    host = {i for i, n in enumerate(names) if n in bad}
    stack = list(host)
    while stack:
        for out in graph.node[stack.pop()].output:
            for j in consumers.get(out, []):
                if j not in host:
                    host.add(j)
                    stack.append(j)
    producer_of = {o: i for i, n in enumerate(graph.node) for o in n.output}
    boundary = sorted(
        {
            names[producer_of[t]]
            for i in host
            for t in graph.node[i].input
            if t in producer_of and producer_of[t] not in host
        }
    )
    heavy = sorted({graph.node[i].op_type for i in host} & {"Conv", "ConvTranspose", "Gemm", "MatMul"})
    share = len(host) / max(len(names), 1)
    if not heavy or share <= 0.05:  # no convolution/dense work left behind, or a very small tail
        where = ", ".join(repr(n) for n in boundary) or "the graph input"
        ops = ", ".join(sorted({graph.node[i].op_type for i in host}))
        return (
            f"they sit at the end of the network: cut the graph there (DFC end_node_names=[{where}]) and run the "
            f"last {len(host)} node(s) ({ops}) on the host, as zoo does with the final L2 normalization"
        )
    return (
        f"they sit inside the network: {len(host)} of {len(names)} nodes depend on them, so cutting there would leave "
        f"most of the model on the host — replace those modules with supported ops (zoo.hailo.ops.SUPPORTED_OPS), "
        f"or split the model at {', '.join(repr(n) for n in boundary[:5]) or 'the input'}"
    )


def op_table_rows() -> list[tuple[str, str, str]]:
    return [(op, src, note) for op, (src, note) in sorted(SUPPORTED_OPS.items())]
