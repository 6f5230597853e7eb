"""The iOS targets (Core ML): conversion matrix with emulated parity, structure, options, device path.

Matrix: every tiny and reference model × fp32/fp16 × .mlpackage/.mlmodel. An .mlpackage is run by
zoo's numpy MIL executor (emulated) and must match torch: cosine ≥ 0.9999 in fp32, ≥ 0.999 in fp16.
An .mlmodel (neuralnetwork) is checked structurally only: the executor runs ML Programs only and
Core ML itself needs macOS. The macOS path (Core ML's predict) is tested with a stand-in MLModel.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from zoo.converters import ConvertContext  # noqa: E402
from zoo.converters.torch_to_coreml import (  # noqa: E402
    SENSITIVE_OPS,
    CoreMLOptions,
    TorchToCoreML,
    TorchToCoreMLNeuralNetwork,
)
from zoo.errors import ConversionError, MissingDependency, UsageError  # noqa: E402
from zoo.fidelity import Fidelity, Status  # noqa: E402
from zoo.metadata import artifact_metadata  # noqa: E402
from zoo.registry import load_registry  # noqa: E402
from zoo.runtimes import coreml as coreml_runtime  # noqa: E402
from zoo.runtimes.coreml_mil import CoreMLEmulatedSession, UnsupportedCoreMLModel  # noqa: E402
from zoo.targets import get_target  # noqa: E402
from zoo.validators import coreml_structure  # noqa: E402
from zoo.validators.inputs import parity_inputs  # noqa: E402

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999}
TARGETS = {("mlpackage", "fp16"): "ios", ("mlpackage", "fp32"): "ios-fp32", ("mlmodel", "fp16"): "ios-mlmodel"}


def _matrix_models() -> list[str]:
    return [s.name for s in load_registry() if s.tags.get("tier") in ("tiny", "reference")]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # small models on a shared 2-core machine: extra threads only spin
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def source(name: str):
    """(spec, torch model, parity inputs, torch embeddings) for one registered model."""
    from zoo.models import build_model
    from zoo.pipeline import embed_torch

    spec = load_registry().get(name)
    model = build_model(spec)
    x, _ = parity_inputs(spec.input_size, spec.mean, spec.std)
    return spec, model, x, embed_torch(model, x)


def target_for(fmt: str, precision: str):
    if (fmt, precision) in TARGETS:
        return get_target(TARGETS[fmt, precision])
    return dataclasses.replace(get_target("ios-mlmodel"), name="ios-mlmodel-fp32", precision=precision)


def context(name: str, target, workdir, torch_model="source") -> ConvertContext:
    spec, model, x, _ = source(name)
    return ConvertContext(
        model=spec,
        target=target,
        workdir=workdir,
        input_size=spec.input_size,
        torch_model=model if torch_model == "source" else torch_model,
        sample_inputs=x,
        metadata=artifact_metadata(spec, target, spec.input_size),
    )


def cosines(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def convert(step, ctx):
    assert step.preflight(ctx, None) == []
    (artifact,) = step.convert(ctx, None)
    ctx.artifacts.append(artifact)
    return artifact, ctx.workdir / artifact.name


def structural(ctx) -> dict:
    """The step's own rows and the format inspectors' (as zoo convert and zoo validate report them)."""
    from zoo.validators.inspectors import inspect_artifacts

    return {c.name: c for c in [*ctx.checks, *inspect_artifacts(ctx.workdir, ctx.artifacts)]}


def assert_structure_passes(ctx, spec):
    rows = structural(ctx)
    gated = [c for c in rows.values() if c.status not in (Status.INFO, Status.NOT_RUN)]
    assert gated and all(c.status is Status.PASS for c in gated), [(c.name, c.value, c.detail) for c in gated]
    assert all(c.fidelity is Fidelity.MEASURED for c in gated)
    output = rows["Core ML output: the embedding, name, shape, dtype"]
    assert "embedding: float32" in output.value
    norm = rows["embedding L2 normalization inside the model"]
    assert f"on the {spec.embedding_dim}-d embedding" in norm.value
    latency = next(c for c in rows.values() if c.name.startswith("latency p90"))
    assert latency.status is Status.NOT_RUN and latency.fidelity is Fidelity.NOT_RUN
    return rows


# ------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("fmt", ["mlpackage", "mlmodel"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("model", _matrix_models())
def test_matrix(model, precision, fmt, tmp_path):
    spec, _, x, want = source(model)
    ctx = context(model, target_for(fmt, precision), tmp_path)
    step = TorchToCoreML() if fmt == "mlpackage" else TorchToCoreMLNeuralNetwork()
    artifact, path = convert(step, ctx)
    assert artifact.format == fmt and path.exists()
    rows = assert_structure_passes(ctx, spec)
    fmt_row = rows["Core ML format and deployment target"]

    if fmt == "mlmodel":
        # structural only: zoo's MIL executor runs ML Programs, Core ML itself needs macOS
        assert fmt_row.data["model_type"] == "neuralNetwork" and fmt_row.data["spec_version"] <= 5
        assert artifact.runtime == "coreml_neuralnetwork"
        with pytest.raises(UnsupportedCoreMLModel, match="neuralNetwork"):
            CoreMLEmulatedSession(path)
        weights = coreml_structure.inspect(path).weight_dtypes
        assert set(weights) == {precision} and weights[precision] > 0
        print(f"\n{model} {precision} mlmodel: structural only (weights {weights})")
        return

    assert fmt_row.data == {"model_type": "mlProgram", "spec_version": 7, "loads_on": "iOS16"}
    session = CoreMLEmulatedSession(path)
    assert session.uses_fp16 is (precision == "fp16")
    got = session.run(x)
    assert got.shape == (len(x), spec.embedding_dim) and got.dtype == np.float32
    cos = cosines(got, want)
    assert cos.min() >= MIN_COSINE[precision], f"{model} {precision}: min cosine {cos.min():.7f}"
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() <= 1e-3
    print(f"\n{model} {precision} mlpackage: emulated min cosine {cos.min():.7f} mean {cos.mean():.7f}")


# ------------------------------------------------------------------ options


def test_mixed_precision_keeps_sensitive_ops_in_fp32(tmp_path):
    spec, _, x, want = source("tiny_vit")
    ctx = context("tiny_vit", get_target("ios-mixed"), tmp_path)
    _, path = convert(TorchToCoreML(CoreMLOptions(fp32_ops=SENSITIVE_OPS)), ctx)
    assert_structure_passes(ctx, spec)
    s = coreml_structure.inspect(path)
    # every layer_norm and softmax of the ViT is fp32, the matmuls and linears fp16
    assert s.fp32_compute_ops["layer_norm"] == s.op_counts["layer_norm"] > 0
    assert s.fp32_compute_ops["softmax"] == s.op_counts["softmax"] > 0
    assert "linear" not in s.fp32_compute_ops and s.precision_counts["fp16"] > 0
    assert cosines(CoreMLEmulatedSession(path).run(x), want).min() >= 0.999


@pytest.mark.parametrize("std", [(0.229, 0.224, 0.225), (0.5, 0.5, 0.5)])
def test_image_input_folds_mean_std(std, tmp_path):
    """ImageNet's per-channel std: scale 1/255, bias −mean, × 1/std in the program; one std: all in
    ImageType. Either way, pixels in → the source model's embedding of the normalized image."""
    spec, model, _, _ = source("tiny_convnext")
    spec = dataclasses.replace(spec, mean=(0.485, 0.456, 0.406), std=std)
    x, _ = parity_inputs(spec.input_size, spec.mean, spec.std)
    from zoo.pipeline import embed_torch

    want = embed_torch(model, x)
    target = get_target("ios-image")
    ctx = dataclasses.replace(
        context("tiny_convnext", target, tmp_path), model=spec, metadata=artifact_metadata(spec, target, 64)
    )
    _, path = convert(TorchToCoreML(CoreMLOptions(image_input=True)), ctx)
    rows = assert_structure_passes(ctx, spec)
    assert rows["Core ML input: name, shape, dtype"].value == "image: RGB image 64×64"
    first_ops = [op.op_type for op in CoreMLEmulatedSession(path).executor.function.operations if op.op_type != "const"]
    per_channel = len(set(std)) > 1
    # ImageType's scale/bias are a mul and an add (fp32); per-channel std adds one mul (× 1/std, fp16)
    assert first_ops[:4] == ["mul", "add", "cast", "mul" if per_channel else "conv"]
    session = coreml_runtime.CoreML().open(path)  # feeds pixels (x·std + mean)·255, as float32
    assert isinstance(session, coreml_runtime.EmulatedImageSession)
    assert cosines(session.run(x), want).min() >= 0.999
    meta = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    # the model takes pixels: its std is recorded as folded in, never as something for the app to apply
    assert json.loads(meta["folded_std"]) == list(std) and meta["input_kind"] == "image"
    assert "mean" not in meta and "std" not in meta


def test_preflight_lists_every_problem_at_once(tmp_path):
    target = dataclasses.replace(get_target("ios"), precision="int8", dynamic_batch=True)
    ctx = context("tiny_vit", target, tmp_path, torch_model=None)
    problems = TorchToCoreML(CoreMLOptions(deployment_target="iOS99")).preflight(ctx, None)
    text = " | ".join(problems)
    assert len(problems) == 4, problems
    assert "ONNX file" in text and "int8" in text and "'iOS99'" in text and "dynamic batch" in text

    ctx = context("tiny_vit", get_target("ios-fp32"), tmp_path)
    problems = TorchToCoreMLNeuralNetwork(
        CoreMLOptions(model_type="neuralnetwork", deployment_target="iOS16", fp32_ops=frozenset({"softmax"}))
    ).preflight(ctx, None)
    assert len(problems) == 2 and "iOS14 at the latest" in problems[0] and "fp32_ops" in problems[1]
    assert TorchToCoreML(CoreMLOptions(deployment_target="iOS14")).preflight(ctx, None) == [
        "an ML Program needs iOS15 or later, not iOS14"
    ]


def test_other_deployment_target(tmp_path):
    ctx = context("tiny_efficientnet", get_target("ios"), tmp_path)
    _, path = convert(TorchToCoreML(CoreMLOptions(deployment_target="iOS17")), ctx)
    row = structural(ctx)["Core ML format and deployment target"]
    assert row.status is Status.PASS and row.data["spec_version"] == 8 and row.data["loads_on"] == "iOS17"
    meta = ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata
    assert meta["coreml_minimum_deployment_target"] == "iOS17"


def test_missing_coremltools_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "coremltools", None)
    with pytest.raises(MissingDependency) as info:
        TorchToCoreML().preflight(context("tiny_vit", get_target("ios"), tmp_path), None)
    assert info.value.extra == "coreml"


# ------------------------------------------------------------------ the structural validator catches


def test_structure_catches_a_dropped_normalization_and_a_wrong_dim(tmp_path):
    from zoo.models import build_model

    spec = source("tiny_convnext")[0]
    bare = build_model(spec, normalize=False)  # as if the export had dropped the L2 normalization
    ctx = context("tiny_convnext", get_target("ios"), tmp_path, torch_model=bare)
    _, path = convert(TorchToCoreML(), ctx)
    rows = structural(ctx)
    norm = rows["embedding L2 normalization inside the model"]
    assert norm.status is Status.FAIL and norm.value == "not found"

    expected = dataclasses.replace(_expected(ctx), embedding_dim=64)  # the registry says 64, the model has 32
    checks = {c.name: c for c in coreml_structure.structural_checks(path, expected, path.name)}
    assert checks["Core ML output: the embedding, name, shape, dtype"].status is Status.FAIL

    expected = dataclasses.replace(_expected(ctx), metadata={**ctx.metadata, "embedding_space": "other-space"})
    meta = {c.name: c for c in coreml_structure.structural_checks(path, expected, path.name)}
    row = meta["Core ML metadata (author, license, version, description, user-defined)"]
    assert row.status is Status.FAIL and "embedding_space" in row.detail


def _expected(ctx) -> coreml_structure.Expected:
    return coreml_structure.Expected(
        model_type="mlProgram",
        deployment_target="iOS16",
        input_name="images",
        input_size=ctx.input_size,
        image_input=False,
        output_name="embedding",
        embedding_dim=ctx.model.embedding_dim,
        normalized=True,
        precision="fp16",
        metadata=ctx.metadata,
    )


def test_an_op_the_executor_lacks_is_named_never_passed(monkeypatch, tmp_path):
    from zoo.runtimes import coreml_mil

    ctx = context("tiny_convnext", get_target("ios"), tmp_path)
    monkeypatch.setattr(coreml_mil, "OPS", {k: v for k, v in coreml_mil.OPS.items() if k != "layer_norm"})
    _, path = convert(TorchToCoreML(), ctx)
    row = structural(ctx)["every op known to the numpy MIL executor (emulation)"]
    assert row.status is Status.FAIL and "layer_norm" in row.detail
    with pytest.raises(ConversionError, match="layer_norm"):
        coreml_runtime.CoreML().open(path)


# ------------------------------------------------------------------ the pipeline, end to end


def test_zoo_convert_ios_report(tmp_path):
    from zoo.outputs import file_entry
    from zoo.pipeline import convert as zoo_convert

    outcome = zoo_convert("tiny_convnext", "ios", out_root=tmp_path, latency_runs=20)
    report = outcome.report
    assert not report.failed, report.to_terminal()
    rows = {c.name: c for c in report.checks}
    parity = rows["parity vs source (torch fp32)"]
    assert parity.fidelity is Fidelity.EMULATED and parity.value >= 0.999 and parity.data["samples"] == 16
    assert rows["unit L2 norm"].fidelity is Fidelity.EMULATED
    assert rows["latency p90 on an iPhone (Core ML)"].status is Status.NOT_RUN  # never a host figure
    assert not any(c.name.startswith("latency p90 (") for c in report.checks)
    assert "EMULATED" in report.info["validation runtime"]

    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    (entry,) = manifest["artifacts"]
    assert entry["kind"] == "directory" and entry["format"] == "mlpackage" and entry["runtime"] == "coreml"
    assert entry["sha256"] == file_entry(outcome.out_dir, "model.mlpackage")["sha256"]
    model = ct.models.MLModel(str(outcome.out_dir / "model.mlpackage"), skip_model_load=True)
    meta = model.user_defined_metadata
    assert meta["embedding_dim"] == "32" and meta["embedding_space"] == "tiny-32"
    assert meta["checkpoint_sha256"].startswith("none") and meta["zoo_version"] == manifest["zoo_version"]
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406]
    assert model.author and model.license and "untrained" in model.version and model.short_description
    assert "(pixel/255 − mean) / std" in model.input_description["images"]
    assert "L2-normalized" in model.output_description["embedding"]


def test_zoo_convert_mlmodel_is_structural_only(tmp_path):
    from zoo.pipeline import convert as zoo_convert

    report = zoo_convert("tiny_vit", "ios-mlmodel", out_root=tmp_path, latency_runs=20).report
    assert not report.failed, report.to_terminal()
    rows = {c.name: c for c in report.checks}
    not_run = rows["artifact validation"]
    assert not_run.status is Status.NOT_RUN and "ML Programs (.mlpackage) only" in not_run.detail
    assert not any(c.name.startswith("parity") for c in report.checks)  # no number claimed
    assert rows["embedding L2 normalization inside the model"].status is Status.PASS


# ------------------------------------------------------------------ macOS: Core ML's predict, stood in


class StandInMLModel:
    """Stands in for coremltools.models.MLModel on a Mac: reads the real spec, predicts with the
    numpy emulation, records what Core ML would have been asked."""

    def __init__(self, path, compute_units=None):
        self.path, self.compute_units = path, compute_units
        self.spec = ct.models.MLModel(path, skip_model_load=True).get_spec()
        self.feeds = []

    def get_spec(self):
        return self.spec

    def predict(self, feed):
        self.feeds.append(feed)
        (value,) = feed.values()
        if not isinstance(value, np.ndarray):  # a PIL image: Core ML's image input
            value = np.asarray(value, np.float32).transpose(2, 0, 1)[None]
        return {"embedding": CoreMLEmulatedSession(self.path).run(value)}


STAND_IN = SimpleNamespace(models=SimpleNamespace(MLModel=StandInMLModel), ComputeUnit=ct.ComputeUnit)


@pytest.fixture
def fp32_package(tmp_path):
    ctx = context("tiny_convnext", get_target("ios-fp32"), tmp_path)
    return convert(TorchToCoreML(), ctx)[1]


def test_device_session_predicts_each_sample_with_the_chosen_compute_units(fp32_package):
    _, _, x, want = source("tiny_convnext")
    session = coreml_runtime.CoreMLDeviceSession(fp32_package, "cpu_and_ne", ct=STAND_IN)
    assert session.model.compute_units is ct.ComputeUnit.CPU_AND_NE and session.batch is None
    got = session.run(x[:3])
    assert got.shape == (3, 32) and got.dtype == np.float32
    assert [f["images"].shape for f in session.model.feeds] == [(1, 3, 64, 64)] * 3
    assert cosines(got, want[:3]).min() >= 0.9999


def test_device_session_feeds_an_image_model_rgb_pixels(tmp_path):
    _, _, x, _ = source("tiny_convnext")
    ctx = context("tiny_convnext", get_target("ios-image"), tmp_path)
    _, path = convert(TorchToCoreML(CoreMLOptions(image_input=True)), ctx)
    session = coreml_runtime.CoreMLDeviceSession(path, "ALL", ct=STAND_IN)
    session.run(x[:2])
    image = session.model.feeds[0]["image"]
    assert image.mode == "RGB" and image.size == (64, 64)
    mean, std = np.array(ctx.model.mean), np.array(ctx.model.std)
    pixels = np.clip(np.rint((x[0].transpose(1, 2, 0) * std + mean) * 255), 0, 255)
    np.testing.assert_array_equal(np.asarray(image), pixels.astype(np.uint8))


def test_runtime_picks_core_ml_on_a_mac_and_the_emulation_elsewhere(monkeypatch, fp32_package):
    emulated = coreml_runtime.CoreML()
    assert emulated.fidelity is Fidelity.EMULATED and emulated.measures_latency is False
    assert "EMULATED" in emulated.version() and isinstance(emulated.open(fp32_package), CoreMLEmulatedSession)
    assert "ML Programs" in coreml_runtime.CoreMLNeuralNetwork().unavailable_reason()

    monkeypatch.setattr(coreml_runtime, "native_unavailable_reason", lambda: None)
    monkeypatch.setattr(coreml_runtime, "_coremltools", lambda: STAND_IN)
    monkeypatch.setenv(coreml_runtime.COMPUTE_UNITS_ENV, "CPU_ONLY")
    for device in (coreml_runtime.CoreML(), coreml_runtime.CoreMLNeuralNetwork()):
        assert device.fidelity is Fidelity.DEVICE and device.measures_latency is True
        assert device.unavailable_reason() is None
        session = device.open(fp32_package)
        assert isinstance(session, coreml_runtime.CoreMLDeviceSession)
        assert session.model.compute_units is ct.ComputeUnit.CPU_ONLY


def test_native_reason_and_compute_units(monkeypatch):
    assert "only on Apple platforms" in coreml_runtime.native_unavailable_reason("Linux")
    # on a Mac whose coremltools lacks the native bridge (as on this host): a reason, not a crash
    if not hasattr(ct, "libcoremlpython"):
        monkeypatch.setitem(sys.modules, "coremltools.libcoremlpython", None)
        assert "cannot reach Core ML" in coreml_runtime.native_unavailable_reason("Darwin")
    assert coreml_runtime.compute_units_from("cpu_and_gpu") == "CPU_AND_GPU"
    monkeypatch.delenv(coreml_runtime.COMPUTE_UNITS_ENV, raising=False)
    assert coreml_runtime.compute_units_from(None) == "ALL"
    with pytest.raises(UsageError, match="GPU_ONLY"):
        coreml_runtime.compute_units_from("GPU_ONLY")


def test_a_model_core_ml_cannot_load_fails_closed(fp32_package):
    class Refuses(StandInMLModel):
        def __init__(self, path, compute_units=None):
            raise RuntimeError("Error compiling model: spec version 7 is newer than this macOS")

    broken = SimpleNamespace(models=SimpleNamespace(MLModel=Refuses), ComputeUnit=ct.ComputeUnit)
    with pytest.raises(ConversionError, match="cannot load model.mlpackage.*newer than this macOS"):
        coreml_runtime.CoreMLDeviceSession(fp32_package, ct=broken)


def test_edgenext_converts_to_coreml(tmp_path):
    """coremltools 9.0's torch frontend calls int() on 1-element arrays, an error since NumPy 2.4
    ("only 0-dimensional arrays can be converted") for EdgeNeXt, Swin, EfficientViT, MobileViT-v2:
    the coreml extra keeps NumPy below 2.4, where the same converter takes them."""
    from zoo.pipeline import convert
    from zoo.registry import Registry, spec_from_dict

    spec = spec_from_dict(
        "edgenext",
        dict(architecture="timm:edgenext_xx_small", input_size=64, head=[16], embedding_dim=16, embedding_space="e"),
    )
    outcome = convert("edgenext", "ios", out_root=tmp_path, registry=Registry([spec]), validate=False)
    rows = {c.name: c for c in outcome.report.checks}
    assert rows["Core ML format and deployment target"].status is Status.PASS
    assert rows["Core ML output: the embedding, name, shape, dtype"].status is Status.PASS
