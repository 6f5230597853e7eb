"""ONNX → ONNX Runtime Mobile `.ort`, runtime-optimization style, plus the required-operators config.

The runtime-optimization style saves only hardware-independent optimizations and records the rest
to be replayed on the device, so the file is not tied to the CPU that converted it. The config
lists the operators a reduced-size ONNX Runtime Mobile build must include.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require


class OnnxToOrt:
    name = "onnx_to_ort"
    extra = "onnx"

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("onnxruntime", self.extra)
        if upstream is None or upstream.format != "onnx":
            return ["onnx_to_ort needs an ONNX model from the previous step"]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        require("onnxruntime", self.extra)
        from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

        # its helper logs every config it writes to stderr; the artifact list says it already
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)

        stem = Path(upstream.name).stem
        with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix=".ort-") as tmp:
            tmp = Path(tmp)
            source = tmp / "in" / upstream.name
            source.parent.mkdir()
            shutil.copy2(ctx.workdir / upstream.name, source)
            log = io.StringIO()
            try:
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    convert_onnx_models_to_ort(
                        source, output_dir=tmp / "out", optimization_styles=[OptimizationStyle.Runtime]
                    )
            except Exception as exc:
                raise ConversionError(f"ONNX → ORT conversion failed: {type(exc).__name__}: {exc}") from exc
            ort_files = sorted((tmp / "out").glob("*.ort"))
            configs = sorted((tmp / "out").glob("*.config"))
            if len(ort_files) != 1 or len(configs) != 1:
                last_line = (log.getvalue().strip().splitlines() or [""])[-1]
                raise ConversionError(f"ONNX → ORT conversion wrote no .ort file: {last_line}")
            ort_out = ctx.workdir / f"{stem}.ort"
            config_out = ctx.workdir / "required_operators.config"
            shutil.move(ort_files[0], ort_out)
            shutil.move(configs[0], config_out)
        return [
            Artifact(ort_out.name, "ort", description="ONNX Runtime Mobile, runtime-optimization style"),
            Artifact(config_out.name, "config", runnable=False, description="operators for a reduced ORT build"),
        ]
