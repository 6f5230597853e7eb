"""The Hailo pre-flight as a format inspector: the Hailo-ready ONNX checked against zoo's table of
what Hailo's Dataflow Compiler takes for hailo8l (zoo.hailo.ops), by `zoo convert` and `zoo validate`
alike. Only an ONNX artifact whose facts say it is for the DFC is inspected (torch_to_hailo_onnx
marks its output); other ONNX files are not Hailo's business.
"""

from __future__ import annotations

from pathlib import Path

from zoo.errors import require
from zoo.fidelity import Check, Fidelity, Status

HAILO_PREFLIGHT = "hailo_preflight"  # the artifact fact that asks for this inspection (value: the chip)


class HailoPreflightInspector:
    name = "hailo_preflight"
    formats = frozenset({"onnx"})

    def inspect(self, path: Path, artifact) -> list[Check]:
        if not artifact.facts.get(HAILO_PREFLIGHT):
            return []
        onnx = require("onnx", "hailo")
        from zoo.hailo.ops import preflight

        graph = onnx.load(str(path), load_external_data=False)
        return preflight_checks(preflight(graph), path.name, graph)


def preflight_checks(report, onnx_name: str, graph) -> list[Check]:
    opset = next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)
    shape = next(iter(report.input_shapes.values()), None)
    ops = ", ".join(f"{op}×{n}" for op, n in report.op_counts.items())
    return [
        Check(
            "Hailo-ready ONNX: opset ≤ 17, static batch 1, one image input",
            Status.PASS if not report.graph_problems else Status.FAIL,
            Fidelity.MEASURED,
            value=f"opset {opset}, input {shape}",
            threshold="opset ≤ 17, [1, 3, H, W]",
            artifact=onnx_name,
            detail="; ".join(report.graph_problems),
        ),
        Check(
            "Hailo pre-flight: every op in the DFC op table (hailo8l)",
            Status.PASS if not report.unsupported else Status.FAIL,
            Fidelity.ESTIMATED,
            value=f"{len(report.unsupported)} unsupported",
            threshold="0 unsupported",
            artifact=onnx_name,
            detail=f"{len(report.op_counts)} op types in {report.nodes} nodes ({ops}); judged by zoo's table "
            "(zoo.hailo.ops, from Hailo's public model zoo and docs) — the DFC's parser has the final word",
            data=report.record(),
        ),
    ]
