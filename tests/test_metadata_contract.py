"""Every artifact's metadata states its true input contract, and a consumer that follows it gets the
source model's embeddings; no artifact or bundle file carries the build host's paths; a refused
checkpoint names what it would have run and never advises the unsafe load.

The consumer here is independent of zoo's runtimes: a fresh ONNX Runtime session fed from the
metadata keys alone (`input_layout`, `input_dtype`, `normalization`, `mean`/`std`, `host_l2_normalize`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo.checkpoints import read_state_dict, sha256_file
from zoo.errors import CheckpointError
from zoo.hailo import COMPILE_FILE, EMULATED_FILE, MODEL_SCRIPT_FILE, ONNX_FILE
from zoo.metadata import artifact_metadata
from zoo.registry import Checkpoint
from zoo.targets import get_target

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

HAILO_MODEL = "tiny_convnext"  # emulated int8 cosine ≈ 0.996 here, and not a constant-output model
# the brief's table: Core ML spec version → the oldest iOS that loads it
IOS_OF_SPEC = {4: "iOS13", 5: "iOS14", 6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18"}
ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 10: "float16"}


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _host_paths(root: Path) -> list[str]:
    """Strings that only the build host's file system has."""
    return [str(root), str(Path.home()) + "/", "/work/", "/tmp/"]


@pytest.fixture(scope="module")
def hailo_bundle(tmp_path_factory):
    """tiny_convnext for hailo8l, with a user model-script override (a path relative to its registry)."""
    from zoo.pipeline import convert
    from zoo.registry import load_registry

    root = tmp_path_factory.mktemp("contract")
    (root / "extra.alls").write_text("performance_param(compiler_optimization_level=max)\n")
    registry_file = root / "user.toml"
    registry_file.write_text(
        f"""
[models.{HAILO_MODEL}]
override = true
role = "student"
teacher = "tiny_teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [32]
embedding_dim = 32
embedding_space = "tiny-32"
tags = {{ tier = "tiny", hailo_model_script = "extra.alls" }}
"""
    )
    registry = load_registry([registry_file])
    outcome = convert(HAILO_MODEL, "hailo8l", out_root=root / "out", registry=registry, validate=False)
    return root, registry.get(HAILO_MODEL), outcome.out_dir


def _photos(size: int) -> np.ndarray:
    """The bundled photos as a consumer holds them: NHWC uint8 RGB."""
    from zoo.validators.inputs import reference_photos, resize_center_crop

    return np.stack([resize_center_crop(image, size) for _, image in reference_photos()])


def _torch_embeddings(spec, pixels: np.ndarray) -> np.ndarray:
    from zoo.models import build_model
    from zoo.pipeline import embed_torch
    from zoo.validators.inputs import normalize

    return embed_torch(build_model(spec), normalize(pixels, spec.mean, spec.std))


def consume(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run an ONNX artifact on NHWC uint8 photos the way its metadata says, and nothing else."""
    meta = _props(path)
    x = pixels.astype(np.float32)
    if meta["normalization"].startswith("host"):
        x = (x / 255.0 - np.asarray(json.loads(meta["mean"]), np.float32)) / np.asarray(json.loads(meta["std"]))
    else:
        assert meta["normalization"].startswith("inside the model") and meta["input_range"] == "0-255"
    if meta["input_layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=meta["input_dtype"])
    options = ort.SessionOptions()
    if meta.get("onnxruntime_graph_optimization") == "basic":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))]).reshape(len(x), -1)
    if meta["host_l2_normalize"] == "true":
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_onnx_states_its_graph(path: Path) -> dict[str, str]:
    """The stated layout and dtype are the graph input's."""
    meta = _props(path)
    graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert ONNX_DTYPES[graph_input.type.tensor_type.elem_type] == meta["input_dtype"], path.name
    assert (dims[1] == 3) == (meta["input_layout"] == "NCHW") and (dims[3] == 3) == (meta["input_layout"] == "NHWC")
    assert meta["layout"] == meta["input_layout"]
    return meta


def test_emulated_hailo_onnx_states_pixels_in_normalization_inside(hailo_bundle):
    _, spec, out = hailo_bundle
    meta = assert_onnx_states_its_graph(out / EMULATED_FILE)
    assert meta["input_layout"] == "NHWC" and meta["input_dtype"] == "float32" and meta["input_range"] == "0-255"
    assert meta["normalization"].startswith("inside the model") and "apply no mean/std" in meta["normalization"]
    assert json.loads(meta["folded_mean"]) == pytest.approx(spec.mean)
    assert json.loads(meta["folded_std"]) == pytest.approx(spec.std)
    assert meta["l2_normalized"] == "false" and meta["host_l2_normalize"] == "true"
    # No plain mean/std may claim host use. zoo.hailo.emulation still writes them for zoo's own
    # EmulatedSession; beside `normalization: inside the model` they do not claim it.
    assert "mean" not in meta or not meta["normalization"].startswith("host")

    float_meta = assert_onnx_states_its_graph(out / ONNX_FILE)
    assert float_meta["input_layout"] == "NCHW" and float_meta["input_dtype"] == "float32"
    assert float_meta["normalization"] == "host: (x/255 - mean)/std"
    assert json.loads(float_meta["mean"]) == pytest.approx(spec.mean) and "folded_mean" not in float_meta
    assert float_meta["host_l2_normalize"] == "true"


def test_a_consumer_following_the_metadata_gets_the_source_embeddings(hailo_bundle):
    _, spec, out = hailo_bundle
    pixels = _photos(spec.input_size)
    source = _torch_embeddings(spec, pixels)
    emulated = _cosines(consume(out / EMULATED_FILE, pixels), source)
    assert emulated.min() >= 0.98, emulated  # int8 emulation
    # what the metadata guards against: the model's mean/std applied again before the pixels go in
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(out / EMULATED_FILE), options, providers=["CPUExecutionProvider"])
    twice = ((pixels / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)
    wrong = np.concatenate([session.run(None, {session.get_inputs()[0].name: v[None]})[0] for v in twice])
    assert _cosines(wrong, source).min() < 0.5
    exact = _cosines(consume(out / ONNX_FILE, pixels), source)
    assert exact.min() >= 0.9999, exact


def test_no_host_path_in_the_bundle_or_the_metadata(hailo_bundle):
    root, _, out = hailo_bundle
    host = _host_paths(root)
    texts = {p.name: p.read_text() for p in out.iterdir() if p.suffix in (".md", ".alls", ".json", ".txt")}
    assert {COMPILE_FILE, MODEL_SCRIPT_FILE, "manifest.json", "report.json", "report.md"} <= set(texts)
    manifest = json.loads(texts.pop("manifest.json"))
    # manifest.json's model/teacher entries are zoo.pipeline's (the registry file's path): checked apart
    texts["manifest.json: hailo, artifacts"] = json.dumps([manifest["hailo"], manifest["artifacts"]])
    for name in (ONNX_FILE, EMULATED_FILE):
        texts[f"{name} metadata"] = json.dumps(_props(out / name))
    for name, text in texts.items():
        assert not [h for h in host if h in text], (name, [h for h in host if h in text])
    assert (
        "zoo hailo compile ." in texts[COMPILE_FILE] and manifest["hailo"]["compile_command"] == "zoo hailo compile ."
    )
    assert "# --- user override: extra.alls " in texts[MODEL_SCRIPT_FILE]
    assert manifest["hailo"]["script"]["override"]["path"] == "extra.alls"


def test_an_onnx_file_source_is_named_by_its_file_only(tmp_path):
    from zoo.registry import spec_from_dict

    spec = spec_from_dict(
        "m",
        dict(architecture=str(tmp_path / "net.onnx"), input_size=64, embedding_dim=16, embedding_space="s"),
        source=tmp_path / "user.toml",
    )
    meta = artifact_metadata(spec, get_target("server"), 64)
    assert meta["architecture"] == "net.onnx"
    assert not [v for v in meta.values() if str(tmp_path) in v]


def test_an_int8_onnx_keeps_and_states_float_input(registry, tmp_path):
    from zoo.pipeline import convert

    out = convert("tiny_efficientnet", "android-int8", out_root=tmp_path, registry=registry, validate=False).out_dir
    meta = assert_onnx_states_its_graph(out / "model.int8.onnx")
    assert meta["input_dtype"] == "float32" and meta["normalization"].startswith("host")
    assert meta["precision"] == "int8" and meta["host_l2_normalize"] == "false" and meta["l2_normalized"] == "true"


@pytest.mark.parametrize("target", ["ios-mlmodel", "ios-image"])
def test_core_ml_states_the_ios_its_spec_loads_on_and_its_input(target, registry, tmp_path):
    ct = pytest.importorskip("coremltools")
    from zoo.pipeline import convert

    outcome = convert("tiny_efficientnet", target, out_root=tmp_path, registry=registry, validate=False)
    (artifact,) = [p for p in outcome.out_dir.iterdir() if p.suffix in (".mlmodel", ".mlpackage")]
    spec = ct.models.MLModel(str(artifact), skip_model_load=True).get_spec()
    meta = dict(spec.description.metadata.userDefined)
    loads_on = IOS_OF_SPEC[spec.specificationVersion]
    assert meta["coreml_minimum_deployment_target"] == loads_on
    assert meta["coreml_spec_version"] == str(spec.specificationVersion)
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["path"] == artifact.name]
    assert f"{loads_on}+" in entry["description"]
    if target == "ios-mlmodel":
        assert meta["input_layout"] == "NCHW" and meta["normalization"].startswith("host")
    else:
        assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
        assert meta["input_layout"] == "image" and meta["input_dtype"] == "uint8" and meta["input_range"] == "0-255"
        assert meta["normalization"].startswith("inside the model")
        assert json.loads(meta["folded_std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert not [v for v in meta.values() if str(tmp_path) in v or "/work/" in v]


def _pickle_checkpoint(tmp_path: Path, payload) -> Checkpoint:
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "payload": payload}, path)
    return Checkpoint(path, sha256_file(path))


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


class _Eval:
    def __reduce__(self):
        return (eval, ("1",))


@pytest.mark.parametrize(("payload", "callable_name"), [(_System(), "os.system"), (_Eval(), "eval")])
def test_a_refused_pickle_names_the_callable_and_never_advises_the_unsafe_load(payload, callable_name, tmp_path):
    with pytest.raises(CheckpointError) as err:
        read_state_dict(_pickle_checkpoint(tmp_path, payload))
    text = f"{err.value} {err.value.hint}"
    assert f"it would call {callable_name} when loaded" in str(err.value)
    assert "safetensors" in err.value.hint
    assert "weights_only` set to `False" not in text and "weights_only=False" not in text


def test_tflite_nhwc_states_the_input_litert_asks_for(registry, tmp_path):
    pytest.importorskip("litert_torch")
    interpreter = pytest.importorskip("ai_edge_litert.interpreter")
    from zoo.converters.torch_to_tflite import read_metadata
    from zoo.pipeline import convert

    out = convert("tiny_efficientnet", "tflite-nhwc", out_root=tmp_path, registry=registry, validate=False).out_dir
    meta = read_metadata(out / "model.tflite")
    (detail,) = interpreter.Interpreter(model_path=str(out / "model.tflite")).get_input_details()
    assert meta["input_layout"] == meta["layout"] == "NHWC" and tuple(detail["shape"]) == (1, 64, 64, 3)
    assert meta["input_dtype"] == np.dtype(detail["dtype"]).name == "float32"
    assert meta["normalization"].startswith("host") and json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_bare_pickle_is_refused_naming_the_callable(protocol, tmp_path, recwarn):
    """Not torch's zip format: torch stops at an opcode before the import, so zoo reads the callable
    off the pickle itself (pickletools executes nothing)."""
    import pickle

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_System(), protocol=protocol))
    with pytest.raises(CheckpointError) as err:
        read_state_dict(Checkpoint(path, sha256_file(path)))
    assert "it would call os.system when loaded" in str(err.value)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]  # nothing else on stderr
