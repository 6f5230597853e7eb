"""Latency on the Hailo-8L, estimated (no execution): FLOPs of the graph scaled by Hailo's published
Hailo-8L throughput for similar networks. Every figure from here is labelled `estimated`.

Device model (stated, so it can be argued with):

    latency(model) ≈ (1000 / FPS_ref) × (GOPs_model / GOPs_ref)     for each reference network

FPS_ref and GOPs_ref are Hailo's published batch-1 figures for the Hailo-8L (table below, from
github.com/hailo-ai/hailo_model_zoo tag v2.18, docs/public_models/HAILO8L/HAILO8L_classification.rst,
columns "FPS (Batch Size=1)" and "OPS (G)"; the page says its models were compiled with "Hailo
Dataflow Compiler v2.18.0"). The references are the networks of the same family (ViT/DeiT for a
ViT; CNNs for a CNN) within a factor of 2 of the model's GOPs (else the nearest one); the estimate is
the geometric mean of the scaled latencies and the range is their min–max.

Assumptions: Hailo's "OPS" counts 2 × multiply-accumulates, like zoo's FLOPs (Conv, ConvTranspose,
Gemm and MatMul; element-wise ops not counted) — vit_small: Hailo 8.62 G, zoo 9.2 G (zoo counts every
attention matmul and its own 768-d head; timm lists 4.6 GMACs); 1000/FPS at
batch 1 approximates latency for networks this size, which run in several contexts on the Hailo-8L
(their batch-8 FPS is 2–4× their batch-1 FPS), while for small single-context networks it
underestimates latency (frames overlap in the pipeline); latency scales linearly with GOPs between
nearby networks. ConvNeXt has no Hailo figure at all: zoo brackets it between ResNeXt-50 (the
ResNet family ConvNeXt modernizes, 8.48 G) and Swin-T (the transformer ConvNeXt-T was designed to
match in FLOPs, 9.1 G), which spans 5×; the budget can fall inside that range, and then the estimate
decides nothing — compile and measure on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from zoo.fidelity import Check, Fidelity, Status
from zoo.targets import TargetSpec

SOURCE = "hailo-ai/hailo_model_zoo v2.18, docs/public_models/HAILO8L/HAILO8L_classification.rst (batch-1 FPS, OPS (G))"
PEAK_TOPS = 13.0  # Hailo-8L, Hailo's product figure (13 TOPS int8) — only a floor, never the estimate


@dataclass(frozen=True)
class Reference:
    name: str
    gops: float
    fps_batch1: float

    @property
    def ms(self) -> float:
        return 1000.0 / self.fps_batch1


PUBLISHED = {
    r.name: r
    for r in (
        Reference("vit_tiny", 2.2, 68.5),
        Reference("vit_small", 8.62, 54.7),
        Reference("vit_base", 35.188, 21.9),
        Reference("deit_tiny", 2.57, 68.6),
        Reference("deit_small", 9.4, 54.0),
        Reference("deit_base", 35.22, 21.6),
        Reference("swin_tiny", 9.1, 23.0),
        Reference("resnext50_32x4d", 8.48, 126.0),
        Reference("resnet_v1_18", 3.64, 1281.0),
        Reference("resnet_v1_34", 7.34, 160.0),
        Reference("resnet_v1_50", 6.98, 138.0),
        Reference("hardnet68", 8.5, 115.0),
        Reference("regnetx_800mf", 1.6, 2450.0),
        Reference("mobilenet_v2_1.0", 0.62, 1738.0),
        Reference("mobilenet_v3", 2.0, 1936.0),
        Reference("efficientnet_lite0", 0.78, 1057.0),
        Reference("efficientnet_lite1", 1.22, 474.0),
        Reference("efficientnet_lite2", 1.74, 109.0),
        Reference("efficientnet_m", 7.32, 155.0),
        Reference("efficientnet_l", 19.4, 78.6),
    )
}

FAMILY_REFERENCES = {
    "vit": ("vit_tiny", "vit_small", "vit_base", "deit_tiny", "deit_small", "deit_base"),
    "convnext": ("resnext50_32x4d", "swin_tiny"),  # a bracket: no ConvNeXt is published
    "cnn": (
        "resnet_v1_18",
        "resnet_v1_34",
        "resnet_v1_50",
        "resnext50_32x4d",
        "hardnet68",
        "regnetx_800mf",
        "mobilenet_v2_1.0",
        "mobilenet_v3",
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "efficientnet_m",
        "efficientnet_l",
    ),
}


def _dims(shapes: dict, name: str) -> list[int] | None:
    return shapes.get(name)


def node_gflops(model) -> dict[str, float]:
    """{node name (or its first output when unnamed): 2 × MACs / 1e9} of each Conv, ConvTranspose, Gemm
    and MatMul, from ONNX shape inference (static shapes)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    gflops: dict[str, float] = {}
    for node in inferred.graph.node:
        out, macs = _dims(shapes, node.output[0]), 0
        if node.op_type == "Conv":
            w = _dims(shapes, node.input[1])
            if out and w:
                macs = math.prod(out) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            x, w = _dims(shapes, node.input[0]), _dims(shapes, node.input[1])
            if x and w:
                macs = math.prod(x) * math.prod(w[1:])
        elif node.op_type in ("Gemm", "MatMul"):
            a = _dims(shapes, node.input[0])
            if out and a:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
                macs = math.prod(out) * k
        if macs:
            gflops[node.name or node.output[0]] = 2.0 * macs / 1e9
    return gflops


@dataclass(frozen=True)
class LatencyEstimate:
    gflops: float
    family: str
    ms: float
    low_ms: float
    high_ms: float
    references: tuple[tuple[str, float, float, float], ...]  # (name, GOPs, FPS batch 1, scaled ms)
    extrapolated: bool  # no reference within a factor of 2 of the model's GOPs
    sixteen_bit_share: float = 0.0  # share of the GOPs in a16_w16 layers (the model's float_modules)

    @property
    def floor_ms(self) -> float:
        """The model at the chip's peak rate — a bound nothing reaches, shown for scale."""
        return self.gflops / (PEAK_TOPS * 1000.0) * 1000.0

    def record(self) -> dict:
        return {
            "ms": self.ms,
            "range_ms": [self.low_ms, self.high_ms],
            "gflops": self.gflops,
            "family": self.family,
            "references": [
                {"name": n, "gops": g, "fps_batch1": f, "scaled_ms": round(m, 3)} for n, g, f, m in self.references
            ],
            "extrapolated": self.extrapolated,
            "sixteen_bit_share": self.sixteen_bit_share,
            "sixteen_bit_cost": list(SIXTEEN_BIT_COST),
            "peak_floor_ms": self.floor_ms,
            "source": SOURCE,
            "model": "latency ≈ 1000/FPS_ref × GOPs/GOPs_ref; geometric mean over same-family references "
            "within ×2 in GOPs (else the nearest)",
        }


# zoo's assumption, no Hailo figure: an a16_w16 layer costs 2× (twice the data moved) to 4× (a 16×16-bit
# multiply is four 8×8 ones) the same layer in int8; the published figures are int8 networks
SIXTEEN_BIT_COST = (2.0, 4.0)


def estimate_latency(gflops: float, family: str, sixteen_bit_gflops: float = 0.0) -> LatencyEstimate:
    """The int8 estimate from the published figures; layers at 16 bits widen it by SIXTEEN_BIT_COST."""
    refs = [PUBLISHED[n] for n in FAMILY_REFERENCES.get(family, FAMILY_REFERENCES["cnn"])]
    near = [r for r in refs if 0.5 <= gflops / r.gops <= 2.0] if gflops > 0 else []
    extrapolated = not near
    if family == "convnext" and not extrapolated:
        near = refs  # the bracket is used whole
    if extrapolated:
        near = [min(refs, key=lambda r: abs(math.log(max(gflops, 1e-9) / r.gops)))]
    scaled = [(r.name, r.gops, r.fps_batch1, r.ms * gflops / r.gops) for r in near]
    values = [s[3] for s in scaled]
    ms = math.exp(sum(math.log(max(v, 1e-9)) for v in values) / len(values))
    share = min(1.0, sixteen_bit_gflops / gflops) if gflops > 0 else 0.0
    low, high = (1 + share * (cost - 1) for cost in SIXTEEN_BIT_COST)
    return LatencyEstimate(
        gflops,
        family,
        ms * math.sqrt(low * high),
        min(values) * low,
        max(values) * high,
        tuple(scaled),
        extrapolated,
        share,
    )


def latency_check(estimate: LatencyEstimate, target: TargetSpec, artifact: str = "") -> Check:
    """An `estimated` row: reported against the budget, never gated (an estimate proves nothing)."""
    budget = target.latency_budget_ms
    refs = ", ".join(f"{n} {g:g} GOPs @ {f:g} FPS → {m:.1f} ms" for n, g, f, m in estimate.references)
    verdict = "no budget"
    if budget is not None:
        if estimate.high_ms < budget:
            verdict = f"whole range under the {budget:g} ms budget"
        elif estimate.low_ms >= budget:
            verdict = f"whole range over the {budget:g} ms budget"
        else:
            verdict = f"the {budget:g} ms budget lies inside the range: undetermined, measure on the device"
    detail = (
        f"{estimate.ms:.1f} ms (range {estimate.low_ms:.1f}–{estimate.high_ms:.1f}) for {estimate.gflops:.2f} GFLOPs; "
        f"{verdict}; scaled from Hailo's published Hailo-8L batch-1 figures: {refs}"
        + ("; EXTRAPOLATED: no reference within ×2 in GOPs" if estimate.extrapolated else "")
        + (
            f"; {estimate.sixteen_bit_share:.0%} of the GOPs at 16 bits (float_modules, a16_w16), counted at "
            f"{SIXTEEN_BIT_COST[0]:g}–{SIXTEEN_BIT_COST[1]:g}× an int8 op (zoo's assumption: no Hailo figure)"
            if estimate.sixteen_bit_share
            else ""
        )
        + "; not gated: an estimate cannot pass or fail a device budget"
    )
    threshold = f"p{target.latency_percentile} < {budget:g} ms on device" if budget is not None else "no budget"
    return Check(
        f"latency estimate on {target.device or 'Hailo-8L'} (batch 1)",
        Status.INFO,
        Fidelity.ESTIMATED,
        value=f"{estimate.ms:.1f} ms ({estimate.low_ms:.1f}–{estimate.high_ms:.1f})",
        threshold=threshold,
        artifact=artifact,
        detail=detail,
        data=estimate.record(),
    )
