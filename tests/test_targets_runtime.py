"""Targets that run on this host (OpenVINO IR, TFLite/LiteRT, Android's ONNX Runtime int8): every tiny
model × every such target, converted through zoo.pipeline.convert and checked on the real runtime."""

import json

import numpy as np
import pytest
from conftest import tiny_models

from zoo.converters import Artifact, ConvertContext, get_converter, uses_calibration
from zoo.errors import ConversionError, MissingDependency
from zoo.fidelity import Fidelity, Status
from zoo.pipeline import convert
from zoo.runtimes import get_runtime
from zoo.targets import get_target

# the toolchain modules each target needs (skipped where they are not installed)
TOOLCHAINS = {
    "openvino": ("openvino",),
    "openvino-fp16": ("openvino",),
    "openvino-int8": ("openvino", "nncf"),
    "tflite": ("litert_torch", "ai_edge_litert"),
    "tflite-nhwc": ("litert_torch", "ai_edge_litert"),
    "tflite-int8": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    "tflite-int8-static": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    "android-int8": ("onnxruntime",),
}
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}


def _need(target):
    for module in TOOLCHAINS[target]:
        pytest.importorskip(module)


def _checks(report, prefix, artifact=None):
    return [c for c in report.checks if c.name.startswith(prefix) and (artifact is None or c.artifact == artifact)]


@pytest.mark.parametrize("target", sorted(TOOLCHAINS))
def test_target_thresholds_follow_precision(target):
    spec = get_target(target)
    assert spec.min_cosine_vs_source >= MIN_COSINE[spec.precision]
    assert spec.min_cosine_vs_teacher == 0.95


# fp16 and NHWC variants of the same steps run once each below (test_openvino_* / test_tflite_nhwc_*)
MATRIX_TARGETS = sorted(set(TOOLCHAINS) - {"openvino-fp16", "tflite-nhwc"})


@pytest.mark.parametrize("target", MATRIX_TARGETS)
@pytest.mark.parametrize("model", tiny_models())
def test_tiny_model_on_real_runtime(model, target, registry, tmp_path):
    _need(target)
    spec, target_spec = registry.get(model), get_target(target)
    # 32 calibration images keep the suite fast; the "smaller than recommended" warning is asserted below
    # (only for the chains that calibrate: the option is refused where it would be ignored)
    calibrated = any(uses_calibration(get_converter(step)) for step in target_spec.chain)
    count = 32 if calibrated else None
    outcome = convert(model, target, out_root=tmp_path, registry=registry, latency_runs=20, calibration_count=count)
    report = outcome.report
    assert not report.failed, report.to_terminal()
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    # what the target's runtime validates (an intermediate ONNX in an OpenVINO chain is not opened)
    runnable = [a for a in manifest["artifacts"] if a["runnable"] and a["format"] in get_runtime(a["runtime"]).formats]
    assert runnable

    shapes = _checks(report, "output shape")
    assert len(shapes) == len(runnable)
    assert all(c.status is Status.PASS and c.value.startswith(f"(16, {spec.embedding_dim})") for c in shapes)
    for check in _checks(report, "unit L2 norm"):
        assert check.status is Status.PASS and check.value <= 1e-3
    parity = _checks(report, "parity vs source")
    assert len(parity) == len(runnable)
    for check in parity:
        assert check.fidelity is Fidelity.MEASURED
        assert check.data["samples"] == 16
        assert check.data["cosine_min"] >= target_spec.min_cosine_vs_source
        if ".int8." not in check.artifact:  # float artifacts: the precision's own threshold
            assert (
                check.data["cosine_min"]
                >= MIN_COSINE[target_spec.precision if target_spec.precision != "int8" else "fp32"]
            )

    for check in _checks(report, "latency p"):
        assert check.fidelity is Fidelity.MEASURED
        assert 0 < check.data["p50_ms"] <= check.data["p90_ms"] <= check.data["p99_ms"]
        assert check.data["runs"] >= 20 and check.data["batch"] == 1
    throughput = _checks(report, "throughput")
    assert len(throughput) == len(runnable)
    if target_spec.runtime == "openvino":  # dynamic-batch IR: measured at batch 8
        assert all(c.fidelity is Fidelity.MEASURED and c.value > 0 for c in throughput)
        variants = _checks(report, "latency, OpenVINO default precision")
        assert len(variants) == len(runnable) and all(c.data["p50_ms"] > 0 for c in variants)
    else:  # static batch 1 (mobile): said so, not faked
        assert all(c.status is Status.NOT_APPLICABLE for c in throughput)

    if target_spec.precision == "int8":
        names = {a["path"] for a in runnable}
        assert any(".int8." in n for n in names) and any(".int8." not in n for n in names)  # side by side
        speedup = _checks(report, "int8 speedup vs fp32")
        assert len(speedup) == 1 and speedup[0].fidelity is Fidelity.MEASURED and speedup[0].value > 0
        assert speedup[0].data["fp32_p50_ms"] > 0 and speedup[0].data["int8_p50_ms"] > 0
        if "dynamic" in manifest["quantization"].get("scheme", ""):  # no calibration set, and none claimed
            assert "calibration" not in manifest and not any("calibration" in w for w in report.warnings)
            return
        calibration = manifest["calibration"]
        assert calibration["count"] == 32 and len(calibration["sha256"]) == 64
        assert calibration["shape"] == [32, 3, 64, 64] and calibration["recommended_min"] >= 100
        assert any("calibration set has 32 images; the toolchain recommends" in w for w in report.warnings)
        assert manifest["quantization"]["tool"]


@pytest.fixture(scope="module")
def openvino_pair(tmp_path_factory):
    pytest.importorskip("openvino")
    from zoo.registry import load_registry

    root = tmp_path_factory.mktemp("ov")
    registry = load_registry()
    fp32 = convert("tiny_convnext", "openvino", out_root=root, registry=registry, validate=False)
    fp16 = convert("tiny_convnext", "openvino-fp16", out_root=root, registry=registry, latency_runs=20)
    assert not fp16.report.failed, fp16.report.to_terminal()
    parity = _checks(fp16.report, "parity vs source")
    assert parity and all(c.data["cosine_min"] >= MIN_COSINE["fp16"] for c in parity)
    return fp32.out_dir, fp16.out_dir


def test_openvino_weight_precision_is_explicit(openvino_pair):
    fp32_dir, fp16_dir = openvino_pair
    fp32_bin, fp16_bin = (fp32_dir / "model.bin").stat().st_size, (fp16_dir / "model.bin").stat().st_size
    assert 0.45 < fp16_bin / fp32_bin < 0.6  # fp16 weights are half; fp32 ones were not compressed


def test_openvino_metadata_in_rt_info(openvino_pair):
    from zoo.converters.onnx_to_openvino import read_rt_info
    from zoo.runtimes.openvino import core

    for out_dir, weights in zip(openvino_pair, ("fp32", "fp16")):
        info = read_rt_info(core().read_model(str(out_dir / "model.xml")))
        assert info["model_name"] == "tiny_convnext"
        assert info["embedding_dim"] == "32"
        assert json.loads(info["mean"]) == pytest.approx([0.485, 0.456, 0.406])
        assert info["ir_weights"] == weights


def test_openvino_session_parity_config_is_f32(openvino_pair):
    from zoo.runtimes.openvino import OpenVinoSession

    session = OpenVinoSession(openvino_pair[0] / "model.xml")
    assert "f32" in session.inference_precision or "float32" in session.inference_precision
    assert session.batch is None  # dynamic batch IR
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    assert session.run(x).shape == (3, 32)


def test_tflite_nhwc_input_and_metadata(registry, tmp_path):
    _need("tflite-nhwc")
    from zoo.converters.torch_to_tflite import read_metadata
    from zoo.runtimes.litert import LiteRtSession

    outcome = convert("tiny_efficientnet", "tflite-nhwc", out_root=tmp_path, registry=registry, latency_runs=20)
    assert not outcome.report.failed, outcome.report.to_terminal()
    parity = _checks(outcome.report, "parity vs source")
    assert len(parity) == 1 and parity[0].data["cosine_min"] >= MIN_COSINE["fp32"]  # NCHW inputs, transposed
    path = outcome.out_dir / "model.tflite"
    session = LiteRtSession(path)
    assert session.layout == "NHWC" and tuple(session._input["shape"]) == (1, 64, 64, 3)
    meta = read_metadata(path)
    assert meta["layout"] == "NHWC"
    assert meta["embedding_dim"] == "32" and meta["model_name"] == "tiny_efficientnet"
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert meta["tflite_precision"] == "fp32"


def test_android_int8_artifacts(registry, tmp_path):
    onnx = pytest.importorskip("onnx")
    outcome = convert("tiny_efficientnet", "android-int8", out_root=tmp_path, registry=registry, validate=False)
    out = outcome.out_dir
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "model.int8.onnx", "model.int8.ort", "required_operators.config"} <= names
    model = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_name"] == "tiny_efficientnet" and props["precision"] == "int8"
    config = (out / "required_operators.config").read_text()
    assert "DequantizeLinear" in config
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quantization"]["per_channel"] is True
    assert manifest["quantization"]["activation_type"] == "QUInt8"


def test_calibration_from_a_folder(registry, tmp_path):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from zoo.validators.inputs import reference_photos

    folder = tmp_path / "calib"
    folder.mkdir()
    for name, image in reference_photos()[:5]:
        Image.fromarray(image).save(folder / f"{name}.png")
    outcome = convert(
        "tiny_convnext",
        "android-int8",
        out_root=tmp_path / "out",
        registry=registry,
        validate=False,
        calibration_dir=folder,
    )
    calibration = json.loads((outcome.out_dir / "manifest.json").read_text())["calibration"]
    assert calibration["count"] == 5 and str(folder) in calibration["source"]
    assert any("calibration set has 5 images" in w for w in outcome.report.warnings)


def _ctx(registry, tmp_path, target, torch_model=None):
    spec = registry.get("tiny_convnext")
    return ConvertContext(
        model=spec,
        target=get_target(target),
        workdir=tmp_path,
        input_size=8,
        torch_model=torch_model,
        sample_inputs=np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32),
        metadata={},
    )


def test_openvino_lists_every_unsupported_op_with_its_node(registry, tmp_path):
    pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from zoo.converters.onnx_to_openvino import OnnxToOpenVino

    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu0"),
        helper.make_node("FancyOp", ["a"], ["b"], name="fancy_1", domain="com.example"),
        helper.make_node("OtherOp", ["b"], ["y"], name="other_2", domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    problems = OnnxToOpenVino().preflight(_ctx(registry, tmp_path, "openvino"), Artifact("bad.onnx", "onnx"))
    assert len(problems) == 1  # one message, every op in it
    assert "2 operator(s)" in problems[0]
    assert "FancyOp (com.example) at node 'fancy_1'" in problems[0]
    assert "OtherOp (com.example) at node 'other_2'" in problems[0]


def test_tflite_lists_every_unsupported_op_with_its_node(registry, tmp_path):
    pytest.importorskip("litert_torch")
    torch = pytest.importorskip("torch")
    from zoo.converters.torch_to_tflite import TorchToTflite

    class Odd(torch.nn.Module):
        def forward(self, x):
            return (torch.special.erfinv(torch.tanh(x)) + torch.cumprod(x, dim=1)).mean(dim=(2, 3))

    problems = TorchToTflite().preflight(_ctx(registry, tmp_path, "tflite", Odd().eval()), None)
    assert len(problems) == 1
    assert "aten.erfinv.default at node 'erfinv'" in problems[0]
    assert "aten.cumprod.default at node 'cumprod'" in problems[0]


def test_unsupported_op_fails_the_conversion(registry, tmp_path, monkeypatch):
    pytest.importorskip("litert_torch")
    from zoo.converters import torch_to_tflite

    monkeypatch.setattr(torch_to_tflite, "unsupported_aten_ops", lambda program: ["aten.x.default at node 'x'"])
    with pytest.raises(ConversionError, match="litert-torch cannot lower: aten.x.default at node 'x'"):
        convert("tiny_convnext", "tflite", out_root=tmp_path, registry=registry, validate=False)
    assert not (tmp_path / "tiny_convnext" / "tflite").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("module", "runtime", "extra"),
    [("openvino", "openvino", "openvino"), ("ai_edge_litert", "litert", "tflite")],
)
def test_missing_runtime_names_the_extra(module, runtime, extra, monkeypatch):
    import importlib.util

    from zoo.runtimes import get_runtime

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    reason = get_runtime(runtime).unavailable_reason()
    assert reason and f"zoo[{extra}]" in reason


@pytest.mark.parametrize(
    ("step", "module", "extra"),
    [
        ("onnx_to_openvino", "openvino", "openvino"),
        ("openvino_to_int8", "nncf", "openvino"),
        ("torch_to_tflite", "litert_torch", "tflite"),
        ("tflite_to_int8", "ai_edge_quantizer", "tflite"),
        ("tflite_to_int8_static", "ai_edge_quantizer", "tflite"),
    ],
)
def test_missing_toolchain_names_the_extra(step, module, extra, registry, tmp_path, monkeypatch):
    import sys

    from zoo.converters import get_converter

    converter = get_converter(step)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingDependency) as info:
        converter.preflight(_ctx(registry, tmp_path, "openvino"), Artifact("model.onnx", "onnx"))
    assert info.value.extra == extra and f"zoo[{extra}]" in info.value.hint


@pytest.mark.full
@pytest.mark.parametrize("target", sorted(TOOLCHAINS))
@pytest.mark.parametrize("model", ["convnext_tiny", "vit_small", "dog_efficientnet_b0"])
def test_full_size_models(model, target, registry, tmp_path):
    _need(target)
    outcome = convert(model, target, out_root=tmp_path, registry=registry, latency_runs=20)
    assert not outcome.report.failed, outcome.report.to_terminal()
    for check in _checks(outcome.report, "parity vs source"):
        assert check.data["cosine_min"] >= get_target(target).min_cosine_vs_source
