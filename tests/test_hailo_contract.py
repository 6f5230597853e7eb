"""Contract tests for the Hailo DFC driver and the HailoRT runner.

Hailo's Dataflow Compiler (`hailo_sdk_client`) and HailoRT (`hailo_platform`) cannot be installed here
or in CI. These tests inject small stand-in modules through sys.modules that record every call and
compute outputs with ONNX Runtime from the bundle's own files. They check that zoo calls the published
APIs in the documented order with the right arguments and data layouts (NCHW shapes to the parser,
NHWC normalized data to the native emulator, NHWC 0–255 to the optimized ones and the device, the
model script and the calibration set of the bundle). They are CONTRACT TESTS: they are not evidence
that the real compiler accepts the model, that compilation works, or what the real numbers would be.
"""

import contextlib
import enum
import importlib.machinery
import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ConversionError
from zoo.fidelity import Fidelity, Status
from zoo.hailo import CALIBRATION_FILE, EMULATED_FILE, HAR_FILE, HEF_FILE, MODEL_SCRIPT_FILE, ONNX_FILE
from zoo.hailo.bundle import array_sha256, compile_bundle, load_bundle, verify_bundle
from zoo.pipeline import convert

STANDIN_HEF = b"HEF\x00stand-in: not a real Hailo executable"


def _run_onnx(path: str, nchw: np.ndarray) -> np.ndarray:
    from zoo.runtimes.onnxruntime import OrtSession

    session = OrtSession(Path(path))
    return np.concatenate([session.run(nchw[i : i + 1]) for i in range(len(nchw))])


def _script_normalization(text: str):
    match = re.search(r"normalization\(\[([^\]]*)\],\s*\[([^\]]*)\]\)", text)
    return (np.array([float(v) for v in match.group(i).split(",")], np.float32) for i in (1, 2))


def make_sdk_standin(calls: list, fail_at: str = ""):
    """A stand-in `hailo_sdk_client`: records calls; 'emulates' with ONNX Runtime on the parsed ONNX."""

    class InferenceContext(enum.Enum):
        SDK_NATIVE = "native"
        SDK_FP_OPTIMIZED = "fp_optimized"
        SDK_QUANTIZED = "quantized"

    class ClientRunner:
        def __init__(self, hw_arch=None):
            calls.append(("ClientRunner", {"hw_arch": hw_arch}))
            self._onnx = self._script = None
            self._optimized = False

        def _record(self, name, **kw):
            calls.append((name, kw))
            if name == fail_at:
                raise RuntimeError(f"stand-in failure in {name}")

        def translate_onnx_model(
            self, model, net_name, start_node_names=None, end_node_names=None, net_input_shapes=None
        ):
            self._record(
                "translate_onnx_model",
                model=model,
                net_name=net_name,
                start_node_names=start_node_names,
                end_node_names=end_node_names,
                net_input_shapes=net_input_shapes,
            )
            self._onnx = model
            return "hn", "npz"

        def get_hn(self):
            import onnx

            self._record("get_hn")
            nodes = onnx.load(self._onnx).graph.node  # one parsed layer per ONNX node, as named there
            return {"layers": {f"net/layer{i}": {"original_names": [n.name]} for i, n in enumerate(nodes)}}

        def load_model_script(self, text, append=False):
            self._record("load_model_script", text=text, append=append)
            self._script = text

        def optimize(self, calib_data):
            self._record("optimize", shape=calib_data.shape, dtype=calib_data.dtype, sha256=array_sha256(calib_data))
            self._optimized = True

        @contextlib.contextmanager
        def infer_context(self, context):
            self._record("infer_context", context=context)
            yield context

        def infer(self, context, dataset):
            self._record(
                "infer", context=context, shape=dataset.shape, min=float(dataset.min()), max=float(dataset.max())
            )
            x = np.asarray(dataset, np.float32)
            if context is not InferenceContext.SDK_NATIVE:
                assert self._optimized, "optimized contexts need optimize() first"
                mean, std = _script_normalization(self._script)  # the normalization layer of the script
                x = (x - mean) / std
            out = _run_onnx(self._onnx, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
            return out.reshape(len(out), 1, 1, -1)  # NHWC-shaped, as the SDK returns conv-style outputs

        def compile(self):
            self._record("compile")
            return STANDIN_HEF

        def save_har(self, path):
            self._record("save_har", path=path)
            Path(path).write_bytes(b"HAR stand-in")

    module = types.ModuleType("hailo_sdk_client")
    module.__spec__ = importlib.machinery.ModuleSpec("hailo_sdk_client", None)
    module.__version__ = "0.0-standin"
    module.ClientRunner = ClientRunner
    module.InferenceContext = InferenceContext
    return module


@pytest.fixture(scope="module")
def bundle(registry, tmp_path_factory):
    outcome = convert("tiny_vit", "hailo8l", out_root=tmp_path_factory.mktemp("dfc"), registry=registry, validate=False)
    return outcome.out_dir


def test_dfc_driver_call_sequence_against_a_standin(bundle, tmp_path, monkeypatch):
    """Contract test: the call sequence and data handed to the DFC — not evidence that compilation works."""
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    manifest = json.loads((work / "manifest.json").read_text())
    calls: list = []
    sdk = make_sdk_standin(calls)
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", sdk)

    outcome = compile_bundle(work)

    names = [c[0] for c in calls]
    assert names == [
        "ClientRunner",
        "translate_onnx_model",
        "infer_context",
        "infer",
        "load_model_script",
        "optimize",
        "infer_context",
        "infer",
        "infer_context",
        "infer",
        "compile",
        "save_har",
    ]
    args = dict(calls[:2])
    assert args["ClientRunner"] == {"hw_arch": "hailo8l"}
    translate = calls[1][1]
    assert Path(translate["model"]).name == ONNX_FILE and translate["net_name"] == "tiny_vit"
    assert translate["start_node_names"] == ["images"]
    assert translate["end_node_names"] == manifest["hailo"]["end_node_names"] == ["/head/head.0/Gemm"]
    assert translate["net_input_shapes"] == {"images": [1, 3, 64, 64]}  # NCHW, as the ONNX takes it
    script = dict(calls)["load_model_script"]
    assert script["text"] == (work / MODEL_SCRIPT_FILE).read_text()
    optimize = dict(calls)["optimize"]
    assert optimize["shape"] == (64, 64, 64, 3) and optimize["dtype"] == np.float32
    assert optimize["sha256"] == manifest["calibration"]["sha256"]
    infers = [c[1] for c in calls if c[0] == "infer"]
    assert [i["context"].name for i in infers] == ["SDK_NATIVE", "SDK_FP_OPTIMIZED", "SDK_QUANTIZED"]
    assert all(i["shape"] == (12, 64, 64, 3) for i in infers)  # the 12 reference photos, NHWC
    assert infers[0]["min"] < 0 < infers[0]["max"] < 10  # native: the normalized tensor
    assert all(i["min"] >= 0 and 200 < i["max"] <= 255 for i in infers[1:])  # optimized: 0–255 pixels

    ladder = [c for c in outcome.report.checks if c.name.startswith("parity in the Hailo SDK emulator")]
    assert [c.name.rsplit(": ", 1)[1] for c in ladder] == ["native (parsed float model)", "fp-optimized", "quantized"]
    for check in ladder:
        assert check.fidelity is Fidelity.EMULATED and "emulated (Hailo SDK)" in check.detail
        assert check.status is Status.PASS and check.value > 0.99999  # the stand-in runs the fp32 ONNX
    assert not outcome.report.failed

    assert (work / HEF_FILE).read_bytes() == STANDIN_HEF and (work / HAR_FILE).exists()
    after = json.loads((work / "manifest.json").read_text())
    entries = {a["path"]: a for a in after["artifacts"]}
    assert entries[HEF_FILE]["runtime"] == "hailort" and entries[HEF_FILE]["host_l2_normalize"] is True
    assert after["hailo"]["hef"] == HEF_FILE and after["tools"]["hailo_sdk_client"] == "0.0-standin"
    assert verify_bundle(load_bundle(work)) == []  # the bundle's inputs are untouched
    assert (work / "hailo_compile.json").exists()


def test_dfc_failure_is_a_conversion_error_and_leaves_no_hef(bundle, tmp_path, monkeypatch):
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    before = (work / "manifest.json").read_text()
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_sdk_standin([], fail_at="optimize"))
    with pytest.raises(ConversionError, match="failed at optimize: RuntimeError"):
        compile_bundle(work)
    assert not (work / HEF_FILE).exists() and (work / "manifest.json").read_text() == before
    assert not list(work.glob(".hailo-compile-*"))


def make_hailort_standin(calls: list):
    """A stand-in `hailo_platform`: a 'device' that runs the bundle's ONNX behind the .hef interface."""

    class FormatType(enum.Enum):
        UINT8 = "uint8"
        FLOAT32 = "float32"

    class Stream:
        def __init__(self, shape):
            self.shape = shape
            self.format_type = None

        def set_format_type(self, value):
            calls.append(("set_format_type", value))
            self.format_type = value

    class Buffer:
        def __init__(self):
            self.array = None

        def set_buffer(self, array):
            self.array = array

        def get_buffer(self):
            return self.array

    class Bindings:
        def __init__(self):
            self._input, self._output = Buffer(), Buffer()

        def input(self, name=""):
            return self._input

        def output(self, name=""):
            return self._output

    class InferModel:
        def __init__(self, hef_path):
            bundle = Path(hef_path).parent
            self._onnx = str(bundle / ONNX_FILE)
            self._mean, self._std = _script_normalization((bundle / MODEL_SCRIPT_FILE).read_text())
            h, w = json.loads((bundle / "manifest.json").read_text())["hailo"]["input"]["size"]
            self._in, self._out = (
                Stream((h, w, 3)),
                Stream((json.loads((bundle / "manifest.json").read_text())["hailo"]["output_dim"],)),
            )

        def set_batch_size(self, n):
            calls.append(("set_batch_size", n))

        def input(self, name=""):
            return self._in

        def output(self, name=""):
            return self._out

        @contextlib.contextmanager
        def configure(self):
            calls.append(("configure", None))
            model = self

            class Configured:
                def create_bindings(self):
                    return Bindings()

                def run(self, bindings, timeout):
                    (b,) = bindings
                    frame = b.input().get_buffer()
                    assert frame.dtype == np.uint8 and frame.shape == model._in.shape  # one NHWC uint8 frame
                    x = (frame.astype(np.float32) - model._mean) / model._std
                    out = _run_onnx(model._onnx, np.ascontiguousarray(x.transpose(2, 0, 1)[None]))
                    b.output().get_buffer()[...] = out.reshape(b.output().get_buffer().shape)
                    calls.append(("run", timeout))

            yield Configured()

    class VDevice:
        def __enter__(self):
            calls.append(("VDevice", None))
            return self

        def __exit__(self, *exc):
            calls.append(("VDevice.release", None))

        def create_infer_model(self, hef):
            calls.append(("create_infer_model", Path(hef).name))
            return InferModel(hef)

    module = types.ModuleType("hailo_platform")
    module.__spec__ = importlib.machinery.ModuleSpec("hailo_platform", None)
    module.__version__ = "0.0-standin"
    module.VDevice, module.FormatType = VDevice, FormatType
    return module


def test_hailort_runner_against_a_standin(bundle, tmp_path, monkeypatch):
    """Contract test: zoo validate on a compiled bundle runs the .hef through HailoRT's InferModel API with
    NHWC uint8 frames, reports `device` fidelity and gates latency on the device — with a stand-in device."""
    from zoo.pipeline import validate_dir

    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_sdk_standin([]))
    compile_bundle(work)
    calls: list = []
    monkeypatch.setitem(sys.modules, "hailo_platform", make_hailort_standin(calls))

    report = validate_dir(work, latency_runs=20).report

    hef_rows = [c for c in report.checks if c.artifact == HEF_FILE]
    shape = next(c for c in hef_rows if c.name == "output shape and dtype")
    assert shape.fidelity is Fidelity.DEVICE and shape.status is Status.PASS and shape.value.startswith("(16, 32)")
    parity = next(c for c in hef_rows if c.name.startswith("parity vs source"))
    assert parity.fidelity is Fidelity.DEVICE
    # the 12 photos are exact uint8 frames; the 4 random inputs are clipped to 0–255 like any device input
    assert min(parity.data["per_sample_cosine"][:12]) > 0.9999 and parity.status is Status.PASS
    latency = next(c for c in hef_rows if c.name.startswith("latency p90"))
    assert latency.fidelity is Fidelity.DEVICE and latency.status in (Status.PASS, Status.FAIL)  # gated on device
    names = [c[0] for c in calls]
    assert names[:3] == ["VDevice", "create_infer_model", "set_batch_size"] and "configure" in names
    assert ("set_format_type", sys.modules["hailo_platform"].FormatType.UINT8) in calls
    assert names.count("run") >= 16


def test_convert_drives_the_dfc_when_it_imports(registry, tmp_path, monkeypatch):
    """Contract test: with hailo_sdk_client importable, `zoo convert` compiles in the step itself."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_sdk_standin(calls))
    outcome = convert("tiny_efficientnet", "hailo8l", out_root=tmp_path, registry=registry, latency_runs=20)
    assert [c[0] for c in calls][-2:] == ["compile", "save_har"]
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    entries = {a["path"]: a for a in manifest["artifacts"]}
    assert entries[HEF_FILE]["runtime"] == "hailort" and manifest["hailo"]["hef_status"] == "compiled"
    compiled = next(c for c in outcome.report.checks if c.name.startswith("compile .hef"))
    assert compiled.status is Status.PASS and compiled.fidelity is Fidelity.MEASURED
    assert not any("NO .hef" in w for w in outcome.report.warnings)
    hef_validation = [c for c in outcome.report.checks if c.artifact == HEF_FILE and c.name == "artifact validation"]
    assert hef_validation and hef_validation[0].status is Status.NOT_RUN  # no HailoRT here: not run, not a pass
    assert "HailoRT (hailo_platform) is not installed" in hef_validation[0].detail
    assert np.load(outcome.out_dir / CALIBRATION_FILE).shape == (64, 64, 64, 3)


def test_float_modules_go_to_16_bits_in_the_emulation_and_the_model_script(registry, tmp_path, monkeypatch):
    """float_modules on hailo8l: the emulation quantizes those nodes' activations and weights to 16 bits;
    on a DFC host the parsed layers computing them get precision_mode=a16_w16 (contract test)."""
    import dataclasses

    import onnx

    from zoo.hailo.dfc import sixteen_bit_command
    from zoo.registry import Registry

    spec = dataclasses.replace(registry.get("tiny_vit"), float_modules={"hailo8l": ["backbone.blocks.0"]})
    models = Registry([spec, registry.get(spec.teacher)])
    result = convert("tiny_vit", "hailo8l", out_root=tmp_path / "o", registry=models, validate=False)
    out = result.out_dir
    record = json.loads((out / "manifest.json").read_text())["hailo"]
    nodes = record["sixteen_bit_nodes"]
    assert nodes and all("blocks.0" in n for n in nodes)
    rows = {c.name: c for c in result.report.checks}
    fallback = rows["modules kept out of int8 (float_modules)"]
    assert fallback.data == {"modules": ["backbone.blocks.0"], "nodes": len(nodes), "kept_as": "at 16 bits (a16_w16)"}
    estimate = next(c for c in result.report.checks if c.name.startswith("latency estimate")).data
    assert 0 < estimate["sixteen_bit_share"] < 1 and "of the GOPs at 16 bits" in fallback.detail
    emulated = onnx.load(str(out / EMULATED_FILE))
    int16 = {i.name for i in emulated.graph.initializer if i.data_type == onnx.TensorProto.INT16}
    assert record["emulation"]["sixteen_bit_weights"]
    assert {f"{w}_quantized" for w in record["emulation"]["sixteen_bit_weights"]} <= int16
    assert not any("blocks.1" in w for w in record["emulation"]["sixteen_bit_weights"])

    calls: list = []
    monkeypatch.setitem(sys.modules, "hailo_sdk_client", make_sdk_standin(calls))
    compile_bundle(out)
    text = dict(calls)["load_model_script"]["text"]
    assert text.startswith((out / MODEL_SCRIPT_FILE).read_text())
    command = text.strip().splitlines()[-1]
    assert command.startswith("quantization_param([net/layer") and command.endswith("precision_mode=a16_w16)")
    assert command.count("net/layer") == len(nodes)
    with pytest.raises(ConversionError, match="no layer for 1 of 1 nodes"):
        sixteen_bit_command({"layers": {"net/conv1": {"original_names": ["other"]}}}, ("fused_away",))
