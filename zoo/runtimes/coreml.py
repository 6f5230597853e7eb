"""Core ML: the real runtime on macOS (fidelity `device`), a numpy emulation elsewhere (`emulated`).

`coreml` opens ML Programs (.mlpackage):
- on macOS, when coremltools has its native Core ML bridge, `MLModel.predict` runs the model with
  the chosen compute units (ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE; argument `compute_units`, or
  the environment variable ZOO_COREML_COMPUTE_UNITS, default ALL). Latency is measured there.
- anywhere else, zoo.runtimes.coreml_mil executes the saved MIL program with numpy, rounding every
  op the program types as fp16 to fp16. These numbers are labelled EMULATED, and the emulation's
  speed is not reported (`measures_latency` is False): it says nothing about an iPhone.

`coreml_neuralnetwork` opens neuralnetwork models (.mlmodel): only Core ML itself runs them (the
MIL executor reads ML Programs only), so off macOS it is "not run" and the structural checks of
zoo.validators.coreml_structure are all that is checked.

Both feed the Session protocol's input (NCHW float32, normalized): a model with an image input
gets pixels back from the mean/std written in its metadata (Core ML's predict takes a PIL image,
so there they are rounded to uint8; the emulation keeps them as float32).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import numpy as np

from zoo.errors import ConversionError, UsageError, require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
COMPUTE_UNITS_ENV = "ZOO_COREML_COMPUTE_UNITS"


def _coremltools():
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # off macOS it warns on import
    return require("coremltools", "coreml")


def native_unavailable_reason(system: str | None = None) -> str | None:
    """None when Core ML's own runtime can run models here, else why not."""
    system = system or platform.system()
    if system != "Darwin":
        return f"Core ML's runtime exists only on Apple platforms (this host runs {system})"
    missing = module_missing("coremltools", "coreml")
    if missing:
        return missing
    try:
        import coremltools.libcoremlpython  # noqa: F401  (the native bridge to Core ML.framework)
    except ImportError as exc:
        return f"coremltools cannot reach Core ML here ({exc})"
    return None


def compute_units_from(value: str | None) -> str:
    value = (value or os.environ.get(COMPUTE_UNITS_ENV) or "ALL").upper()
    if value not in COMPUTE_UNITS:
        raise UsageError(
            f"unknown Core ML compute units {value!r}",
            hint=f"use one of {', '.join(COMPUTE_UNITS)} (argument or {COMPUTE_UNITS_ENV})",
        )
    return value


def _pixels(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalized NCHW → RGB pixel values 0–255 (float), the inverse of (x/255 − mean)/std."""
    mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return (x * std + mean) * 255.0


def _mean_std(user_defined: dict) -> tuple[list[float], list[float]]:
    try:
        return json.loads(user_defined["folded_mean"]), json.loads(user_defined["folded_std"])
    except (KeyError, ValueError) as exc:
        raise ConversionError(
            "the Core ML model takes an image but its metadata has no mean/std to turn inputs into pixels"
        ) from exc


class CoreMLDeviceSession(SessionBase):
    """Core ML's own runtime (macOS): `MLModel.predict`, one sample per call for a batch-1 model.

    `ct` is the coremltools module (a stand-in in the tests, where no Core ML exists).
    """

    def __init__(self, path: Path, compute_units: str = "ALL", ct=None):
        ct = ct or _coremltools()
        self.compute_units = compute_units_from(compute_units)
        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        except Exception as exc:
            raise ConversionError(
                f"Core ML on this Mac cannot load {Path(path).name}: {type(exc).__name__}: {exc}",
                hint="a model for a newer OS than this Mac's fails here; the emulated runtime runs on any host",
            ) from exc
        spec = self.model.get_spec()
        inputs, outputs = list(spec.description.input), list(spec.description.output)
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConversionError(f"{Path(path).name}: expected one input and one output")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.image_input = inputs[0].type.WhichOneof("Type") == "imageType"
        if self.image_input:
            self.mean, self.std = _mean_std(dict(spec.description.metadata.userDefined))
            first = 1
        else:
            shape = list(inputs[0].type.multiArrayType.shape)
            first = int(shape[0]) if shape else 1
        self.batch = None if first == 1 else first  # batch-1 models loop over samples in run()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        chunks = [x[i : i + 1] for i in range(len(x))] if self.batch is None else [x]
        outs = [np.asarray(self._predict(chunk), np.float32).reshape(len(chunk), -1) for chunk in chunks]
        return np.concatenate(outs)

    def _predict(self, chunk: np.ndarray):
        if self.image_input:
            from PIL import Image

            pixels = np.clip(np.rint(_pixels(chunk, self.mean, self.std)), 0, 255).astype(np.uint8)
            feed = Image.fromarray(pixels[0].transpose(1, 2, 0), "RGB")
        else:
            feed = chunk
        return self.model.predict({self.input_name: feed})[self.output_name]


class EmulatedImageSession(SessionBase):
    """An emulated image-input model fed from normalized inputs: pixels as float32, not rounded."""

    def __init__(self, session, mean, std):
        self.session, self.mean, self.std = session, mean, std
        self.batch = session.batch

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(_pixels(np.asarray(x, np.float32), self.mean, self.std))

    def intermediates(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.session.intermediates(_pixels(np.asarray(x, np.float32), self.mean, self.std))

    def producers(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        return self.session.producers()

    def reference_twin(self):
        twin = self.session.reference_twin()
        return None if twin is None else EmulatedImageSession(twin, self.mean, self.std)


def open_emulated(path: Path):
    """The numpy execution of a saved ML Program; an op the executor lacks is an error naming it."""
    from zoo.runtimes.coreml_mil import CoreMLEmulatedSession, UnsupportedCoreMLModel, UnsupportedMilOp

    try:
        session = CoreMLEmulatedSession(path)
    except UnsupportedMilOp as exc:
        raise ConversionError(
            f"cannot emulate {Path(path).name}: {exc}",
            hint="add the op to zoo/runtimes/coreml_mil.py (OPS), or validate on macOS with Core ML itself",
        ) from exc
    except UnsupportedCoreMLModel as exc:
        raise ConversionError(f"cannot emulate {Path(path).name}: {exc}") from exc
    ct = _coremltools()
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    if spec.description.input[0].type.WhichOneof("Type") == "imageType":
        return EmulatedImageSession(session, *_mean_std(dict(spec.description.metadata.userDefined)))
    return session


class CoreML(RuntimeBase):
    """ML Programs (.mlpackage): Core ML on macOS, the numpy MIL emulation elsewhere."""

    name = "coreml"
    formats = frozenset({"mlpackage"})
    extra = "coreml"

    def __init__(self, compute_units: str | None = None):
        self.compute_units = compute_units_from(compute_units)
        self.native_reason = native_unavailable_reason()  # None on a Mac that can run Core ML

    @property
    def native(self) -> bool:
        return self.native_reason is None

    @property
    def fidelity(self) -> Fidelity:
        return Fidelity.DEVICE if self.native else Fidelity.EMULATED

    @property
    def measures_latency(self) -> bool:
        # the emulation's speed is the host's numpy, not the device's
        return self.native

    def unavailable_reason(self) -> str | None:
        return module_missing("coremltools", self.extra)

    def version(self) -> str:
        ct = _coremltools()
        if self.native:
            return f"{ct.__version__}: Core ML on macOS {platform.mac_ver()[0]}, compute units {self.compute_units}"
        return (
            f"{ct.__version__}: EMULATED — numpy execution of the saved ML Program (zoo.runtimes.coreml_mil), "
            f"fp16 rounding where the program computes in fp16; not Core ML ({self.native_reason})"
        )

    def open(self, path: Path):
        if self.native:
            return CoreMLDeviceSession(path, self.compute_units)
        return open_emulated(path)


class CoreMLNeuralNetwork(CoreML):
    """neuralnetwork models (.mlmodel): Core ML on macOS only (the MIL executor cannot run them)."""

    name = "coreml_neuralnetwork"
    formats = frozenset({"mlmodel"})

    def unavailable_reason(self) -> str | None:
        missing = module_missing("coremltools", self.extra)
        if missing or self.native:
            return missing
        return (
            f"{self.native_reason}; zoo's numpy executor runs ML Programs (.mlpackage) only, not neuralnetwork "
            ".mlmodel files — only the structural checks ran here"
        )

    def open(self, path: Path):
        if not self.native:
            raise ConversionError(f"{Path(path).name}: {self.unavailable_reason()}")
        return CoreMLDeviceSession(path, self.compute_units)
