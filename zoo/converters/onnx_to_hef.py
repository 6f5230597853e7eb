"""Hailo-ready ONNX → Hailo bundle → .hef (when Hailo's Dataflow Compiler is installed).

Pre-flight checks the graph against the DFC op table (zoo.hailo.ops) and lists every unsupported op
with its node name before any work. Then the step writes the bundle — model script, calibration set,
parity reference, int8 emulation, COMPILE.md — and:

- with `hailo_sdk_client` importable: drives the DFC (zoo.hailo.dfc) → model.hef + model.har, and
  the parity ladder in the SDK emulator (`emulated`);
- without it: reports the .hef `not run (Hailo Dataflow Compiler not installed)`, never a .hef that
  does not exist, and leaves the exact command that compiles the bundle on a DFC host.

Either way the int8 parity of zoo's emulation (`emulated`) and the latency estimate (`estimated`)
are reported; the emulated artifact is validated like any other by the pipeline's validators.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.converters import Artifact, ConvertContext
from zoo.errors import require
from zoo.fidelity import Check, Fidelity, Status
from zoo.hailo import (
    CALIBRATION_FILE,
    COMPILE_FILE,
    DEFAULT_REFERENCE_CALIBRATION,
    EMULATED_FILE,
    HAR_FILE,
    HEF_FILE,
    HW_ARCH,
    MODEL_SCRIPT_FILE,
    PARITY_FILE,
    RECOMMENDED_CALIBRATION,
    net_name_for,
)
from zoo.metadata import host_l2 as host_l2_metadata
from zoo.metadata import normalization_inside


def emulated_metadata(metadata: dict[str, str], host_l2: bool) -> dict[str, str]:
    """The emulated int8 model takes what the chip takes — NHWC pixels 0–255 (a float32 tensor of whole
    values, quantized to uint8 at its input) — with the normalization inside: its metadata says so and
    carries the model's mean/std as `folded_mean`/`folded_std`. (zoo.hailo.emulation still adds plain
    `mean`/`std` beside them, which zoo's EmulatedSession reads.)"""
    return normalization_inside(
        host_l2_metadata(metadata, host_l2),
        layout="NHWC",
        dtype="float32",
        how="the model script's normalization layer, as on the chip",
    )


class OnnxToHef:
    name = "onnx_to_hef"
    float_modules = True  # the model's float_modules at 16 bits in the int8 emulation
    extra = "hailo"
    calibrated = True  # reads a calibration set (--calibration)

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        onnx = require("onnx", self.extra)
        require("onnxruntime", self.extra)
        from zoo.hailo.model_script import read_override
        from zoo.hailo.ops import preflight

        if upstream is None or upstream.format != "onnx":
            return ["onnx_to_hef needs the Hailo-ready ONNX of the previous step (torch_to_hailo_onnx)"]
        read_override(ctx.model)  # a missing override file fails now, before any work
        report = preflight(onnx.load(str(ctx.workdir / upstream.name), load_external_data=False))
        if not report.ok:
            raise report.error(f"{upstream.name} of {ctx.model.name}")
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        onnx = require("onnx", self.extra)
        from zoo.calibration import build_calibration_set
        from zoo.hailo.bundle import BUNDLE_ARG, compile_instructions, write_parity_reference
        from zoo.hailo.dfc import DfcJob, dfc_unavailable_reason, not_run_checks, run_dfc
        from zoo.hailo.emulation import build_emulated_model, weight_axes
        from zoo.hailo.estimate import SIXTEEN_BIT_COST, estimate_latency, latency_check, node_gflops
        from zoo.hailo.model_script import build_model_script, family_of, read_override
        from zoo.hailo.ops import preflight

        work = ctx.workdir
        onnx_path = work / upstream.name
        graph = onnx.load(str(onnx_path))
        report = preflight(graph)  # its rows come from zoo.hailo.inspector (convert and validate alike)
        family = family_of(ctx.model, report.op_counts)
        net = net_name_for(ctx.model.name)
        host_l2 = bool(ctx.records.get("host_l2_normalize", ctx.model.normalize))

        with ctx.progress.step("Hailo calibration set (NHWC float32, 0–255)"):
            count = ctx.calibration_count or (
                RECOMMENDED_CALIBRATION if ctx.calibration_dir is not None else DEFAULT_REFERENCE_CALIBRATION
            )
            calibration = build_calibration_set(
                ctx.model,
                ctx.input_size,
                folder=ctx.calibration_dir,
                count=count,
                recommended=RECOMMENDED_CALIBRATION,
                layout="NHWC",
                normalized=False,
            )
            np.save(work / CALIBRATION_FILE, calibration.images)
        ctx.records["calibration"] = {
            **calibration.record(),
            "file": CALIBRATION_FILE,
            "units": "RGB pixels 0-255, unnormalized (the model script normalizes)",
            "used_by": "Hailo DFC optimize() and zoo's int8 emulation",
        }
        if calibration.warning:
            ctx.warnings.append(f"{calibration.warning} — Hailo's recommendation for the DFC")
        ctx.checks.append(
            Check(
                "calibration set (NHWC float32, 0–255)",
                Status.INFO,
                Fidelity.MEASURED,
                value=calibration.count,
                threshold=f"≥ {RECOMMENDED_CALIBRATION} recommended (Hailo)",
                artifact=CALIBRATION_FILE,
                detail=f"{calibration.source}; sha256 {calibration.sha256[:16]}…",
            )
        )

        override_text, override_source = read_override(ctx.model)
        script = build_model_script(
            ctx.model,
            net,
            calibset_size=calibration.count,
            family=family,
            override_text=override_text,
            override_source=override_source,
        )
        script_text = script.render()
        (work / MODEL_SCRIPT_FILE).write_text(script_text)

        with ctx.progress.step("reference embeddings for the SDK parity ladder"):
            parity = _parity_reference(ctx)
            write_parity_reference(work / PARITY_FILE, parity)

        from zoo.diagnose import float_module_nodes, float_modules_check
        from zoo.runtimes.onnxruntime import OrtSession

        # the model's float_modules: Hailo has no float, so they go to 16 bits, activations and weights
        # (the DFC's precision_mode=a16_w16)
        mapping = float_module_nodes(ctx, lambda: OrtSession(onnx_path))
        kept = {n for nodes in mapping.values() for n in nodes}
        wide = [o for node in graph.graph.node if (node.name or node.output[0]) in kept for o in node.output]
        wide_weights = weight_axes(graph.graph, kept)
        with ctx.progress.step("int8 emulation (ONNX Runtime QDQ, Hailo-like scheme)"):
            plan = build_emulated_model(
                onnx_path,
                work / EMULATED_FILE,
                script_text=script_text,
                net_name=net,
                calibration_nhwc=calibration.images,
                mean=ctx.model.mean,
                std=ctx.model.std,
                metadata=emulated_metadata(ctx.metadata, host_l2),
                sixteen_bit=wide,
                sixteen_bit_weights=wide_weights,
            )
        ctx.checks.append(_photo_parity_check(work / EMULATED_FILE, parity, ctx.target.min_cosine_vs_source))
        if plan.not_emulated:
            ctx.warnings.append(
                "the int8 emulation does not model these model-script commands (layers zoo cannot map to ONNX): "
                + "; ".join(plan.not_emulated)
            )

        per_node = node_gflops(graph)
        estimate = estimate_latency(sum(per_node.values()), family, sum(per_node.get(n, 0.0) for n in kept))
        if kept:
            cost = (
                f"{estimate.sixteen_bit_share:.0%} of the GOPs at 16 bits: the latency estimate counts them at "
                f"{SIXTEEN_BIT_COST[0]:g}–{SIXTEEN_BIT_COST[1]:g}× an int8 op (estimated)"
            )
            ctx.checks.append(
                float_modules_check(mapping, artifact=HEF_FILE, kept_as="at 16 bits (a16_w16)", cost=cost)
            )
        ctx.checks.append(latency_check(estimate, ctx.target, artifact=HEF_FILE))
        budget = ctx.target.latency_budget_ms
        if budget is not None and estimate.low_ms >= budget:
            ctx.warnings.append(
                f"even the optimistic latency estimate ({estimate.low_ms:.1f} ms, estimated) exceeds the "
                f"{budget:g} ms budget on {ctx.target.device or 'the device'}"
            )
        elif budget is not None and estimate.high_ms >= budget:
            ctx.warnings.append(
                f"the Hailo-8L latency estimate ({estimate.low_ms:.1f}–{estimate.high_ms:.1f} ms, estimated from "
                f"published figures of similar networks) spans the {budget:g} ms budget: only a measurement on "
                f"{ctx.target.device or 'the device'} decides"
            )

        bundle = BUNDLE_ARG  # from inside the bundle: no host path in the bundle's files
        record = {
            "hw_arch": HW_ARCH,
            "net_name": net,
            "family": family,
            "onnx": upstream.name,
            "model_script": MODEL_SCRIPT_FILE,
            "calibration": CALIBRATION_FILE,
            "parity_reference": PARITY_FILE,
            "emulated_int8": EMULATED_FILE,
            "start_node_names": list(report.input_names),
            "sixteen_bit_nodes": sorted(kept),
            "end_node_names": list(report.output_nodes),
            "net_input_shapes": report.input_shapes,
            "input": {
                "onnx": "NCHW float32 RGB, normalized on the host: (x/255 - mean)/std",
                "emulated_int8": "NHWC float32 RGB whole pixels 0-255 (quantized to uint8 at the input); the "
                "normalization is inside",
                "hef": "NHWC uint8 RGB 0-255; the normalization runs on the chip (model script)",
                "size": [ctx.input_size, ctx.input_size],
                "mean": list(ctx.model.mean),
                "std": list(ctx.model.std),
            },
            "output_dim": ctx.model.embedding_dim,
            "host_l2_normalize": host_l2,
            "compile_command": f"zoo hailo compile {bundle}",
            "preflight": report.record(),
            "script": script.record(),
            "emulation": plan.record(),
            "latency_estimate": estimate.record(),
        }
        tail = [
            Artifact(MODEL_SCRIPT_FILE, "hailo-model-script", runnable=False, description="DFC model script"),
            Artifact(
                CALIBRATION_FILE,
                "npy",
                runnable=False,
                description=f"calibration set: {calibration.count} × NHWC float32 0–255",
            ),
            Artifact(
                PARITY_FILE,
                "npz",
                runnable=False,
                description="photos (NHWC uint8) + source embeddings, for the ladder",
            ),
            Artifact(
                EMULATED_FILE,
                "onnx-hailo-int8-emulated",
                description="int8 emulation of the Hailo build (ONNX Runtime QDQ, Hailo-like scheme)",
                runtime="hailo_int8_emulation",
                host_l2_normalize=host_l2,
            ),
            Artifact(COMPILE_FILE, "text", runnable=False, description="how to compile the bundle on a DFC host"),
        ]

        reason = dfc_unavailable_reason()
        if reason is None:
            job = DfcJob(
                onnx=onnx_path,
                model_script=script_text,
                calibration=calibration.images,
                net_name=net,
                start_node_names=report.input_names,
                end_node_names=report.output_nodes,
                net_input_shapes=report.input_shapes,
                sixteen_bit_nodes=tuple(sorted(kept)),
            )
            with ctx.progress.step("Hailo Dataflow Compiler"):
                result = run_dfc(
                    job,
                    work,
                    parity=parity,
                    min_cosine_quantized=ctx.target.min_cosine_vs_source,
                    say=ctx.progress.say,
                )
            ctx.checks.append(
                Check(
                    "compile .hef (Hailo Dataflow Compiler)",
                    Status.PASS,
                    Fidelity.MEASURED,
                    value=f"{result.hef_bytes} bytes",
                    threshold="a non-empty .hef",
                    artifact=HEF_FILE,
                    detail=f"hailo_sdk_client {result.sdk_version}, hw_arch {HW_ARCH}",
                )
            )
            ctx.checks += result.ladder
            record |= {"hef": HEF_FILE, "hef_status": "compiled", "sdk_version": result.sdk_version}
            head = [
                Artifact(
                    HEF_FILE,
                    "hef",
                    description=f"compiled for {HW_ARCH} (Hailo DFC {result.sdk_version})",
                    runtime="hailort",
                    host_l2_normalize=host_l2,
                ),
                Artifact(HAR_FILE, "hailo-har", runnable=False, description="Hailo archive"),
            ]
        else:
            compile_hint = f"compile on a DFC host, from inside the bundle folder: zoo hailo compile {bundle}"
            ctx.checks += not_run_checks(reason, compile_hint)
            ctx.warnings.append(
                f"NO .hef WAS PRODUCED: {reason}. The bundle holds everything to compile it — {compile_hint} "
                f"(see {COMPILE_FILE})"
            )
            record |= {"hef": None, "hef_status": f"not compiled: {reason}"}
            head = []
        (work / COMPILE_FILE).write_text(compile_instructions(record, compiled=bool(head)))
        ctx.records["hailo"] = record
        return [*head, *tail]


def _parity_reference(ctx: ConvertContext):
    """The reference photos as the device gets them, and the source model's embeddings of them."""
    from zoo.hailo.dfc import ParityReference
    from zoo.pipeline import embed_torch
    from zoo.validators.inputs import normalize, reference_photos, resize_center_crop

    names, photos = zip(*reference_photos())
    views = np.stack([resize_center_crop(p, ctx.input_size) for p in photos])
    x = normalize(views, ctx.model.mean, ctx.model.std)
    if ctx.torch_model is not None:
        source = embed_torch(ctx.torch_model, x)
    else:
        from zoo.runtimes import run_in_batches
        from zoo.runtimes.onnxruntime import OrtSession

        source = run_in_batches(OrtSession(Path(ctx.model.architecture)), x)
    source = source / np.maximum(np.linalg.norm(source, axis=1, keepdims=True), 1e-12)
    return ParityReference(views, source.astype(np.float32), tuple(ctx.model.mean), tuple(ctx.model.std), names)


def _photo_parity_check(path: Path, parity, min_cosine: float) -> Check:
    """The emulated int8 model on the photos alone: inputs the device can take as they are (the gated
    validation row also has random tensors, partly outside 0–255 and outside the calibration statistics)."""
    from zoo.runtimes import run_in_batches
    from zoo.runtimes.hailo import EmulatedSession
    from zoo.validators.metrics import parity_stats

    x = np.ascontiguousarray(parity.normalized_nhwc().transpose(0, 3, 1, 2))
    out = run_in_batches(EmulatedSession(path), x)
    out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    stats = parity_stats(parity.source, out)
    return Check(
        "int8 parity vs source on the photos only",
        Status.INFO,
        Fidelity.EMULATED,
        value=round(stats["cosine_min"], 7),
        threshold=f"for reading; the gate is min cosine ≥ {min_cosine} over photos + random inputs",
        artifact=path.name,
        detail=f"mean {stats['cosine_mean']:.7f} over {stats['samples']} photos as uint8 pixels (what the device "
        "takes); ONNX Runtime QDQ int8 emulation of Hailo's scheme, not the DFC",
        data=stats,
    )
