"""Parity that can fail: a constant or shuffled output never passes parity vs source, on any target's
threshold, even when the source embeds every input almost alike (untrained weights)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ready_targets

from zoo.converters import Artifact
from zoo.fidelity import Fidelity, Status
from zoo.runtimes import RuntimeBase, SessionBase
from zoo.targets import get_target
from zoo.validators import References, validate_one
from zoo.validators.checks import source_parity


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _sources(kind: str, n: int = 16, dim: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "distinct":  # a trained model: different inputs, different embeddings
        return _unit(rng.standard_normal((n, dim)))
    # untrained weights: every input embeds almost alike (pairwise cosine ≥ 0.9998, as seen for LeViT)
    return _unit(rng.standard_normal(dim) + 0.004 * rng.standard_normal((n, dim)))


def _fake(kind: str, source: np.ndarray) -> np.ndarray:
    if kind == "constant":
        return np.repeat(_unit(source.mean(axis=0, keepdims=True)), len(source), axis=0)
    if kind == "shuffled":
        return source[np.roll(np.arange(len(source)), 1)]
    if kind == "exact":
        return source.copy()
    rng = np.random.default_rng(1)  # a faithful artifact with a little numeric error
    return _unit(source + 1e-6 * rng.standard_normal(source.shape))


@pytest.mark.parametrize("spread", ["distinct", "near-identical"])
@pytest.mark.parametrize("minimum", [0.9999, 0.99, 0.98, 0.95])
def test_broken_outputs_never_pass(spread, minimum):
    source = _sources(spread)
    for broken in ("constant", "shuffled"):
        row = source_parity("parity vs source", source, _fake(broken, source), minimum, Fidelity.MEASURED, "a")
        assert row.status is not Status.PASS, (broken, row.value, row.detail)
    constant = source_parity("p", source, _fake("constant", source), minimum, Fidelity.MEASURED, "a")
    assert constant.status is Status.FAIL  # a constant output is a failure, not merely "not meaningful"
    for good in ("exact", "faithful"):
        row = source_parity("p", source, _fake(good, source), minimum, Fidelity.MEASURED, "a")
        assert row.status is Status.PASS and row.data["identified"] == len(source), row.detail


def test_the_cosine_alone_would_have_passed_them():
    """The case the check exists for: the mean embedding scores ≥ 0.9999 against near-identical sources."""
    from zoo.validators.metrics import cosine_rows

    source = _sources("near-identical")
    assert cosine_rows(source, _fake("constant", source)).min() > 0.9999
    row = source_parity("p", source, _fake("constant", source), 0.9999, Fidelity.MEASURED, "a")
    assert row.status is Status.FAIL and "constant or collapsed" in row.detail


class _FakeSession(SessionBase):
    def __init__(self, outputs):
        self.outputs, self.batch = outputs, None

    def run(self, x):
        return self.outputs[: len(x)]


class _FakeRuntime(RuntimeBase):
    name = "fake"
    formats = frozenset({"onnx"})
    measures_latency = False

    def __init__(self, outputs):
        self.outputs = outputs

    def open(self, path):
        return _FakeSession(self.outputs)


@pytest.mark.parametrize("target", ready_targets())
@pytest.mark.parametrize("broken", ["constant", "shuffled"])
def test_a_broken_artifact_fails_parity_on_every_target(target, broken, registry, tmp_path):
    """Through the validator every target uses, with the target's own threshold."""
    spec = registry.get("tiny_vit")
    source = _sources("near-identical", dim=spec.embedding_dim)
    x = np.zeros((len(source), 3, 8, 8), np.float32)
    refs = References(x, tuple(f"s{i}" for i in range(len(source))), 12, source, "torch fp32", None, "no teacher")
    runtime = _FakeRuntime(_fake(broken, source))
    rows = validate_one(spec, get_target(target), tmp_path, Artifact("m.onnx", "onnx"), refs, runtime, 20)
    parity = next(r for r in rows if r.name.startswith("parity vs source"))
    assert parity.status is not Status.PASS, parity.detail


class _PixelRuntime(_FakeRuntime):
    takes_uint8_pixels = True  # like a Hailo artifact: inputs are snapped to uint8 pixels on the way in


def test_an_artifact_that_takes_pixels_is_judged_on_the_inputs_it_can_take(registry, tmp_path):
    """The source's embeddings of the inputs snapped to the pixel grid are the reference for such a
    runtime; a constant or shuffled output still fails against them, and a runtime that takes floats
    is still judged against the source on the inputs as given."""
    spec, target = registry.get("tiny_vit"), get_target("hailo8l")
    on_grid = _sources("distinct", dim=spec.embedding_dim)
    as_given = _unit(np.random.default_rng(7).standard_normal(on_grid.shape))
    x = np.zeros((len(on_grid), 3, 8, 8), np.float32)
    labels = tuple(f"s{i}" for i in range(len(on_grid)))
    refs = References(x, labels, 12, as_given, "torch fp32", None, "no teacher", on_grid)

    def parity(runtime):
        rows = validate_one(spec, target, tmp_path, Artifact("m.onnx", "onnx"), refs, runtime, 20)
        return next(r for r in rows if r.name.startswith("parity vs source"))

    exact = parity(_PixelRuntime(on_grid.copy()))
    assert exact.status is Status.PASS and "uint8 pixel grid" in exact.detail
    for broken in ("constant", "shuffled"):
        assert parity(_PixelRuntime(_fake(broken, on_grid))).status is not Status.PASS
    assert parity(_FakeRuntime(on_grid.copy())).status is not Status.PASS


def test_snapping_to_pixels_lands_on_the_grid_and_keeps_photos():
    from zoo.runtimes.hailo import snap_to_pixels, to_pixels

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    noise = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    snapped = snap_to_pixels(noise, mean, std)
    pixels = to_pixels(snapped, mean, std)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3  # clipped to what the device takes
    assert np.abs(pixels - np.rint(pixels)).max() < 1e-3  # on the integer grid
    assert np.array_equal(snap_to_pixels(snapped, mean, std), snapped)  # a photo's pixels stay put
