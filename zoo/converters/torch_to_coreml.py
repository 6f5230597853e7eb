"""torch → Core ML: an ML Program (.mlpackage, default) or a neuralnetwork model (.mlmodel).

The model is traced (`torch.jit.trace`, batch 1) and converted with coremltools:

- ML Program (`convert_to="mlprogram"`), minimum deployment target iOS16 unless the options say
  otherwise (iOS15 or later); compute precision from the target: fp16 (what apps ship) or fp32.
  `fp32_ops` keeps chosen op types in fp32 inside an fp16 program through
  `ct.transform.FP16ComputePrecision(op_selector=...)`; SENSITIVE_OPS is the usual set (layer_norm,
  softmax, reductions, the other normalizations).
- neuralnetwork (`convert_to="neuralnetwork"`, iOS14 or older), for apps that still load .mlmodel:
  it has no compute precision (the device picks it); an fp16 target stores the weights in fp16.
- The stated deployment target (metadata `coreml_minimum_deployment_target`, `coreml_spec_version`,
  the artifact's description) is the iOS of the spec version actually written: coremltools writes the
  lowest spec the ops need, which can be older than the one asked for (iOS14 asked, spec 4 = iOS13).
- Input and output are float32 in every variant (the casts to and from fp16 are inside), batch 1.
  By default the input is a tensor `images` (1, 3, H, W), normalized as in training:
  (pixel/255 − mean) / std. With `image_input` it is an RGB image `image` (Core ML's ImageType,
  pixels 0–255) and the model's mean/std are folded in: ImageType computes `scale·pixel + bias`
  with ONE scale for all channels, so when the three stds are equal it carries the whole
  normalization (scale = 1/(255·std), bias = −mean/std); when they differ (ImageNet's do),
  ImageType does pixel/255 − mean (scale = 1/255, bias = −mean) and a per-channel multiply by
  1/std is the first op of the program. Either way the result is exact up to float rounding (in an
  fp16 program the three 1/std factors are fp16 constants: relative error ≤ 2⁻¹¹ each).
- Metadata: author, license (registry tags `author` / `license` when given), version, short
  description, input/output descriptions, and every key of zoo's artifact metadata as user-defined
  metadata (zoo version, embedding dim and space, input contract, checkpoint sha256 …); an image
  input states `normalization` inside the model and `folded_mean`/`folded_std`.

The model is saved into a temporary name and renamed into place; then its structure is read back
without the runtime (zoo.validators.coreml_structure) and the rows go into the report. Numbers are
checked by the pipeline's validation on the `coreml` runtime: Core ML on macOS, the numpy MIL
emulation elsewhere. Everything that goes wrong is a ConversionError naming what failed.

Variants are steps of their own (a target names one in its chain): torch_to_coreml,
torch_to_coreml_mixed (fp16 with SENSITIVE_OPS in fp32), torch_to_coreml_image (image input) and
torch_to_coreml_mlmodel (.mlmodel). From Python, `TorchToCoreML(CoreMLOptions(...))` takes any
combination, including another deployment target.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo import __version__
from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require
from zoo.fidelity import Check, Fidelity, Status
from zoo.metadata import normalization_inside

INPUT_NAME = "images"
IMAGE_INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
SUFFIX = {"mlprogram": ".mlpackage", "neuralnetwork": ".mlmodel"}
DEFAULT_DEPLOYMENT_TARGET = {"mlprogram": "iOS16", "neuralnetwork": "iOS14"}
# Ops whose fp16 error grows with their input (sums of many terms, exponentials): the ones to keep
# in fp32 when an fp16 program drifts. Layer/instance/batch norm, softmax and the reductions.
SENSITIVE_OPS = frozenset(
    {
        "layer_norm",
        "instance_norm",
        "batch_norm",
        "l2_norm",
        "softmax",
        "reduce_mean",
        "reduce_sum",
        "reduce_sum_square",
        "reduce_l2_norm",
        "reduce_log_sum_exp",
    }
)


@dataclass(frozen=True)
class CoreMLOptions:
    model_type: str = "mlprogram"  # mlprogram → .mlpackage | neuralnetwork → .mlmodel
    deployment_target: str = ""  # e.g. "iOS17"; empty: iOS16 (mlprogram) / iOS14 (neuralnetwork)
    fp32_ops: frozenset[str] = frozenset()  # MIL op types kept in fp32 in an fp16 ML Program
    image_input: bool = False  # RGB image input (pixels 0–255) with mean/std folded in

    @property
    def minimum_target(self) -> str:
        return self.deployment_target or DEFAULT_DEPLOYMENT_TARGET.get(self.model_type, "")


def _coremltools():
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # off macOS it warns on import
    ct = require("coremltools", "coreml")
    from zoo.converters.coreml_torch_ops import register_missing_ops

    register_missing_ops()
    return ct


@contextlib.contextmanager
def _quiet():
    """coremltools prints progress bars and chatter; keep the terminal to zoo's own lines."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class TorchToCoreML:
    name = "torch_to_coreml"
    extra = "coreml"
    default_options = CoreMLOptions()

    def __init__(self, options: CoreMLOptions | None = None):
        self.options = options or self.default_options

    # ------------------------------------------------------------------ preflight

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        ct = _coremltools()
        o, target = self.options, ctx.target
        problems = []
        if ctx.torch_model is None:
            problems.append(
                f"model {ctx.model.name!r} is an ONNX file; coremltools converts torch models (its ONNX "
                "frontend was removed in coremltools 6)"
            )
        if o.model_type not in SUFFIX:
            problems.append(f"model_type must be one of {', '.join(SUFFIX)}, not {o.model_type!r}")
            return problems
        if target.precision not in ("fp16", "fp32"):
            problems.append(f"target {target.name!r} asks for {target.precision}; Core ML steps take fp16 or fp32")
        ios = [t.name for t in ct.target if t.name.startswith("iOS")]
        if o.minimum_target not in ios:
            problems.append(f"unknown deployment target {o.minimum_target!r}; known: {', '.join(ios)}")
        else:
            version = ct.target[o.minimum_target].value
            if o.model_type == "mlprogram" and version < ct.target.iOS15.value:
                problems.append(f"an ML Program needs iOS15 or later, not {o.minimum_target}")
            if o.model_type == "neuralnetwork" and version > ct.target.iOS14.value:
                problems.append(
                    f"a neuralnetwork .mlmodel can target iOS14 at the latest (coremltools refuses "
                    f"{o.minimum_target}); use an ML Program for iOS15+"
                )
        if o.fp32_ops and (o.model_type != "mlprogram" or target.precision != "fp16"):
            problems.append("fp32_ops only means something for an fp16 ML Program")
        if target.dynamic_batch:
            problems.append(f"target {target.name!r} asks for a dynamic batch; the Core ML steps make batch 1")
        if target.input_layout != "NCHW":
            problems.append(f"target {target.name!r} asks for {target.input_layout}; the Core ML steps take NCHW")
        return problems

    # ------------------------------------------------------------------ convert

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        from zoo.validators import coreml_structure

        ct = _coremltools()
        o = self.options
        out = ctx.workdir / f"{ctx.target.artifact_name}{SUFFIX[o.model_type]}"
        module, ct_input, preprocessing = self._input(ctx, ct)
        with ctx.progress.step(f"tracing {ctx.model.name} (torch.jit.trace, batch 1)"):
            traced = _trace(module, ctx.sample_inputs[:1])
        with ctx.progress.step(f"coremltools {ct.__version__}: convert to {o.model_type}"):
            mlmodel = self._convert(ct, ctx, traced, ct_input)
        del traced, module
        gc.collect()
        # coremltools writes the lowest spec version the ops need, which can be older than the target
        # asked for (a neuralnetwork asked for iOS14 can come out spec 4, iOS13): state what was written
        spec_version = int(mlmodel.get_spec().specificationVersion)
        loads_on = coreml_structure.ios_version_of_spec(spec_version)
        metadata = self._metadata(ctx, preprocessing, spec_version, loads_on)
        self._describe(mlmodel, ctx, ct_input.name, preprocessing, metadata)
        _save_atomically(mlmodel, out)
        del mlmodel
        gc.collect()

        with ctx.progress.step(f"reading {out.name} back (structure, no runtime)"):
            structure = coreml_structure.inspect(out)
        if structure.spec_version != spec_version:  # the metadata would state the wrong iOS
            raise ConversionError(
                f"{out.name} was saved as spec {structure.spec_version}, converted as spec {spec_version}"
            )
        expected = coreml_structure.Expected(
            model_type="mlProgram" if o.model_type == "mlprogram" else "neuralNetwork",
            deployment_target=o.minimum_target,
            input_name=ct_input.name,
            input_size=ctx.input_size,
            image_input=o.image_input,
            output_name=OUTPUT_NAME,
            embedding_dim=ctx.model.embedding_dim,
            normalized=ctx.model.normalize,
            precision=ctx.target.precision,
            fp32_ops=o.fp32_ops,
            metadata=metadata,
        )
        # the structure rows come from zoo.validators.inspectors (convert and validate alike)
        latency = _latency_not_run(ctx, structure, out.name, o.model_type)
        if latency is not None:
            ctx.checks.append(latency)
        return [
            Artifact(
                out.name,
                SUFFIX[o.model_type].lstrip("."),
                description=self._description(ctx, loads_on),
                runtime="coreml" if o.model_type == "mlprogram" else "coreml_neuralnetwork",
                facts=coreml_structure.expected_facts(expected),
            )
        ]

    def _precision_label(self, ctx: ConvertContext) -> str:
        o = self.options
        if o.model_type == "neuralnetwork":
            return f"{ctx.target.precision} weights (the device picks the compute precision)"
        kept = f"; fp32: {', '.join(sorted(o.fp32_ops))}" if o.fp32_ops else ""
        return f"{ctx.target.precision} compute{kept}"

    def _description(self, ctx: ConvertContext, loads_on: str) -> str:
        o = self.options
        kind = "ML Program" if o.model_type == "mlprogram" else "neuralnetwork model"
        size = ctx.input_size
        source = f"image {size}×{size} RGB" if o.image_input else f"tensor (1, 3, {size}, {size}) float32"
        return f"Core ML {kind}, {self._precision_label(ctx)}, {loads_on}+, input {source}"

    def _metadata(self, ctx: ConvertContext, preprocessing: str, spec_version: int, loads_on: str) -> dict:
        """zoo's artifact metadata as this model states it: its real deployment target and input."""
        o = self.options
        metadata = dict(ctx.metadata)
        if o.image_input:
            how = "Core ML ImageType scale/bias" + (
                "" if len(set(ctx.model.std)) == 1 else ", then x 1/std per channel"
            )
            # folded_mean/folded_std only: zoo.runtimes.coreml reads them to turn normalized validation
            # inputs back into pixels; an app must not apply them (the ImageType takes pixels)
            metadata = normalization_inside(metadata, layout="image", dtype="uint8", how=how)
        return {
            **metadata,
            "coreml_model_type": o.model_type,
            "coreml_precision": self._precision_label(ctx),
            "coreml_spec_version": str(spec_version),
            "coreml_minimum_deployment_target": loads_on,
            "input_kind": "image" if o.image_input else "tensor",
            "input_preprocessing": preprocessing,
        }

    def _input(self, ctx: ConvertContext, ct):
        """(the torch module to trace, the coremltools input type, the preprocessing in words)."""
        size, mean, std = ctx.input_size, ctx.model.mean, ctx.model.std
        shape = (1, 3, size, size)
        if not self.options.image_input:
            words = f"tensor NCHW float32, (pixel/255 − mean) / std with mean {list(mean)}, std {list(std)}"
            return ctx.torch_model, ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32), words
        if len(set(std)) == 1:
            scale, bias, module = 1.0 / (255.0 * std[0]), [-m / std[0] for m in mean], ctx.torch_model
            words = f"RGB image 0–255; ImageType scale {scale:.9g}, bias {[round(b, 9) for b in bias]}: the whole normalization"
        else:
            scale, bias = 1.0 / 255.0, [-m for m in mean]
            module = _channel_scaled(ctx.torch_model, [1.0 / s for s in std])
            words = (
                f"RGB image 0–255; ImageType scale 1/255, bias −mean {list(mean)}; then × 1/std per channel "
                f"(std {list(std)}) as the program's first op: one ImageType scale cannot hold three stds"
            )
        image = ct.ImageType(
            name=IMAGE_INPUT_NAME, shape=shape, scale=scale, bias=bias, color_layout=ct.colorlayout.RGB
        )
        return module, image, words

    def _convert(self, ct, ctx: ConvertContext, traced, ct_input):
        o = self.options
        kwargs = {
            "inputs": [ct_input],
            "outputs": [ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            "convert_to": o.model_type,
            "minimum_deployment_target": ct.target[o.minimum_target],
        }
        if o.model_type == "mlprogram":
            if ctx.target.precision == "fp32":
                kwargs["compute_precision"] = ct.precision.FLOAT32
            elif o.fp32_ops:
                keep = frozenset(o.fp32_ops)
                kwargs["compute_precision"] = ct.transform.FP16ComputePrecision(
                    op_selector=lambda op: op.op_type not in keep
                )
            else:
                kwargs["compute_precision"] = ct.precision.FLOAT16
        try:
            with _quiet():
                mlmodel = ct.convert(traced, **kwargs)
                if o.model_type == "neuralnetwork" and ctx.target.precision == "fp16":
                    from coremltools.models.neural_network import quantization_utils

                    mlmodel = quantization_utils.quantize_weights(mlmodel, nbits=16)
        except Exception as exc:
            raise ConversionError(
                f"coremltools {ct.__version__} could not convert {ctx.model.name} to {o.model_type} "
                f"({o.minimum_target}, {ctx.target.precision}): {_first_line(exc)}"
            ) from exc
        if not hasattr(mlmodel, "get_spec"):  # some coremltools versions return a bare spec
            mlmodel = ct.models.MLModel(mlmodel, skip_model_load=True)
        return mlmodel

    def _describe(self, mlmodel, ctx: ConvertContext, input_name: str, preprocessing: str, metadata: dict) -> None:
        model = ctx.model
        trained = model.checkpoint is not None
        mlmodel.author = str(model.tags.get("author") or f"zoo {__version__}")
        mlmodel.license = str(model.tags.get("license") or "not stated in the registry (set tags.license)")
        mlmodel.version = f"{model.name} " + (
            f"checkpoint sha256:{model.checkpoint.sha256[:12]}" if trained else "untrained weights"
        )
        mlmodel.short_description = (
            f"{model.description or model.name}: {model.embedding_dim}-d embedding "
            f"({model.embedding_space}) of a {ctx.input_size}×{ctx.input_size} RGB image; "
            f"zoo {__version__}, target {ctx.target.name}"
        )
        mlmodel.input_description[input_name] = preprocessing
        mlmodel.output_description[OUTPUT_NAME] = (
            f"{model.embedding_dim}-d float32 embedding, space {model.embedding_space}; "
            + ("L2-normalized inside the model: compare by dot product" if model.normalize else "not L2-normalized")
        )
        for key, value in metadata.items():
            mlmodel.user_defined_metadata[key] = str(value)


class TorchToCoreMLMixed(TorchToCoreML):
    """fp16 ML Program with layer_norm, softmax, reductions and the other normalizations in fp32."""

    name = "torch_to_coreml_mixed"
    default_options = CoreMLOptions(fp32_ops=SENSITIVE_OPS)


class TorchToCoreMLImage(TorchToCoreML):
    """ML Program taking an RGB image (pixels 0–255), the model's mean/std folded in."""

    name = "torch_to_coreml_image"
    default_options = CoreMLOptions(image_input=True)


class TorchToCoreMLNeuralNetwork(TorchToCoreML):
    """neuralnetwork .mlmodel (iOS14 and older apps); checked structurally off macOS."""

    name = "torch_to_coreml_mlmodel"
    default_options = CoreMLOptions(model_type="neuralnetwork")


def _channel_scaled(model, factors: list[float]):
    """model(x · factors[c]) for each channel c: the per-channel 1/std an ImageType cannot hold."""
    import torch
    from torch import nn

    class ChannelScaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("factors", torch.tensor(factors, dtype=torch.float32).reshape(1, -1, 1, 1))

        def forward(self, x):
            return self.model(x * self.factors)

    return ChannelScaled().eval()


def _trace(module, example: np.ndarray):
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python control flow on shapes
            return torch.jit.trace(module, torch.from_numpy(np.ascontiguousarray(example)), check_trace=False)
    except Exception as exc:
        raise ConversionError(f"torch.jit.trace failed: {_first_line(exc)}") from exc


def _save_atomically(mlmodel, out: Path) -> None:
    """Save under a temporary name in the same folder, then rename: never a half-written model."""
    tmp_dir = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        with _quiet():
            mlmodel.save(str(tmp_dir / out.name))
        os.replace(tmp_dir / out.name, out)
    except Exception as exc:
        raise ConversionError(f"saving {out.name} failed: {_first_line(exc)}") from exc
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _latency_not_run(ctx: ConvertContext, structure, artifact: str, model_type: str) -> Check | None:
    """Off macOS nothing measures Core ML latency: say so against the budget (never a pass)."""
    from zoo.runtimes.coreml import native_unavailable_reason
    from zoo.validators.coreml_structure import multiply_adds

    target = ctx.target
    reason = native_unavailable_reason()
    if target.latency_budget_ms is None or reason is None:
        return None  # no budget, or the validation measures it on Core ML itself
    compute = f"; {multiply_adds(structure.macs)} per image" if structure.macs else ""
    return Check(
        f"latency p{target.latency_percentile} on {target.device or 'the device'}",
        Status.NOT_RUN,
        Fidelity.NOT_RUN,
        None,
        f"p{target.latency_percentile} < {target.latency_budget_ms:g} ms on {target.latency_on}",
        artifact,
        f"{reason}; the numpy emulation's speed says nothing about the device, so none is reported"
        f"{compute} ({model_type})",
    )
