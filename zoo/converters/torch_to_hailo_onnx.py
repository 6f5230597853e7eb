"""torch → Hailo-ready ONNX: the torch_to_onnx step, run on the model as the Hailo toolchain wants it.

- the final L2 normalization is cut off (the Hailo-8L does it badly; it runs on the host): the export
  is of the same model with `normalize=False`, and the artifact and the manifest say
  `host_l2_normalize` so every consumer applies it;
- explicit attention: every timm module with a `fused_attn` flag is set to False before export (no
  fused scaled-dot-product op: the DFC maps attention from MatMul → Softmax → MatMul);
- opset 17 with the legacy exporter and a static batch of 1 (the target's settings, checked here);
  a second simplification over data-propagated shapes folds the export's shape arithmetic, and ops
  the DFC does not take are spelled exactly in ops it does (zoo.hailo.rewrites: Neg, ReduceL2, a
  mean over tokens);
- the input stays NCHW and normalized, as the source model takes it: mean/std move into the model
  script (zoo.hailo.model_script), so the compiled .hef takes NHWC uint8 pixels 0–255.

The export, simplification (parity re-checked) and ONNX checks are torch_to_onnx's own (this step
delegates to it); a source that is already an ONNX file is taken as is when its spec says it is not
L2-normalized (`normalize = false`).
"""

from __future__ import annotations

import copy
import dataclasses

from zoo.converters import Artifact, ConvertContext
from zoo.converters.torch_to_onnx import TorchToOnnx
from zoo.fidelity import Check, Fidelity, Status
from zoo.hailo.inspector import HAILO_PREFLIGHT
from zoo.metadata import host_l2 as host_l2_metadata

HAILO_OPSET = 17


def host_l2_variant(torch_model):
    """A copy of the embedding model without its final L2 normalization and with explicit attention.

    Returns (model, number of attention modules switched from fused to explicit)."""
    model = copy.deepcopy(torch_model)
    if hasattr(model, "normalize"):
        model.normalize = False
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            switched += bool(module.fused_attn)
            module.fused_attn = False
    return model.eval(), switched


class TorchToHailoOnnx(TorchToOnnx):
    name = "torch_to_hailo_onnx"
    extra = "hailo"
    fold_static_shapes = True  # the DFC refuses Shape/Mod: a batch-1 export must have none left

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        problems = super().preflight(ctx, upstream)
        if ctx.target.opset != HAILO_OPSET:
            problems.append(
                f"target {ctx.target.name!r} sets opset {ctx.target.opset}; the Hailo-ready ONNX is opset "
                f"{HAILO_OPSET} (what Hailo's own zoo exports at)"
            )
        if ctx.target.dynamic_batch:
            problems.append(f"target {ctx.target.name!r} asks for a dynamic batch; the DFC needs a static batch of 1")
        if ctx.model.architecture_kind == "onnx" and ctx.model.normalize:
            problems.append(
                f"model {ctx.model.name!r} is an ONNX file said to be L2-normalized inside; zoo cannot cut that "
                "off an arbitrary graph — export it without the final L2 normalization at opset 17 and register "
                "it with `normalize = false`"
            )
        return problems

    def rewrite(self, ctx: ConvertContext, model):
        """Ops the DFC does not take, spelled in ops it does (zoo.hailo.rewrites); the manifest says which."""
        from zoo.hailo.rewrites import rewrite_for_dfc

        model, counts = rewrite_for_dfc(model)
        if counts:
            ctx.records["dfc_rewrites"] = counts
        return model

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        host_l2 = bool(ctx.model.normalize)
        # this ONNX takes the normalized NCHW tensor (ctx.metadata's contract); only the .hef compiled
        # from it takes raw pixels, which its own manifest record states
        metadata = {
            **host_l2_metadata(ctx.metadata, host_l2),
            "hef_input": "NHWC uint8 RGB 0-255, normalization on the chip (model.alls)",
        }
        if ctx.torch_model is not None:
            model, switched = host_l2_variant(ctx.torch_model)
            still_fused = sum(bool(getattr(m, "fused_attn", False)) for m in model.modules())
            ctx.checks.append(
                Check(
                    "Hailo-ready model: explicit attention, no final L2",
                    Status.PASS if still_fused == 0 and not getattr(model, "normalize", False) else Status.FAIL,
                    Fidelity.MEASURED,
                    value=f"{still_fused} fused attention module(s)",
                    threshold="0 fused; L2 normalization off",
                    artifact=f"{ctx.target.artifact_name}.onnx",
                    detail=f"{switched} attention module(s) switched from fused to explicit; "
                    + ("L2 normalization moved to the host" if host_l2 else "the model has no L2 normalization"),
                )
            )
        else:
            model = None
        sub = dataclasses.replace(ctx, torch_model=model, metadata=metadata)
        artifacts = TorchToOnnx.convert(self, sub, upstream)
        ctx.records["host_l2_normalize"] = host_l2
        first = dataclasses.replace(
            artifacts[0],
            runtime="onnxruntime",
            host_l2_normalize=host_l2,
            facts={HAILO_PREFLIGHT: "hailo8l"},  # zoo.hailo.inspector checks it against the DFC's op table
            description=f"Hailo-ready ONNX: opset {ctx.target.opset}, batch 1, NCHW normalized input, explicit "
            "attention, " + ("no final L2 (host)" if host_l2 else "no L2 normalization"),
        )
        return [first, *artifacts[1:]]
