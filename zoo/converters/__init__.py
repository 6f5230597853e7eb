"""Converter steps: one module per format step, behind one small interface.

A target's `chain` lists step names. Each step consumes the previous step's main artifact
(or the torch model, for the first) and writes new artifacts into the work directory.
Built-in steps are listed in BUILTIN; third-party steps arrive through the entry-point group
`zoo.converters` (name = "module:Class"). Nothing is imported until a step is asked for,
so listing models or targets never imports a heavy SDK.

To add a format: write `zoo/converters/<src>_to_<dst>.py` with a class that has `name`,
`extra`, `preflight()` and `convert()`, add it to BUILTIN, and name it in a target's chain.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zoo.errors import UsageError
from zoo.fidelity import Check
from zoo.progress import QUIET, Progress

if TYPE_CHECKING:
    import numpy as np

    from zoo.registry import ModelSpec
    from zoo.targets import TargetSpec

ENTRY_POINT_GROUP = "zoo.converters"

BUILTIN = {
    "torch_to_onnx": "zoo.converters.torch_to_onnx:TorchToOnnx",
    "onnx_to_ort": "zoo.converters.onnx_to_ort:OnnxToOrt",
    "onnx_to_immich_face": "zoo.converters.onnx_to_immich_face:OnnxToImmichFace",
    "onnx_to_openvino": "zoo.converters.onnx_to_openvino:OnnxToOpenVino",
    "openvino_to_int8": "zoo.converters.openvino_to_int8:OpenVinoToInt8",
    "onnx_to_int8": "zoo.converters.onnx_to_int8:OnnxToInt8",
    "torch_to_tflite": "zoo.converters.torch_to_tflite:TorchToTflite",
    "tflite_to_int8": "zoo.converters.tflite_to_int8:TfliteToInt8Dynamic",
    "tflite_to_int8_static": "zoo.converters.tflite_to_int8:TfliteToInt8",
    "torch_to_hailo_onnx": "zoo.converters.torch_to_hailo_onnx:TorchToHailoOnnx",
    "onnx_to_hef": "zoo.converters.onnx_to_hef:OnnxToHef",
    "torch_to_coreml": "zoo.converters.torch_to_coreml:TorchToCoreML",
    "torch_to_coreml_mixed": "zoo.converters.torch_to_coreml:TorchToCoreMLMixed",
    "torch_to_coreml_image": "zoo.converters.torch_to_coreml:TorchToCoreMLImage",
    "torch_to_coreml_mlmodel": "zoo.converters.torch_to_coreml:TorchToCoreMLNeuralNetwork",
}


@dataclass(frozen=True)
class Artifact:
    """A file (or folder) a step wrote, relative to the output directory."""

    name: str
    format: str  # onnx | ort | mlpackage | mlmodel | hef | openvino | tflite | config …
    runnable: bool = True  # False for sidecars (configs, scripts) that no runtime executes
    description: str = ""
    runtime: str = ""  # the runtime that validates it; empty = the target's runtime
    host_l2_normalize: bool = False  # the artifact leaves L2 normalization to the host (e.g. Hailo)
    facts: dict = field(default_factory=dict)  # what a format inspector needs to re-check it (kept in the manifest)


DEFAULT_CALIBRATION_COUNT = 128  # stable int8 ranges on the reference photos, minutes less than 300


@dataclass
class ConvertContext:
    model: ModelSpec
    target: TargetSpec
    workdir: Path
    input_size: int
    torch_model: Any  # the source torch.nn.Module (None for ONNX-file sources)
    sample_inputs: np.ndarray  # real photos + random, NCHW float32, for in-step parity checks
    metadata: dict[str, str]  # key/values every artifact embeds
    progress: Progress = QUIET
    checks: list[Check] = field(default_factory=list)  # checks made during conversion
    artifacts: list[Artifact] = field(default_factory=list)
    records: dict[str, Any] = field(default_factory=dict)  # extra manifest entries (e.g. "calibration")
    warnings: list[str] = field(default_factory=list)  # shown on the terminal and in the report
    calibration_dir: Path | None = None  # user images for int8 calibration (None: the reference photos)
    calibration_count: int | None = None  # None: the step's own default

    def calibration_set(self, recommended: int, layout: str = "NCHW"):
        """The int8 calibration set for this conversion (zoo.calibration), recorded in the manifest;
        a set smaller than the toolchain's `recommended` size becomes a visible warning."""
        from zoo.calibration import build_calibration_set

        calib = build_calibration_set(
            self.model,
            self.input_size,
            folder=self.calibration_dir,
            count=self.calibration_count or DEFAULT_CALIBRATION_COUNT,
            recommended=recommended,
            layout=layout,
        )
        self.records["calibration"] = calib.record()
        if calib.warning:
            self.warnings.append(calib.warning)
        return calib


class Converter(Protocol):
    name: str
    extra: str  # the pip extra that brings this step's toolchain
    calibrated: bool  # optional, default False: the step reads a calibration set (see uses_calibration)
    float_modules: bool  # optional, default False: the step leaves the model's float_modules in float

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        """Everything this step cannot handle, listed at once (empty when it can go ahead)."""

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        """Write artifacts into ctx.workdir; the first one is what the next step consumes."""


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_steps() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()))


def get_converter(name: str, target: str = "") -> Converter:
    if name in BUILTIN:
        module_name, _, cls = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module_name), cls)()
    eps = _entry_points()
    if name in eps:
        return eps[name].load()()
    who = f"target {target!r} needs" if target else "the chain needs"
    raise UsageError(
        f"{who} the converter step {name!r}, which is not built into this version of zoo",
        hint=f"available steps: {', '.join(available_steps())}; a plugin can add it "
        f"through the '{ENTRY_POINT_GROUP}' entry-point group",
    )


def keeps_float_modules(step: Converter) -> bool:
    """Whether the step honours a model's `float_modules` (a plugin step that never says: no)."""
    return bool(getattr(step, "float_modules", False))


def uses_calibration(step: Converter) -> bool:
    """Whether `--calibration` means anything to this step (a plugin step that never says: no)."""
    return bool(getattr(step, "calibrated", False))


def missing_steps(target: TargetSpec) -> list[str]:
    known = set(available_steps())
    return [s for s in target.chain if s not in known]
