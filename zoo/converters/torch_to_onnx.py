"""torch → ONNX: export, simplify (parity re-checked), full checker, metadata.

Opset 18+ uses torch's dynamo exporter (its lowest clean opset is 18); a lower opset, as Hailo's
toolchain wants, uses the legacy TorchScript exporter. An ONNX-file source is checked, simplified
and stamped with metadata the same way.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require
from zoo.fidelity import Check, Fidelity, Status
from zoo.validators.metrics import parity_stats

INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
# Past this size a single protobuf cannot hold the weights; ONNX then needs external data.
PROTOBUF_LIMIT_BYTES = 1_900_000_000
# Simplification is a graph rewrite: it must not move the numbers beyond float rounding.
SIMPLIFY_MIN_COSINE = 0.999999


class TorchToOnnx:
    name = "torch_to_onnx"
    extra = "onnx"
    fold_static_shapes = False  # a second onnxslim pass over data-propagated shapes (static exports)

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("onnx", self.extra)
        require("onnxruntime", self.extra)
        problems = []
        if ctx.model.architecture_kind == "onnx":
            if not Path(ctx.model.architecture).is_file():
                problems.append(f"source ONNX file {ctx.model.architecture} does not exist")
        elif ctx.target.opset >= 18:
            require("onnxscript", self.extra)
        return problems

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        onnx = require("onnx", self.extra)
        out = ctx.workdir / f"{ctx.target.artifact_name}.onnx"
        if ctx.model.architecture_kind == "onnx":
            model = onnx.load(ctx.model.architecture)
        else:
            model = self._export(ctx)
        model = self._simplify(ctx, model)
        onnx.helper.set_model_props(model, ctx.metadata)
        model.doc_string = f"zoo embedding model {ctx.model.name} for target {ctx.target.name}"
        external = model.ByteSize() > PROTOBUF_LIMIT_BYTES
        if external:
            onnx.save_model(model, str(out), save_as_external_data=True, location=out.name + ".data")
        else:
            onnx.save_model(model, str(out))
        try:
            onnx.checker.check_model(str(out), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"the exported ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        artifacts = [Artifact(out.name, "onnx", description=f"ONNX opset {ctx.target.opset}")]
        if external:
            artifacts.append(Artifact(out.name + ".data", "onnx-data", runnable=False, description="external weights"))
        return artifacts

    def _export(self, ctx: ConvertContext):
        import torch

        onnx = require("onnx", self.extra)
        x = torch.from_numpy(ctx.sample_inputs[:2].copy())  # batch 2: batch 1 would be specialised away
        if not ctx.target.dynamic_batch:
            x = x[:1]
        dynamo = ctx.target.opset >= 18
        kwargs: dict = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": ctx.target.opset}
        if dynamo:
            kwargs["dynamo"] = True
            kwargs["external_data"] = False
            if ctx.target.dynamic_batch:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        else:
            kwargs["dynamo"] = False
            if ctx.target.dynamic_batch:
                kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        path = ctx.workdir / "export.tmp.onnx"
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), torch.no_grad(), warnings.catch_warnings():
                # the tracer's "treated as a constant" warnings are what a static export is; a trace
                # that froze something input-dependent is caught by the parity checks, not by reading them
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(ctx.torch_model, (x,), str(path), **kwargs)
        except Exception as exc:
            (ctx.workdir / "export.log").write_text(log.getvalue())
            raise ConversionError(
                f"torch.onnx.export failed ({'dynamo' if dynamo else 'legacy'} exporter, opset {ctx.target.opset}): "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        model = onnx.load(str(path), load_external_data=True)
        for leftover in ctx.workdir.glob("export.tmp.onnx*"):
            leftover.unlink()
        return model

    def rewrite(self, ctx: ConvertContext, model):
        """A target's exact graph rewrites after simplification (parity re-checked with it); none here."""
        return model

    def _simplify(self, ctx: ConvertContext, model):
        """onnxslim, kept only if the simplified graph gives the same numbers on ONNX Runtime."""
        try:
            import onnxslim
        except ImportError:
            ctx.checks.append(_simplify_check(Status.NOT_RUN, None, "onnxslim is not installed"))
            return model
        if model.ByteSize() > PROTOBUF_LIMIT_BYTES:
            ctx.checks.append(_simplify_check(Status.NOT_RUN, None, "model over 2 GB; simplification skipped"))
            return model
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
            if self.fold_static_shapes:
                # with every shape propagated as data, the Shape → Gather → Mod … arithmetic of a
                # static export (window partitions, patch grids) becomes constants a second pass folds
                slim = onnxslim.slim(require("onnx", self.extra).shape_inference.infer_shapes(slim, data_prop=True))
        slim = self.rewrite(ctx, slim)
        before = _ort_run(model, ctx.sample_inputs)
        after = _ort_run(slim, ctx.sample_inputs)
        stats = parity_stats(before, after)
        if stats["cosine_min"] >= SIMPLIFY_MIN_COSINE:
            ctx.checks.append(
                _simplify_check(
                    Status.PASS,
                    stats["cosine_min"],
                    f"{len(model.graph.node)} → {len(slim.graph.node)} nodes",
                    stats,
                )
            )
            return slim
        # A rewrite that moves the numbers is not used; the unsimplified graph is what ships.
        ctx.checks.append(
            _simplify_check(
                Status.INFO,
                stats["cosine_min"],
                "onnxslim changed the numbers; the unsimplified graph was kept",
                stats,
            )
        )
        return model


def _simplify_check(status: Status, value, detail: str, data: dict | None = None) -> Check:
    return Check(
        name="parity after simplification (onnxslim)",
        status=status,
        fidelity=Fidelity.MEASURED if value is not None else Fidelity.NOT_RUN,
        value=value,
        threshold=f"min cosine ≥ {SIMPLIFY_MIN_COSINE}",
        detail=detail,
        data=data or {},
    )


def _ort_run(model, x: np.ndarray) -> np.ndarray:
    from zoo.runtimes import run_in_batches
    from zoo.runtimes.onnxruntime import OrtSession

    return run_in_batches(OrtSession(model.SerializeToString()), x)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""
