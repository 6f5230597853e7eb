"""Architecture coverage: the coverage registry's families (small variants, untrained) × the targets
users ship to, generated from the registry the way timm generates its tests.

Every cell either passes, or fails the way the README's coverage table says (KNOWN: a substring of
the one-line reason) — a new failure, or a known one that starts passing, fails this test. The server
cells run in every suite; the whole matrix is behind `-m full` (minutes per cell on 2 cores)."""

from __future__ import annotations

import pytest

from zoo.errors import ZooError
from zoo.fidelity import Status
from zoo.pipeline import convert
from zoo.registry import load_registry

TARGETS = ("server", "android-int8", "tflite", "tflite-int8", "openvino-int8", "ios", "hailo8l")
FAST = ("cov_swin", "cov_dinov3", "cov_mobilevitv2")
PARITY = "parity vs source"
# (model, target) → what its one-line failure says, as measured on a 2-core AVX2 host (the README's
# coverage table); int8 parity figures depend on the CPU's int8 kernels, so a VNNI host may differ
KNOWN: dict[tuple[str, str], str] = {
    ("cov_convnextv2", "openvino-int8"): PARITY,
    ("cov_convnextv2", "hailo8l"): "Div at node",
    ("cov_efficientvit", "tflite-int8"): "Pad output dimension overflowed",
    ("cov_efficientvit", "hailo8l"): "Div at node",
    ("cov_fastvit", "android-int8"): PARITY,
    ("cov_fastvit", "openvino-int8"): PARITY,
    ("cov_levit", "openvino-int8"): PARITY,
    ("cov_mobilevitv2", "tflite"): "litert-torch",
    ("cov_mobilevitv2", "tflite-int8"): "litert-torch",
    ("cov_mobilevitv2", "openvino-int8"): "openvino_to_int8 failed",
}


def coverage_models() -> list[str]:
    return sorted(s.name for s in load_registry() if s.tags.get("tier") == "coverage")


def outcome_line(model: str, target: str, tmp_path) -> str:
    """'' when the cell passes, else its one-line reason (an error, or the failed rows)."""
    try:
        report = convert(model, target, out_root=tmp_path, latency_runs=20).report
    except ZooError as exc:
        return f"{type(exc).__name__}: {exc}"
    failed = [f"{c.artifact}: {c.name} = {c.value}" for c in report.checks if c.status is Status.FAIL]
    return "; ".join(failed)


def check_cell(model: str, target: str, tmp_path) -> None:
    line = outcome_line(model, target, tmp_path)
    expected = KNOWN.get((model, target))
    if expected is None:
        assert line == "", f"{model} × {target} fails: {line}"
    else:
        assert expected in line, f"{model} × {target}: expected a failure saying {expected!r}, got {line!r}"
    assert "\n" not in line


@pytest.mark.parametrize("model", FAST)
def test_coverage_on_the_server_target(model, tmp_path):
    check_cell(model, "server", tmp_path)


@pytest.mark.full
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", coverage_models())
def test_coverage_matrix(model, target, tmp_path):
    pytest.importorskip("onnxruntime")
    check_cell(model, target, tmp_path)
