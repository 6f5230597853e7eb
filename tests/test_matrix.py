"""The registry-driven matrix: every tiny model × every ONNX Runtime target, asserting the numbers."""

import json

import numpy as np
import onnx
import pytest
from conftest import ready_targets, tiny_models

from zoo.checkpoints import sha256_file
from zoo.fidelity import Fidelity, Status
from zoo.pipeline import convert
from zoo.targets import get_target

ORT_TARGETS = [
    t for t in ready_targets() if get_target(t).runtime == "onnxruntime" and get_target(t).precision == "fp32"
]


def _checks(report, name_prefix):
    return [c for c in report.checks if c.name.startswith(name_prefix)]


@pytest.mark.parametrize("target", ORT_TARGETS)
@pytest.mark.parametrize("model", tiny_models())
def test_convert_tiny_model(model, target, registry, tmp_path):
    spec = registry.get(model)
    target_spec = get_target(target)
    outcome = convert(model, target, out_root=tmp_path, registry=registry, latency_runs=20)
    report = outcome.report
    assert not report.failed, report.to_terminal()

    runnable = [a for a in json.loads((outcome.out_dir / "manifest.json").read_text())["artifacts"] if a["runnable"]]
    assert runnable, "no runnable artifact"
    shapes = _checks(report, "output shape")
    assert len(shapes) == len(runnable)
    assert all(c.status is Status.PASS and c.value.startswith(f"(16, {spec.embedding_dim})") for c in shapes)

    for check in _checks(report, "parity vs source"):
        assert check.fidelity is Fidelity.MEASURED
        assert check.data["cosine_min"] >= target_spec.min_cosine_vs_source
        resampled = "photos (random tensors are not pictures" in check.detail  # Immich's 112-px input
        assert check.data["max_abs_diff"] < (0.1 if resampled else 1e-3)
        assert check.data["samples"] == (12 if resampled else 16)
    for check in _checks(report, "unit L2 norm"):
        assert check.status is Status.PASS and check.value <= 1e-3

    latency = _checks(report, "latency p90")
    assert len(latency) == len(runnable)
    for check in latency:
        assert check.fidelity is Fidelity.MEASURED
        assert 0 < check.data["p50_ms"] <= check.data["p90_ms"] <= check.data["p99_ms"]
        assert check.data["runs"] >= 20
        # A host figure never passes a device budget; against a host budget it passes or fails on its value.
        if target_spec.latency_on == "device" or not target_spec.latency_budget_ms:
            assert check.status is Status.INFO
        else:
            within = check.value < target_spec.latency_budget_ms
            assert check.status is (Status.PASS if within else Status.FAIL)
    if target_spec.latency_on == "device" and target_spec.latency_budget_ms:
        assert any(c.status is Status.NOT_RUN and c.fidelity is Fidelity.NOT_RUN for c in report.checks)

    teacher_rows = _checks(report, "parity vs teacher")
    assert teacher_rows and all(c.status is Status.NOT_APPLICABLE for c in teacher_rows)
    assert any("UNTRAINED WEIGHTS" in w for w in report.warnings)


@pytest.mark.parametrize("target", ORT_TARGETS)
def test_manifest_and_metadata(target, registry, tmp_path):
    outcome = convert("tiny_convnext", target, out_root=tmp_path, registry=registry, latency_runs=20)
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        path = outcome.out_dir / entry["path"]
        assert entry["sha256"] == sha256_file(path)
        assert entry["size"] == path.stat().st_size > 0
    assert manifest["model"]["name"] == "tiny_convnext"
    assert manifest["target"]["name"] == target
    assert manifest["weights"] == "untrained"
    assert manifest["tools"]["torch"].startswith("2.")

    model = onnx.load(str(outcome.out_dir / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_name"] == "tiny_convnext"
    assert props["embedding_dim"] == "32"
    assert props["embedding_space"] == "tiny-32"
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert props["layout"] == "NCHW"
    assert props["checkpoint_sha256"].startswith("none")
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if get_target(target).dynamic_batch:
        assert batch_dim.dim_param  # symbolic batch
        assert not any(d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    else:
        assert batch_dim.dim_value == 1

    report = json.loads((outcome.out_dir / "report.json").read_text())
    assert report["verdict"].startswith("pass")
    assert "| parity vs source" in (outcome.out_dir / "report.md").read_text()


def test_dynamic_batch_runs_any_batch(registry, tmp_path):
    from zoo.models import build_model
    from zoo.runtimes.onnxruntime import OrtSession

    outcome = convert("tiny_vit", "server", out_root=tmp_path, registry=registry, validate=False)
    session = OrtSession(outcome.out_dir / "model.onnx")
    torch_model = build_model(registry.get("tiny_vit"))
    import torch

    for batch in (1, 3, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 64, 64), dtype=np.float32)
        out = session.run(x)
        ref = torch_model(torch.from_numpy(x)).detach().numpy()
        assert out.shape == (batch, 32)
        assert np.abs(out - ref).max() < 1e-4
    assert outcome.report.verdict == "not validated"


def test_outputs_are_deterministic(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_CACHE", "off")  # two real conversions, not one and its cached copy
    a = convert("tiny_efficientnet", "server", out_root=tmp_path / "a", registry=registry, validate=False)
    b = convert("tiny_efficientnet", "server", out_root=tmp_path / "b", registry=registry, validate=False)
    assert sha256_file(a.out_dir / "model.onnx") == sha256_file(b.out_dir / "model.onnx")
