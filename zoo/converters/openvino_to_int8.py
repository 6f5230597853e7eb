"""OpenVINO IR fp32 → int8 IR through NNCF post-training quantization, calibrated on the model's
calibration set (zoo.calibration: a user folder or the reference photos, preprocessed per the spec).

One scheme for every architecture: int8 weight ops (MatMul, Convolution) with NNCF's PERFORMANCE
preset (symmetric activations, per-channel weights); residual adds, normalizations, GELU, the
multiplies and the final L2 normalization stay float (FLOAT_OP_TYPES, float_tail). NNCF's
TRANSFORMER model type (SmoothQuant, asymmetric activations) wrecked the trained reference ViT:
its worst held-out view fell to 0.60 cosine vs fp32 (0.41 vs the teacher); with this scheme 0.994.
The set's sha256 and size go into the manifest, a warning when it is smaller than NNCF's default
subset (300), and the int8-vs-fp32 speedup on OpenVINO's CPU runtime into the report.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.converters.onnx_to_openvino import EXTRA, save_ir, set_rt_info
from zoo.errors import ConversionError, require

NNCF_RECOMMENDED = 300  # NNCF's default subset_size


# Only the weight ops take int8 inputs. Residual adds shared one scale between the residual
# stream and the branch (a trained ConvNeXt: cosine vs fp32 -0.30 with int8 adds); int8 layer norms,
# layer-scale and gating multiplies and pooling cost accuracy: with them float, the trained reference
# ConvNeXt goes from 0.974 to 0.989 cosine vs fp32, the reference EfficientNet from 0.973 to 0.982.
FLOAT_OP_TYPES = (
    "Add",
    "Multiply",
    "MVN",
    "ReduceMean",
    "Divide",
    "Power",
    "Sqrt",
    "Subtract",
    "Gelu",
)  # attention (OpenVINO's fused ScaledDotProductAttention) is no weight op: it stays float


def float_tail(model) -> list[str]:
    """The ops after the last weight op (the embedding's L2 normalization): kept in float, so the
    int8 model still outputs unit-norm embeddings."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in ("Constant", "Result")]
    last = max((i for i, op in enumerate(ops) if op.get_type_name() in ("MatMul", "Convolution")), default=-1)
    return [op.get_friendly_name() for op in ops[last + 1 :]]


class OpenVinoToInt8:
    name = "openvino_to_int8"
    extra = EXTRA
    calibrated = True  # reads a calibration set (--calibration)
    float_modules = True  # leaves the model's float_modules in float

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("openvino", self.extra)
        require("nncf", self.extra)
        if upstream is None or upstream.format != "openvino":
            return ["openvino_to_int8 needs an OpenVINO IR from the previous step"]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        from zoo.runtimes.openvino import DEFAULT_CONFIG, OpenVinoSession, core
        from zoo.validators.timing import speedup_check

        nncf = require("nncf", self.extra)
        source = ctx.workdir / upstream.name
        model = core().read_model(str(source))
        from zoo.diagnose import nodes_kept_in_float

        calib = ctx.calibration_set(NNCF_RECOMMENDED)
        kept = nodes_kept_in_float(ctx, lambda: OpenVinoSession(source), f"{Path(upstream.name).stem}.int8.xml")
        ignored = list(dict.fromkeys([*float_tail(model), *kept]))  # kept: the model's float_modules
        kwargs = {
            "subset_size": calib.count,
            "preset": nncf.QuantizationPreset.PERFORMANCE,
            "ignored_scope": nncf.IgnoredScope(names=ignored, types=list(FLOAT_OP_TYPES), validate=False),
            # NNCF's overflow fix on every layer (7-bit weights): OpenVINO's int8 kernels on x86 without VNNI
            # saturate otherwise (seen here on AVX2: tiny_vit min cosine 0.964 against the 0.98 rule)
            "advanced_parameters": nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE),
        }
        dataset = nncf.Dataset([calib.images[i : i + 1] for i in range(calib.count)])
        log = io.StringIO()
        logging.getLogger("nncf").setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                quantized = nncf.quantize(model, dataset, **kwargs)
        except Exception as exc:
            raise ConversionError(f"NNCF int8 quantization failed: {type(exc).__name__}: {exc}") from exc
        scheme = "NNCF PTQ, preset=PERFORMANCE, weight ops only"
        ctx.records["quantization"] = {
            "tool": "nncf",
            "scheme": scheme,
            "weights": "int8 per-channel symmetric, overflow fix on every layer (7-bit range)",
            "calibration_count": calib.count,
        }
        set_rt_info(quantized, {**ctx.metadata, "ir_weights": "int8", "quantization": scheme})
        xml = ctx.workdir / f"{Path(upstream.name).stem}.int8.xml"
        artifacts = save_ir(quantized, xml, fp16_weights=False)
        artifacts[0] = Artifact(xml.name, "openvino", description=f"OpenVINO IR int8 ({scheme})")
        ctx.checks.append(
            speedup_check(
                "OpenVINO CPU, default precision",
                OpenVinoSession(source, DEFAULT_CONFIG),
                OpenVinoSession(xml, DEFAULT_CONFIG),
                ctx.input_size,
                xml.name,
            )
        )
        return artifacts
