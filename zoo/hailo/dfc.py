"""The Dataflow Compiler driver: used when `hailo_sdk_client` imports (a DFC build host).

The call sequence follows Hailo's published DFC Python API, as used by Hailo's public model zoo
(hailo-ai/hailo_model_zoo v2.18: hailo_model_zoo/core/main_utils.py and main_driver.py —
`ClientRunner(hw_arch=…)`, `load_model_script(text)`, `optimize(calibration)`, `compile()` → HEF
bytes, `save_har(path)`, `infer_context(InferenceContext.SDK_…)` + `infer(context, data)`) and
the DFC user guide's parsing tutorial (`translate_onnx_model(model, net_name, start_node_names=…,
end_node_names=…, net_input_shapes={input: [1, 3, H, W]})`):

    ClientRunner(hw_arch="hailo8l")
      → translate_onnx_model(...)                      parse the Hailo-ready ONNX
      → infer in SDK_NATIVE                            ladder 1: the parsed float model (normalized NHWC in)
      → load_model_script(model.alls)
      → optimize(calibration NHWC 0–255)               quantization
      → infer in SDK_FP_OPTIMIZED, SDK_QUANTIZED       ladder 2, 3: 0–255 NHWC in (normalization on chip)
      → compile() → model.hef ; save_har → model.har

Each ladder rung is compared with the source model's embeddings of the same photos (after host L2
normalization) and reported as `emulated (Hailo SDK)`. Nothing here runs without the DFC; zoo's tests
check this sequence against a stand-in module (a contract test, not evidence that compilation works).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zoo.errors import ConversionError
from zoo.fidelity import Check, Fidelity, Status
from zoo.hailo import DFC_MISSING, HAR_FILE, HEF_FILE, HW_ARCH
from zoo.validators.metrics import parity_stats

# The SDK's float emulation should reproduce the ONNX up to float rounding; zoo's threshold.
FLOAT_LADDER_MIN_COSINE = 0.999


@dataclass(frozen=True)
class DfcJob:
    onnx: Path
    model_script: str
    calibration: np.ndarray  # NHWC float32, 0–255
    net_name: str
    start_node_names: tuple[str, ...]
    end_node_names: tuple[str, ...]
    net_input_shapes: dict[str, list[int]]
    hw_arch: str = HW_ARCH
    # ONNX nodes of the model's float_modules: their Hailo layers get precision_mode=a16_w16
    sixteen_bit_nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParityReference:
    """Photos as the device gets them and the source model's embeddings of them."""

    images_nhwc_uint8: np.ndarray
    source: np.ndarray  # (N, D) float32, the source model (L2-normalized when the model normalizes)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...] = ()

    def normalized_nhwc(self) -> np.ndarray:
        x = self.images_nhwc_uint8.astype(np.float32) / 255.0
        return np.ascontiguousarray((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32))

    def pixels_nhwc(self) -> np.ndarray:
        return np.ascontiguousarray(self.images_nhwc_uint8.astype(np.float32))


@dataclass(frozen=True)
class DfcResult:
    hef: Path
    har: Path
    hef_bytes: int
    sdk_version: str
    ladder: tuple[Check, ...] = field(default_factory=tuple)


def dfc_unavailable_reason() -> str | None:
    """None when the Dataflow Compiler imports here, else the `not run` reason."""
    if importlib.util.find_spec("hailo_sdk_client") is None:
        return f"{DFC_MISSING} (hailo_sdk_client does not import)"
    return None


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _ladder_check(rung: str, context: str, out, parity: ParityReference, min_cosine: float) -> Check:
    out = _l2(np.asarray(out, np.float32).reshape(len(parity.source), -1))
    if out.shape != parity.source.shape:
        return Check(
            f"parity in the Hailo SDK emulator: {rung}",
            Status.FAIL,
            Fidelity.EMULATED,
            value=f"{out.shape}",
            threshold=f"shape {parity.source.shape}",
            artifact=HEF_FILE,
            detail=f"emulated (Hailo SDK), {context}: output shape differs from the source's",
        )
    stats = parity_stats(parity.source, out)
    return Check(
        f"parity in the Hailo SDK emulator: {rung}",
        Status.PASS if stats["cosine_min"] >= min_cosine else Status.FAIL,
        Fidelity.EMULATED,
        value=round(stats["cosine_min"], 7),
        threshold=f"min cosine ≥ {min_cosine}",
        artifact=HEF_FILE,
        detail=f"emulated (Hailo SDK), {context}; mean {stats['cosine_mean']:.7f}, {stats['samples']} photos, "
        "vs the source model after host L2 normalization",
        data=stats,
    )


def run_dfc(
    job: DfcJob,
    out_dir: Path,
    *,
    parity: ParityReference | None = None,
    min_cosine_quantized: float = 0.98,
    say: Callable[[str], None] = lambda _: None,
) -> DfcResult:
    """Compile `job` with the Dataflow Compiler into out_dir/model.hef (+ model.har)."""
    try:
        import hailo_sdk_client
        from hailo_sdk_client import ClientRunner, InferenceContext
    except ImportError as exc:
        raise ConversionError(f"{DFC_MISSING}: {exc}") from exc

    ladder: list[Check] = []

    def infer(context, data: np.ndarray):
        with runner.infer_context(context) as ctx:
            return runner.infer(context=ctx, dataset=data)

    stage = "translate_onnx_model"
    try:
        runner = ClientRunner(hw_arch=job.hw_arch)
        say(f"DFC: parsing {job.onnx.name} ({job.hw_arch})")
        runner.translate_onnx_model(
            str(job.onnx),
            job.net_name,
            start_node_names=list(job.start_node_names),
            end_node_names=list(job.end_node_names),
            net_input_shapes={k: list(v) for k, v in job.net_input_shapes.items()},
        )
        if parity is not None:
            stage = "infer (SDK_NATIVE)"
            out = infer(InferenceContext.SDK_NATIVE, parity.normalized_nhwc())
            ladder.append(
                _ladder_check("native (parsed float model)", "SDK_NATIVE", out, parity, FLOAT_LADDER_MIN_COSINE)
            )
        stage = "load_model_script"
        script = job.model_script
        if job.sixteen_bit_nodes:  # the model's float_modules, named by the parsed layers that compute them
            script += sixteen_bit_command(runner.get_hn(), job.sixteen_bit_nodes)
        runner.load_model_script(script)
        stage = "optimize"
        say(f"DFC: optimizing (quantization) on {len(job.calibration)} calibration images")
        runner.optimize(np.ascontiguousarray(job.calibration, np.float32))
        if parity is not None:
            stage = "infer (SDK_FP_OPTIMIZED)"
            out = infer(InferenceContext.SDK_FP_OPTIMIZED, parity.pixels_nhwc())
            ladder.append(_ladder_check("fp-optimized", "SDK_FP_OPTIMIZED", out, parity, FLOAT_LADDER_MIN_COSINE))
            stage = "infer (SDK_QUANTIZED)"
            out = infer(InferenceContext.SDK_QUANTIZED, parity.pixels_nhwc())
            ladder.append(_ladder_check("quantized", "SDK_QUANTIZED", out, parity, min_cosine_quantized))
        stage = "compile"
        say("DFC: compiling (this can take a long time)")
        hef = runner.compile()
        stage = "save"
        out_dir.mkdir(parents=True, exist_ok=True)
        hef_path, har_path = out_dir / HEF_FILE, out_dir / HAR_FILE
        hef_path.write_bytes(bytes(hef))
        runner.save_har(str(har_path))
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(
            f"the Hailo Dataflow Compiler failed at {stage}: {type(exc).__name__}: {str(exc).strip()[:400]}",
            hint="see the DFC's own log above; the model script is model.alls in the bundle",
        ) from exc
    if not hef_path.stat().st_size:
        raise ConversionError("the Hailo Dataflow Compiler returned an empty .hef")
    return DfcResult(
        hef_path,
        har_path,
        hef_path.stat().st_size,
        getattr(hailo_sdk_client, "__version__", "unknown"),
        tuple(ladder),
    )


def sixteen_bit_command(hn: dict, nodes: tuple[str, ...]) -> str:
    """The model-script line that puts the parsed layers computing `nodes` (ONNX node names) at 16 bits.
    The parsed HN names each layer's ONNX nodes in `original_names` (as Hailo's model zoo's
    hn_editor/layer_splitter.py reads them); a node no layer claims is refused, not dropped."""
    wanted = set(nodes)
    layers = [name for name, layer in hn.get("layers", {}).items() if wanted & set(layer.get("original_names", ()))]
    claimed = {n for layer in hn.get("layers", {}).values() for n in layer.get("original_names", ())}
    missing = sorted(wanted - claimed)
    if missing or not layers:
        raise ConversionError(
            f"float_modules: the parsed Hailo model has no layer for {len(missing)} of {len(wanted)} nodes "
            f"(e.g. {', '.join(missing[:3])})",
            hint="the DFC fused or removed them; name the enclosing module in float_modules instead",
        )
    return f"\nquantization_param([{', '.join(layers)}], precision_mode=a16_w16)\n"


def not_run_checks(reason: str, compile_hint: str) -> list[Check]:
    """The rows a conversion reports when the DFC is absent: no .hef, no SDK ladder."""
    return [
        Check(
            "compile .hef (Hailo Dataflow Compiler)",
            Status.NOT_RUN,
            Fidelity.NOT_RUN,
            artifact=HEF_FILE,
            detail=f"NO .hef WAS PRODUCED — {reason}; {compile_hint}",
        ),
        Check(
            "parity in the Hailo SDK emulator (native → fp-optimized → quantized)",
            Status.NOT_RUN,
            Fidelity.NOT_RUN,
            artifact=HEF_FILE,
            detail=f"{reason}; runs with `zoo hailo compile` on a DFC host",
        ),
    ]
