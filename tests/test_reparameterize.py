"""Re-parameterizable blocks are folded before export (zoo.reparameterize), and only where the folded model
computes what the trained one does; parity vs source stays against the trained form."""

import json

import numpy as np
import pytest

from zoo.fidelity import Status
from zoo.pipeline import convert
from zoo.registry import load_registry
from zoo.reparameterize import CHECK_NAME, deployment_form, fusable_modules

REPBLOCK = '''
import torch
from torch import nn


class RepBlock(nn.Module):
    """RepVGG-style: a 3×3 and a 1×1 branch at training time, one 3×3 conv once folded."""

    def __init__(self, channels, drift):
        super().__init__()
        self.k3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.k1 = nn.Conv2d(channels, channels, 1)
        self.folded = None
        self.drift = drift

    def forward(self, x):
        y = self.folded(x) if self.folded is not None else self.k3(x) + self.k1(x)
        return torch.relu(y)

    def reparameterize(self):
        fused = nn.Conv2d(self.k3.in_channels, self.k3.out_channels, 3, padding=1)
        with torch.no_grad():
            fused.weight.copy_(self.k3.weight + nn.functional.pad(self.k1.weight, (1, 1, 1, 1)))
            fused.bias.copy_(self.k3.bias + self.k1.bias + self.drift)  # drift: a wrong fold
        self.folded = fused
        del self.k3, self.k1


class Net(nn.Module):
    def __init__(self, drift):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.blocks = nn.Sequential(RepBlock(8, drift), RepBlock(8, drift))
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def exact(**kwargs):
    return Net(0.0).eval()


def drifting(**kwargs):
    return Net(0.5).eval()
'''

REGISTRY = """
[models.rep_exact]
architecture = "rep_factory:exact"
embedding_dim = 8
input_size = 32
embedding_space = "rep"

[models.rep_drifting]
architecture = "rep_factory:drifting"
embedding_dim = 8
input_size = 32
embedding_space = "rep"
"""


@pytest.fixture
def rep_registry(factory_module, write_registry):
    factory_module("rep_factory", REPBLOCK)
    return load_registry([write_registry(REGISTRY)])


def _row(report):
    return next(c for c in report.checks if c.name == CHECK_NAME)


def test_a_reparameterizable_model_is_exported_folded(rep_registry, tmp_path):
    import onnx

    outcome = convert("rep_exact", "server", out_root=tmp_path / "o", registry=rep_registry)
    row = _row(outcome.report)
    assert row.status is Status.PASS and row.value >= 0.99999
    assert row.data["fused_modules"] == ["backbone.blocks.0", "backbone.blocks.1"]
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    assert manifest["reparameterized"]["fused_modules"] == ["backbone.blocks.0", "backbone.blocks.1"]
    convs = [n for n in onnx.load(str(outcome.out_dir / "model.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 3  # stem + one conv per block (unfolded: 5)
    parity = next(c for c in outcome.report.checks if c.name.startswith("parity vs source"))
    assert parity.status is Status.PASS and parity.value >= 0.9999


def test_a_fold_that_changes_the_numbers_is_refused_and_the_model_exported_as_trained(rep_registry, tmp_path):
    import onnx

    outcome = convert("rep_drifting", "server", out_root=tmp_path / "o", registry=rep_registry)
    row = _row(outcome.report)
    assert row.status is Status.INFO and row.value == "not applied" and "drifts" in row.detail
    convs = [n for n in onnx.load(str(outcome.out_dir / "model.onnx")).graph.node if n.op_type == "Conv"]
    assert len(convs) == 5
    parity = next(c for c in outcome.report.checks if c.name.startswith("parity vs source"))
    assert parity.status is Status.PASS


def test_a_model_with_nothing_to_fold_has_no_row(registry, tmp_path):
    from zoo.models import build_model

    model = build_model(registry.get("tiny_convnext"))
    assert fusable_modules(model) == []
    form = deployment_form(model, np.zeros((2, 3, 64, 64), np.float32))
    assert form.model is model and form.check is None
