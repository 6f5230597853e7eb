"""zoo diagnose: a divergence planted at a known module is named there, on each runtime that exposes
its tensors; the int8 suggestion re-quantizes with it in float and measurably improves parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.cli import main
from zoo.diagnose import diagnose_session, module_nodes
from zoo.diagnose.pairing import module_taps, pair
from zoo.registry import load_registry

PLANTED = '''
import torch
from torch import nn


class Outlier(nn.Module):
    """Scales channel 0 by 1000: on a uint8 grid over that range every other channel rounds to 0."""

    def __init__(self, channels=16):
        super().__init__()
        scale = torch.ones(1, channels, 1, 1)
        scale[0, 0] = 1000.0
        self.register_buffer("scale", scale)

    def forward(self, x):
        return x * self.scale


class Planted(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.sensitive = nn.Sequential(Outlier(), nn.Conv2d(16, 16, 1))
        with torch.no_grad():
            self.sensitive[1].weight[:, 0] = 0.0  # the float model ignores the outlier channel
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(128, 16)

    def forward(self, x):
        x = self.body(self.sensitive(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


def factory(**kwargs):
    return Planted().eval()
'''

REGISTRY = """
[models.planted]
architecture = "planted_factory:factory"
embedding_dim = 16
input_size = 32
embedding_space = "planted"
"""


@pytest.fixture
def planted(factory_module, write_registry):
    factory_module("planted_factory", PLANTED)
    return write_registry(REGISTRY)


def _model_and_inputs(registry_file):
    from zoo.models import build_model
    from zoo.validators.inputs import parity_inputs

    spec = load_registry([registry_file]).get("planted")
    x, labels = parity_inputs(32, spec.mean, spec.std)
    return build_model(spec), x[:4], labels[:4]


def _perturbed(src: Path, dst: Path, node_of) -> str:
    """The ONNX at src with one Conv's weights scrambled (the layer 'replaced in the artifact')."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    node = node_of(model)
    weights = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(weights[node.input[1]])
    scrambled = np.random.default_rng(0).permutation(w.ravel()).reshape(w.shape).astype(w.dtype)
    weights[node.input[1]].CopyFrom(numpy_helper.from_array(scrambled, node.input[1]))
    onnx.save(model, str(dst))
    return node.output[0]


def _second_conv(model):
    return [n for n in model.graph.node if n.op_type == "Conv"][1]  # sensitive.1 (the stem's BN is folded)


@pytest.mark.parametrize("runtime_name", ["onnxruntime", "openvino"])
def test_a_replaced_layer_is_named_where_the_divergence_starts(tmp_path, planted, runtime_name):
    from zoo.runtimes import get_runtime

    assert main(["convert", "--model", "planted", "--target", "server", "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q", "--latency-runs", "20"]) == 0  # fmt: skip
    out = tmp_path / "o" / "planted" / "server"
    _perturbed(out / "model.onnx", tmp_path / "broken.onnx", _second_conv)
    torch_model, x, labels = _model_and_inputs(planted)
    runtime = get_runtime(runtime_name)
    if runtime_name == "openvino":
        import openvino as ov

        for name in ("model", "broken"):
            ov.save_model(ov.convert_model(str(out / "model.onnx" if name == "model" else tmp_path / "broken.onnx")),
                          str(tmp_path / f"{name}.xml"))  # fmt: skip
        twin, broken = runtime.open(tmp_path / "model.xml"), runtime.open(tmp_path / "broken.xml")
    else:
        twin, broken = runtime.open(out / "model.onnx"), runtime.open(tmp_path / "broken.onnx")
    d = diagnose_session("broken", broken, runtime, torch_model, x, labels, ("model", twin))
    assert d.start_module == "backbone.sensitive.1"
    before = [r for r in d.layers[: d.start]]
    assert before and all(r.cosine_min > 0.9999 for r in before)  # exact until the replaced layer
    assert d.layers[d.start].cosine_min < 0.99
    assert d.final_cosine_min < 0.99


@pytest.mark.parametrize(
    ("target", "artifact"),
    [("server", "model.onnx"), ("openvino", "model.xml"), ("tflite", "model.tflite"), ("ios", "model.mlpackage")],
)
def test_an_intact_artifact_pairs_exactly_on_every_runtime(tmp_path, planted, target, artifact):
    """ONNX Runtime, OpenVINO, LiteRT (NHWC tensors) and zoo's Core ML executor expose their tensors;
    an artifact that computes what its source does pairs every layer and adds no error."""
    from zoo.converters import Artifact
    from zoo.targets import get_target
    from zoo.validators import runtime_for

    assert main(["convert", "--model", "planted", "--target", target, "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q", "--latency-runs", "20"]) == 0  # fmt: skip
    torch_model, x, labels = _model_and_inputs(planted)
    out = tmp_path / "o" / "planted" / target
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["path"] == artifact]
    runtime = runtime_for(Artifact(artifact, entry["format"], runtime=entry["runtime"]), get_target(target))
    d = diagnose_session(artifact, runtime.open(out / artifact), runtime, torch_model, x, labels)
    modules = {r.module for r in d.layers}
    # a toolchain may fold a layer into another (a batch norm, a constant multiply, a ReLU into a conv)
    assert len(modules) >= 6 and {"backbone.body.3", "backbone.fc"} <= modules
    assert all(r.cosine_min > 0.9999 for r in d.layers)
    assert d.final_cosine_min > 0.9999 and d.start is None or d.layers[d.start].relative_error < 1e-3


def test_pairing_does_not_pair_a_scaled_copy():
    """Cosine is blind to scale: a layer scale (x·γ) must not pair with its own input."""
    from zoo.diagnose.pairing import ModuleTap

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, 4, 4)).astype(np.float32)
    taps = [ModuleTap("scaled", x * 1e-3, 0)]
    assert pair(taps, {"unscaled": x}) == []
    assert [p.tensor for p in pair(taps, {"unscaled": x, "scaled": x * 1e-3})] == ["scaled"]
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    (found,) = pair([ModuleTap("m", x, 0)], {"t": nhwc})
    assert found.layout == "channels-last"


def test_int8_divergence_is_found_and_the_suggestion_improves_parity(tmp_path, planted, capsys):
    out_root = tmp_path / "o"
    code = main(["convert", "--model", "planted", "--target", "android-int8", "--out", str(out_root),
                 "--registry", str(planted), "-q", "--latency-runs", "20"])  # fmt: skip
    out = out_root / "planted" / "android-int8"
    report = json.loads((out / "report.json").read_text())
    parity = next(c for c in report["checks"] if c["artifact"] == "model.int8.onnx" and "vs source" in c["name"])
    assert code == 1 and parity["status"] == "fail"  # the outlier channel wrecks uint8 activations
    # the failed conversion explains itself: a section in report.json / report.md
    (auto,) = [d for d in report["diagnosis"] if d["artifact"] == "model.int8.onnx"]
    # the conv's own output is renamed in the int8 graph: the jump shows on the next tensor, after it
    assert "backbone.sensitive.1" in [auto["divergence_starts_at"], *auto["divergence_starts_after"]]
    assert "Where parity breaks" in (out / "report.md").read_text()
    row = next(
        c
        for c in report["checks"]
        if c["name"].startswith("divergence starts at") and c["artifact"] == "model.int8.onnx"
    )
    assert row["status"] == "info" and row["value"] == auto["divergence_starts_at"]

    # and the matrix's HTML report plots it
    from zoo.matrix import collect
    from zoo.matrix.html import to_html

    page = to_html(collect(models=["planted"], targets=["android-int8"], outputs=out_root, registry_paths=[planted]))
    assert "Where parity breaks" in page and "relative error vs the source model" in page

    capsys.readouterr()
    assert main(["diagnose", str(out), "--suggest", "--registry", str(planted), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "parity vs source FAILED" in printed and "backbone.sensitive" in printed
    body = json.loads((out / "diagnosis.json").read_text())
    (d,) = [d for d in body["diagnoses"] if d["artifact"] == "model.int8.onnx"]
    tries = [s for s in d["suggestions"] if s["fidelity"] == "measured"]
    assert tries and all("float_modules" in s["knob"] for s in tries)
    best = max(s["after"]["parity"] for s in tries)
    assert best >= 0.98 and best > parity["value"] + 0.02  # measurably better: the rule passes
    assert "**Measured fix**" in (out / "diagnosis.md").read_text()
    assert (out / "diagnosis.svg").read_text().startswith("<svg")


def test_the_float_modules_knob_reaches_the_quantizer(tmp_path, planted):
    text = planted.read_text() + 'float_modules = { "android-int8" = ["backbone.sensitive"] }\n'
    planted.write_text(text)
    assert main(["convert", "--model", "planted", "--target", "android-int8", "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q", "--latency-runs", "20"]) == 0  # fmt: skip
    manifest = json.loads((tmp_path / "o" / "planted" / "android-int8" / "manifest.json").read_text())
    kept = manifest["float_modules"]["backbone.sensitive"]
    assert kept and set(kept) <= set(manifest["quantization"]["float_nodes"])
    report = json.loads((tmp_path / "o" / "planted" / "android-int8" / "report.json").read_text())
    row = next(c for c in report["checks"] if c["name"] == "modules kept out of int8 (float_modules)")
    assert row["status"] == "info" and row["data"] == {
        "modules": ["backbone.sensitive"],
        "nodes": len(kept),
        "kept_as": "in float",
    }
    assert "int8 speedup vs fp32" in row["detail"]  # where its cost is measured


def test_float_modules_errors_are_one_line(tmp_path, planted, capsys):
    planted.write_text(planted.read_text() + 'float_modules = { "android-int8" = ["backbone.sensitiv"] }\n')
    code = main(["convert", "--model", "planted", "--target", "android-int8", "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "backbone.sensitive" in err  # did you mean
    planted.write_text(REGISTRY + 'float_modules = { "server" = ["backbone.stem"] }\n')
    assert main(["convert", "--model", "planted", "--target", "server", "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q"]) == 2  # fmt: skip
    planted.write_text(REGISTRY + 'float_modules = { "server" = "backbone.stem" }\n')
    assert main(["list", "models", "--registry", str(planted)]) == 2
    assert not any((tmp_path / "o").rglob("manifest.json"))  # nothing written


def test_module_nodes_stop_at_the_module_boundary(tmp_path, planted):
    from zoo.runtimes.onnxruntime import OrtSession

    assert main(["convert", "--model", "planted", "--target", "server", "--out", str(tmp_path / "o"),
                 "--registry", str(planted), "-q", "--latency-runs", "20"]) == 0  # fmt: skip
    torch_model, x, _ = _model_and_inputs(planted)
    session = OrtSession(tmp_path / "o" / "planted" / "server" / "model.onnx")
    nodes = module_nodes(torch_model, x, session, ["backbone.sensitive", "backbone.fc"])
    ops = {n: op for n, op in _op_types(tmp_path / "o" / "planted" / "server" / "model.onnx").items()}
    assert sorted(ops[n] for n in nodes["backbone.sensitive"]) == ["Conv", "Mul"]
    fc = {ops[n] for n in nodes["backbone.fc"]}  # the linear layer, and the flatten between pool and it
    assert "Gemm" in fc or "MatMul" in fc
    assert fc <= {"Gemm", "MatMul", "Add", "Reshape", "Flatten"}


def _op_types(path: Path) -> dict[str, str]:
    import onnx

    return {n.name: n.op_type for n in onnx.load(str(path)).graph.node}


def test_diagnose_cli_errors(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2  # not an output folder
    taps, _ = module_taps(_identity(), np.zeros((2, 3, 4, 4), np.float32))
    assert taps == []
    shutil.rmtree(tmp_path, ignore_errors=True)


def _identity():
    from torch import nn

    return nn.Identity()


@pytest.mark.parametrize("culprits", [["b.3"], ["b.1", "b.6"], ["b.0", "b.4", "b.7"]])
def test_block_bisection_finds_the_blocks_that_must_stay_float(culprits):
    """A fake conversion that passes exactly when every culprit block is in float: the search names them
    all, and tries far fewer sets than there are subsets."""
    from zoo.diagnose.layers import Layer
    from zoo.diagnose.suggest import best_fix, bisect_blocks

    layers = [Layer(f"b.{i}", f"t{i}", (1,), 1.0, 1.0, 0.0, 0.0) for i in range(8)]

    class Fake:
        pass

    diagnosis = Fake()
    diagnosis.layers = layers
    tried = {}

    def attempt(modules):  # as suggestions() does: each set converted once
        ok = set(culprits) <= set(modules)
        return tried.setdefault(tuple(modules), {"modules": modules, "after": {"passed": ok, "parity": 0.99 * ok}})

    found = bisect_blocks(diagnosis, attempt)
    assert sorted(found) == sorted(culprits)
    assert best_fix(list(tried.values()))["modules"] == sorted(culprits)
    assert len(tried) <= 2 + 4 * len(culprits)  # of 2^8 subsets
