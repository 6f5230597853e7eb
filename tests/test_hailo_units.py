"""Hailo-8L building blocks, without the pipeline: pre-flight, model script, emulation plan, estimate."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from zoo.errors import ConversionError
from zoo.fidelity import Fidelity, Status
from zoo.hailo.emulation import ew_add_outputs, plan_precision
from zoo.hailo.estimate import PUBLISHED, estimate_latency, latency_check, node_gflops
from zoo.hailo.model_script import (
    build_model_script,
    family_of,
    parse_normalization,
    precision_commands,
    read_override,
)
from zoo.hailo.ops import preflight
from zoo.targets import get_target


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def _graph(nodes, inits, *, opset=17, batch=1, outputs=("y",)):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", [x], outs, inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    )


def _planted_model(**kw):
    """Conv → Relu → [TopK planted mid-graph] → Conv → GAP → Flatten → Gemm → L2 normalization (tail)."""
    rng = np.random.default_rng(0)
    inits = [
        _const("w1", rng.standard_normal((4, 3, 3, 3))),
        _const("w2", rng.standard_normal((4, 4, 1, 1))),
        _const("fc", rng.standard_normal((4, 4))),
        numpy_helper.from_array(np.asarray([1], np.int64), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="stem/conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="stem/relu"),
        helper.make_node("TopK", ["r1", "k"], ["tk", "tk_idx"], name="mid/topk", axis=1),
        helper.make_node("Attention", ["r1"], ["att"], name="mid/fused_attention", domain="com.microsoft"),
        helper.make_node("Add", ["tk", "att"], ["mix"], name="mid/add"),
        helper.make_node("Conv", ["mix", "w2"], ["c2"], name="body/conv"),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"], name="pool"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["emb"], name="head/gemm"),
        helper.make_node("ReduceL2", ["emb"], ["norm"], name="l2/norm", axes=[1], keepdims=1),
        helper.make_node("Div", ["emb", "norm"], ["y"], name="l2/div"),
    ]
    return _graph(nodes, inits, **kw)


def test_preflight_lists_every_planted_unsupported_op_with_its_node_name():
    report = preflight(_planted_model())
    found = {(f.op_type, f.node) for f in report.unsupported}
    assert found == {
        ("TopK", "mid/topk"),
        ("com.microsoft.Attention", "mid/fused_attention"),
        ("ReduceL2", "l2/norm"),
        ("Div", "l2/div"),
    }
    assert not report.ok and report.graph_problems == ()
    error = report.error("planted.onnx")
    assert isinstance(error, ConversionError) and error.exit_code == 3
    message = str(error)
    for _, node in found:
        assert repr(node) in message  # one error, every node named
    assert "4 problem(s)" in message
    assert "divides by a computed tensor" in message
    # TopK/Attention sit mid-graph: everything after them would have to leave the chip
    assert "inside the network" in error.hint


def test_preflight_error_names_each_kind_once_with_its_torch_module_and_a_count():
    from zoo.hailo.ops import Finding, PreflightReport, module_of_node

    assert (
        module_of_node("/backbone/stages/stages.0/blocks/blocks.1/mlp/grn/Div") == "backbone.stages.0.blocks.1.mlp.grn"
    )
    assert module_of_node("/Div") == "" and module_of_node("node_div_3") == ""
    findings = tuple(
        Finding(f"/backbone/stages/stages.{i}/grn/Div", "Div", "divides by a computed tensor") for i in range(12)
    ) + (Finding("/backbone/head/TopK", "TopK", "not in the table"),)
    message = str(PreflightReport(100, {}, findings, (), (), ()).error("m.onnx"))
    assert "13 problem(s)" in message and message.count("Div at node") == 1
    assert "(module backbone.stages.0.grn)" in message and "and 11 more Div like it" in message
    assert "TopK at node '/backbone/head/TopK' (module backbone.head)" in message and "more TopK" not in message
    assert "\n" not in message and len(message) < 600


def test_preflight_hint_cuts_a_tail_of_unsupported_ops():
    model = _planted_model()
    nodes = [n for n in model.graph.node if n.name not in ("mid/topk", "mid/fused_attention", "mid/add")]
    nodes[2].input[0] = "r1"  # body/conv reads the relu directly
    clean = _graph(nodes, list(model.graph.initializer))
    report = preflight(clean)
    assert {f.node for f in report.unsupported} == {"l2/norm", "l2/div"}
    assert "end_node_names=['head/gemm']" in report.cut_hint
    assert "last 2 node(s) (Div, ReduceL2)" in report.cut_hint


def test_preflight_checks_the_graph_rules():
    report = preflight(_graph([helper.make_node("Relu", ["images"], ["y"], name="r")], [], opset=18, batch=2))
    assert [f.node for f in report.unsupported] == []
    assert any("opset 18" in p for p in report.graph_problems)
    assert any("batch 2" in p for p in report.graph_problems)
    ok = preflight(_graph([helper.make_node("Relu", ["images"], ["y"], name="r")], []))
    assert ok.ok and ok.output_nodes == ("r",) and ok.input_shapes == {"images": [1, 3, 8, 8]}


def test_model_script_has_normalization_recipe_and_override(registry, tmp_path, write_registry):
    spec = registry.get("tiny_vit")
    script = build_model_script(spec, "tiny_vit", calibset_size=64, family=family_of(spec))
    text = script.render()
    mean, std = parse_normalization(text)
    assert mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255], abs=1e-6)
    assert std == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255], abs=1e-6)
    assert "normalization1 = normalization([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])" in text
    assert "model_optimization_flavor(optimization_level=0, compression_level=0)" in text  # Hailo's ViT recipe
    assert "calibset_size=64" in text and "performance_param(compiler_optimization_level=max)" in text
    assert text.isascii() and all(not line.split("#")[0].strip() or "#" not in line for line in text.splitlines())
    assert precision_commands(text) == [
        ("{tiny_vit/ew_add*}", "a16_w16"),
        ("{tiny_vit/ew_add1}", "a8_w8"),
        ("output_layer1", "a16_w16"),
    ]
    convnext = registry.get("tiny_convnext")
    assert family_of(convnext) == "convnext" and family_of(registry.get("tiny_efficientnet")) == "cnn"
    cnn_text = build_model_script(registry.get("tiny_efficientnet"), "e", calibset_size=8, family="cnn").render()
    assert precision_commands(cnn_text) == [("output_layer1", "a16_w16")]
    assert "optimization_level=2" in cnn_text

    # the user override file (tags.hailo_model_script, relative to the registry file) is appended last
    (tmp_path / "extra.alls").write_text("quantization_param({tiny_convnext/ew_add*}, precision_mode=a8_w8)\n")
    path = write_registry(
        """
[models.tiny_convnext]
override = true
role = "student"
teacher = "tiny_teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [32]
embedding_dim = 32
embedding_space = "tiny-32"
tags = { tier = "tiny", hailo_model_script = "extra.alls" }
"""
    )
    from zoo.registry import load_registry

    spec = load_registry([path]).get("tiny_convnext")
    text_, source = read_override(spec)
    script = build_model_script(
        spec, "tiny_convnext", calibset_size=8, family="convnext", override_text=text_, override_source=source
    )
    rendered = script.render()
    assert rendered.rstrip().endswith("quantization_param({tiny_convnext/ew_add*}, precision_mode=a8_w8)")
    assert "# --- user override: " in rendered and script.record()["override"]["path"] == source


def _residual_graph():
    rng = np.random.default_rng(1)
    inits = [
        _const("w", rng.standard_normal((3, 3, 1, 1))),
        _const("b", rng.standard_normal(3)),
        _const("pos", rng.standard_normal((1, 3, 8, 8))),
    ]
    nodes = [
        helper.make_node("Add", ["images", "pos"], ["p"], name="pos_add"),  # not a bias: ew_add1
        helper.make_node("Conv", ["p", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "b"], ["cb"], name="bias_add"),  # a bias, folded by the parser
        helper.make_node("Add", ["cb", "p"], ["r"], name="residual"),  # ew_add2
        helper.make_node("Relu", ["r"], ["y"], name="out"),
    ]
    return _graph(nodes, inits)


def test_emulation_plan_maps_ew_adds_and_output_like_the_script():
    graph = _residual_graph().graph
    assert ew_add_outputs(graph) == ["p", "r"]
    vit_like = (
        "quantization_param({net/ew_add*}, precision_mode=a16_w16)\n"
        "quantization_param({net/ew_add1}, precision_mode=a8_w8)\n"
        "quantization_param(output_layer1, precision_mode=a16_w16)\n"
        "quantization_param({conv*}, precision_mode=a16_w16)\n"
    )
    plan = plan_precision(graph, vit_like, "net")
    assert plan.ew_adds == ("p", "r")
    assert set(plan.sixteen_bit) == {"r", "y"}  # ew_add1 back to 8 bits, later command wins
    assert plan.not_emulated == ("quantization_param({conv*}, precision_mode=a16_w16)",)
    assert len(plan.emulated) == 3


def test_flops_count_and_latency_estimate():
    rng = np.random.default_rng(0)
    model = _graph(
        [
            helper.make_node("Conv", ["images", "w"], ["c"], name="c", pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"], name="f"),
            helper.make_node("Gemm", ["f", "fc"], ["y"], name="g"),
        ],
        [_const("w", rng.standard_normal((16, 3, 3, 3))), _const("fc", rng.standard_normal((16 * 64, 10)))],
    )
    macs = 16 * 8 * 8 * 3 * 3 * 3 + 16 * 64 * 10
    per_node = node_gflops(model)
    assert sum(per_node.values()) == pytest.approx(2 * macs / 1e9)
    assert per_node == pytest.approx({"c": 2 * 16 * 8 * 8 * 3 * 3 * 3 / 1e9, "g": 2 * 16 * 64 * 10 / 1e9})

    target = get_target("hailo8l")
    vit = estimate_latency(PUBLISHED["vit_small"].gops, "vit")  # Hailo's own vit_small: its own figure
    assert {r[0] for r in vit.references} == {"vit_small", "deit_small"}
    assert vit.low_ms < 1000 / 54.7 + 1e-9 and vit.high_ms == pytest.approx(1000 / 54.7)
    assert 15 < vit.ms < 20 and not vit.extrapolated
    convnext = estimate_latency(8.91, "convnext")  # bracketed by ResNeXt-50 and Swin-T
    assert convnext.low_ms == pytest.approx(1000 / 126 * 8.91 / 8.48)
    assert convnext.high_ms == pytest.approx(1000 / 23.0 * 8.91 / 9.1)
    assert convnext.ms == pytest.approx((convnext.low_ms * convnext.high_ms) ** 0.5)
    row = latency_check(convnext, target)
    assert row.fidelity is Fidelity.ESTIMATED and row.status is Status.INFO  # never gated
    assert "25 ms budget lies inside the range" in row.detail
    assert row.value == f"{convnext.ms:.1f} ms ({convnext.low_ms:.1f}–{convnext.high_ms:.1f})" == "18.8 ms (8.3–42.6)"
    assert (
        "within" not in latency_check(vit, target).detail and "whole range under" in latency_check(vit, target).detail
    )
    tiny = estimate_latency(0.01, "vit")
    assert tiny.extrapolated and "EXTRAPOLATED" in latency_check(tiny, target).detail


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_layers_at_16_bits_widen_the_latency_estimate(share):
    """float_modules on hailo8l run at a16_w16: their share of the GOPs counts 2–4× (zoo's assumption)."""
    int8 = estimate_latency(8.91, "convnext")
    mixed = estimate_latency(8.91, "convnext", sixteen_bit_gflops=8.91 * share)
    assert mixed.sixteen_bit_share == pytest.approx(share)
    assert mixed.low_ms == pytest.approx(int8.low_ms * (1 + share))
    assert mixed.high_ms == pytest.approx(int8.high_ms * (1 + 3 * share))
    assert (f"{share:.0%} of the GOPs at 16 bits" in latency_check(mixed, get_target("hailo8l")).detail) == bool(share)


def planted_backbone(input_size):
    """A factory backbone with ops the DFC table does not have: CumSum mid-network, Sign near the end."""
    import torch
    from torch import nn

    class Planted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.conv2 = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            x = torch.cumsum(self.conv(x), dim=1)
            x = self.conv2(x).mean((2, 3))
            return torch.sign(x) * x

    return Planted()


def test_convert_stops_at_preflight_listing_every_planted_op(write_registry, tmp_path, capsys):
    from zoo.cli import main

    registry = write_registry(
        """
[models.planted]
role = "teacher"
architecture = "test_hailo_units:planted_backbone"
input_size = 32
head = [16]
embedding_dim = 16
embedding_space = "planted-16"
"""
    )
    code = main(
        [
            "convert",
            "--model",
            "planted",
            "--target",
            "hailo8l",
            "--out",
            str(tmp_path / "out"),
            "--registry",
            str(registry),
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3
    assert "cannot go to the Hailo Dataflow Compiler (hailo8l): 2 problem(s)" in err
    assert "CumSum at node '/backbone/CumSum'" in err and "Sign at node '/backbone/Sign'" in err
    assert "hint: they sit inside the network" in err
    assert not (tmp_path / "out" / "planted" / "hailo8l").exists()  # nothing half-written under the final name


@pytest.mark.parametrize(
    ("layout", "axes", "refused"),
    [("nhwc", [1, 2], False), ("nchw", [2, 3], False), ("nchw", [1, 2], True), ("nhwc", [3], False)],
)
def test_preflight_reads_a_mean_in_its_own_layout(layout, axes, refused):
    """A channels-last tensor (Swin, ConvNeXt blocks: NCHW → NHWC, LayerNorm over channels) pools over
    axes 1, 2; the same axes of an NCHW tensor are channels and height, which the DFC cannot pool."""
    gamma, beta = _const("gamma", np.ones(3)), _const("beta", np.zeros(3))
    nodes = [helper.make_node("Relu", ["images"], ["r"], name="stem")]
    if layout == "nhwc":
        nodes += [
            helper.make_node("Transpose", ["r"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
            helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], name="norm", axis=-1),
            helper.make_node("Add", ["n", "n"], ["x"], name="residual"),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["r"], ["x"], name="same"))
    nodes.append(helper.make_node("ReduceMean", ["x"], ["y"], name="pool", axes=axes, keepdims=0))
    report = preflight(_graph(nodes, [gamma, beta] if layout == "nhwc" else []))
    assert [f.op_type for f in report.unsupported] == (["ReduceMean"] if refused else [])


def test_dfc_rewrites_spell_neg_and_reduce_l2_in_supported_ops_and_keep_the_numbers():
    """Rotary embeddings' Neg and GRN's ReduceL2, rewritten exactly (zoo.hailo.rewrites)."""
    import onnxruntime as ort

    from zoo.hailo.rewrites import rewrite_for_dfc

    nodes = [
        helper.make_node("Neg", ["images"], ["n"], name="rotary/neg"),
        helper.make_node("ReduceL2", ["n"], ["l2"], name="grn/norm", axes=[2, 3], keepdims=1),
        helper.make_node("Add", ["n", "l2"], ["y"], name="grn/add"),
    ]
    model = _graph(nodes, [], outputs=("y",))
    before = preflight(model)
    assert sorted(f.op_type for f in before.unsupported) == ["Neg", "ReduceL2"]
    rewritten, counts = rewrite_for_dfc(model)
    assert counts == {"Neg": 1, "ReduceL2": 1}
    assert preflight(rewritten).unsupported == ()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString()).run(None, {"images": x})[0] for m in (model, rewritten)]
    np.testing.assert_allclose(run[1], run[0], rtol=1e-6, atol=1e-6)
    assert rewrite_for_dfc(rewritten)[1] == {}  # nothing left to rewrite


class _Windows(torch.nn.Module):
    """Window partition with its sizes read off the tensor, as Swin does: Shape/Gather/Mod arithmetic in
    a traced export, which the DFC refuses."""

    def forward(self, x):
        b, c, h, w = x.shape
        pad = (2 - w % 2) % 2
        x = torch.nn.functional.pad(x, (0, pad))
        x = x.reshape(b, c, h // 2, 2, (w + pad) // 2, 2)
        return -x.mean(dim=(3, 5)).flatten(1)


def test_hailo_simplification_folds_the_shape_arithmetic_of_a_static_export(tmp_path):
    import io
    import types

    import onnx

    from zoo.converters.torch_to_hailo_onnx import TorchToHailoOnnx

    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    buffer = io.BytesIO()
    torch.onnx.export(_Windows(), torch.from_numpy(x), buffer, opset_version=17, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    assert {"Shape", "Neg"} <= {n.op_type for n in exported.graph.node}
    ctx = types.SimpleNamespace(checks=[], records={}, sample_inputs=x)
    slim = TorchToHailoOnnx()._simplify(ctx, exported)
    assert not {"Shape", "Mod", "Neg"} & {n.op_type for n in slim.graph.node}
    assert ctx.checks[0].status is Status.PASS and ctx.records["dfc_rewrites"] == {"Neg": 1}


@pytest.mark.parametrize("keepdims", [0, 1])
def test_a_token_mean_is_rewritten_as_a_global_pool(keepdims):
    """LeViT's and DINOv3's head: a mean over the N tokens of (1, N, C), which the DFC takes only as a
    spatial pool; a mean over channels (the last axis) is supported as it is and left alone."""
    import onnxruntime as ort

    from zoo.hailo.rewrites import rewrite_for_dfc

    nodes = [
        helper.make_node("Reshape", ["images", "tokens"], ["t"], name="to_tokens"),
        helper.make_node("ReduceMean", ["t"], ["y"], name="head/pool", axes=[1], keepdims=keepdims),
        helper.make_node("ReduceMean", ["t"], ["z"], name="channel_mean", axes=[-1], keepdims=1),
    ]
    tokens = numpy_helper.from_array(np.asarray([1, 3 * 8, 8], np.int64), "tokens")  # (1, N=24, C=8)
    model = _graph(nodes, [tokens], outputs=("y", "z"))
    assert [f.node for f in preflight(model).unsupported] == ["head/pool"]
    rewritten, counts = rewrite_for_dfc(model)
    assert counts == {"ReduceMean": 1} and preflight(rewritten).unsupported == ()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString()).run(None, {"images": x}) for m in (model, rewritten)]
    for before, after in zip(*run, strict=True):
        assert before.shape == after.shape
        np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-6)


class _ContextVector(torch.nn.Module):
    """MobileViT-v2's separable attention: a context vector expanded to the value's shape, then multiplied."""

    def forward(self, x):
        scores = x.softmax(dim=-1)
        context = (x * scores).sum(dim=-1, keepdim=True)
        return torch.relu(x) * context.expand_as(x)


def _static_export(module, x: np.ndarray):
    """`module` exported at opset 17 (legacy exporter) with its shapes propagated as data, as the static
    Hailo export has them after its second onnxslim pass."""
    import io

    import onnx

    buffer = io.BytesIO()
    torch.onnx.export(module, torch.from_numpy(x), buffer, opset_version=17, dynamo=False)
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue()), data_prop=True)


def test_a_redundant_expand_is_removed_with_its_shape_arithmetic():
    import onnxruntime as ort

    from zoo.hailo.rewrites import rewrite_for_dfc

    x = np.random.default_rng(0).standard_normal((1, 4, 6, 8)).astype(np.float32)
    model = _static_export(_ContextVector(), x)
    assert "Expand" in {f.op_type for f in preflight(model).unsupported}
    rewritten, counts = rewrite_for_dfc(model)
    assert counts == {"Expand": 1}
    assert not {"Expand", "Shape"} & {n.op_type for n in rewritten.graph.node}  # its shape input went too
    feed = {model.graph.input[0].name: x}
    run = [ort.InferenceSession(m.SerializeToString()).run(None, feed)[0] for m in (model, rewritten)]
    np.testing.assert_array_equal(run[1], run[0])


def test_an_expand_that_broadcasts_more_than_its_consumer_is_kept():
    from zoo.hailo.rewrites import rewrite_for_dfc

    shape = numpy_helper.from_array(np.array([1, 3, 8, 8], np.int64), "shape")
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], name="mean", axes=[2, 3], keepdims=1),
        helper.make_node("Expand", ["m", "shape"], ["e"], name="expand"),
        helper.make_node("ReduceMean", ["images"], ["small"], name="mean2", axes=[3], keepdims=1),
        helper.make_node("Mul", ["small", "e"], ["y"], name="mul"),  # (1,3,8,1) · expanded: the Expand matters
    ]
    rewritten, counts = rewrite_for_dfc(_graph(nodes, [shape], outputs=("y",)))
    assert counts == {} and "Expand" in {n.op_type for n in rewritten.graph.node}


class _CrossCovariance(torch.nn.Module):
    """EdgeNeXt's XCA: q and k L2-normalized over the tokens (F.normalize), in the middle of the network."""

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.reshape(b, 2, c // 2, h * w)
        q = torch.nn.functional.normalize(t, dim=-1)
        k = torch.nn.functional.normalize(t * 2.0 + 1.0, dim=-1)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return (attn @ t).reshape(b, c, h, w) / 3.0  # a Div by a constant stays as it is


def test_an_l2_normalization_is_rewritten_as_a_layer_norm_and_keeps_the_numbers():
    import onnxruntime as ort

    from zoo.hailo.rewrites import rewrite_for_dfc

    x = np.random.default_rng(0).standard_normal((1, 4, 6, 8)).astype(np.float32)
    model = _static_export(_CrossCovariance(), x)
    assert "Div" in {f.op_type for f in preflight(model).unsupported}
    rewritten, counts = rewrite_for_dfc(model)
    assert counts.get("Div") == 2 and "ReduceL2" not in counts  # the norms' ReduceL2 went with their Divs
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops.count("LayerNormalization") == 2 and "ReduceL2" not in ops and ops.count("Div") == 1
    assert preflight(rewritten).unsupported == ()
    feed = {model.graph.input[0].name: x}
    for scale in (1.0, 1e-3, 1e3):  # the layer norm's ε must not show at any magnitude of the input
        run = [
            ort.InferenceSession(m.SerializeToString()).run(None, {k: v * scale for k, v in feed.items()})[0]
            for m in (model, rewritten)
        ]
        np.testing.assert_allclose(run[1], run[0], rtol=1e-5, atol=1e-6 * scale)


def test_a_div_by_an_l2_norm_of_another_tensor_is_not_rewritten():
    from zoo.hailo.rewrites import rewrite_for_dfc

    eps = numpy_helper.from_array(np.array(1e-12, np.float32), "eps")
    nodes = [
        helper.make_node("Relu", ["images"], ["other"], name="other"),
        helper.make_node("ReduceL2", ["other"], ["n"], name="norm", axes=[-1], keepdims=1),
        helper.make_node("Clip", ["n", "eps"], ["c"], name="clamp"),
        helper.make_node("Div", ["images", "c"], ["y"], name="div"),  # images / ‖relu(images)‖: not a normalize
    ]
    rewritten, counts = rewrite_for_dfc(_graph(nodes, [eps], outputs=("y",)))
    assert "Div" not in counts and "Div" in {n.op_type for n in rewritten.graph.node}
