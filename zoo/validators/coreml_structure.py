"""Structural checks of a saved Core ML model, read without Core ML's runtime (so on any platform).

coremltools parses the model's spec (`MLModel(..., skip_model_load=True)`) and, for an ML Program,
its MIL program; nothing is executed. The checks: format and deployment target, input and output
(names, shapes, dtypes), the L2 normalization of the embedding inside the model, compute precision
(which ops run in fp16 and which in fp32), the op-type histogram (with the multiply-add count), that
the numpy MIL executor knows every op, and the metadata zoo promises to embed.

The figures are facts read from the file here, so their fidelity is `measured`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from zoo.errors import require
from zoo.fidelity import Check, Fidelity, Status

# ops that only move or relabel data: not counted as compute when judging precision
_NO_COMPUTE = {"const", "cast", "reshape", "transpose", "squeeze", "expand_dims", "slice_by_index", "split", "concat"}
# between the embedding and its norm: what torch's clamp(norm, eps) and friends become
_EPS_GUARDS = {"clip", "maximum", "add", "cast"}
# metadata Core ML has its own fields for, beyond the user-defined key/values
_DESCRIPTIONS = ("author", "license", "version", "short_description")


@dataclass(frozen=True)
class Expected:
    """What the step asked for; the checks compare the saved model against it."""

    model_type: str  # mlProgram | neuralNetwork
    deployment_target: str  # e.g. "iOS16": the model must load on it
    input_name: str
    input_size: int
    image_input: bool
    output_name: str
    embedding_dim: int
    normalized: bool  # L2 normalization inside the model
    precision: str  # fp16 | fp32
    fp32_ops: frozenset[str] = frozenset()  # op types an fp16 program keeps in fp32 on purpose
    metadata: dict[str, str] = field(default_factory=dict)  # user-defined key/values that must be there


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # multiArray | image
    shape: tuple[int, ...]
    dtype: str  # FLOAT32 / FLOAT16 …, or the color space for an image

    def __str__(self) -> str:
        if self.kind == "image":
            return f"{self.name}: {self.dtype} image {self.shape[-1]}×{self.shape[-2]}"
        shape = self.shape if self.shape else "(shape not in the spec)"
        return f"{self.name}: {self.dtype.lower()} {shape}"


@dataclass(frozen=True)
class Structure:
    """Facts about one saved model."""

    model_type: str
    spec_version: int
    loads_on: str  # the oldest OS the spec version loads on, e.g. "iOS16"
    inputs: tuple[Feature, ...]
    outputs: tuple[Feature, ...]
    op_counts: dict[str, int]  # MIL op types (ML Program) or layer types (neuralnetwork), consts excluded
    precision_counts: dict[str, int]  # compute ops per result dtype, e.g. {"fp16": 600, "fp32": 14}
    fp32_compute_ops: dict[str, int]  # op types computing in fp32 (ML Program)
    weight_dtypes: dict[str, int]  # weight tensors per storage dtype
    normalization: str  # how the output is normalized, in words ("" when it is not)
    embedding_width: int | None  # width of the tensor that gets normalized (or of the output)
    macs: int | None  # multiply-adds per image of conv / linear / matmul (ML Program)
    unknown_to_executor: tuple[str, ...]  # op types zoo's numpy executor does not run
    metadata: dict[str, str]  # user-defined key/values
    descriptions: dict[str, str]  # author, license, version, short_description, input:…, output:…

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "spec_version": self.spec_version,
            "loads_on": self.loads_on,
            "inputs": [str(f) for f in self.inputs],
            "outputs": [str(f) for f in self.outputs],
            "op_counts": self.op_counts,
            "precision_counts": self.precision_counts,
            "fp32_compute_ops": self.fp32_compute_ops,
            "weight_dtypes": self.weight_dtypes,
            "normalization": self.normalization,
            "embedding_width": self.embedding_width,
            "gmacs": None if self.macs is None else round(self.macs / 1e9, 3),
            "unknown_to_executor": list(self.unknown_to_executor),
        }


def _coremltools():
    logging.getLogger("coremltools").setLevel(logging.ERROR)  # off macOS it warns on import
    return require("coremltools", "coreml")


def ios_version_of_spec(spec_version: int) -> str:
    """The oldest iOS that loads a Core ML spec version (7 → iOS16)."""
    ct = _coremltools()
    names = {t.value: t.name for t in ct.target if t.name.startswith("iOS")}
    return names.get(spec_version, f"spec {spec_version} (unknown iOS)")


def spec_version_of(deployment_target: str) -> int:
    return _coremltools().target[deployment_target].value


def _feature(desc, ct) -> Feature:
    kind = desc.type.WhichOneof("Type")
    if kind == "imageType":
        image = desc.type.imageType
        color = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
        return Feature(desc.name, "image", (1, 3, int(image.height), int(image.width)), color)
    if kind == "multiArrayType":
        array = desc.type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        return Feature(desc.name, "multiArray", tuple(int(s) for s in array.shape), dtype)
    return Feature(desc.name, str(kind), (), "")


def inspect(path: Path) -> Structure:
    """Read a saved .mlpackage or .mlmodel (no runtime) and return its facts."""
    ct = _coremltools()
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    kind = spec.WhichOneof("Type")
    common = {
        "model_type": kind,
        "spec_version": int(spec.specificationVersion),
        "loads_on": ios_version_of_spec(int(spec.specificationVersion)),
        "inputs": tuple(_feature(d, ct) for d in spec.description.input),
        "outputs": tuple(_feature(d, ct) for d in spec.description.output),
        "metadata": dict(spec.description.metadata.userDefined),
        "descriptions": {
            "author": spec.description.metadata.author,
            "license": spec.description.metadata.license,
            "version": spec.description.metadata.versionString,
            "short_description": spec.description.metadata.shortDescription,
            **{f"input:{d.name}": d.shortDescription for d in spec.description.input},
            **{f"output:{d.name}": d.shortDescription for d in spec.description.output},
        },
    }
    if kind == "mlProgram":
        return Structure(**common, **_program_facts(path))
    if kind == "neuralNetwork":
        return Structure(**common, **_neural_network_facts(spec.neuralNetwork))
    return Structure(
        **common,
        op_counts={},
        precision_counts={},
        fp32_compute_ops={},
        weight_dtypes={},
        normalization="",
        embedding_width=None,
        macs=None,
        unknown_to_executor=(),
    )


# ----------------------------------------------------------------------------- ML Program


def _program_facts(path: Path) -> dict:
    from coremltools.converters.mil.mil import types

    from zoo.runtimes.coreml_mil import OPS, _walk_ops, load_program

    program = load_program(path)
    function = program.functions[program.default_function_name]
    ops = list(_walk_ops(function))

    def dtype(var) -> str:
        return types.builtin_to_string(var.dtype)

    compute = [op for op in ops if op.op_type not in _NO_COMPUTE]
    return {
        "op_counts": dict(Counter(op.op_type for op in ops if op.op_type != "const").most_common()),
        "precision_counts": dict(Counter(dtype(op.outputs[0]) for op in compute)),
        "fp32_compute_ops": dict(Counter(op.op_type for op in compute if dtype(op.outputs[0]) == "fp32")),
        "weight_dtypes": dict(
            Counter(dtype(op.outputs[0]) for op in ops if op.op_type == "const" and len(op.outputs[0].shape) >= 2)
        ),
        **_program_normalization(function.outputs[0]),
        "macs": sum(_macs(op) for op in ops),
        "unknown_to_executor": tuple(sorted({op.op_type for op in ops if op.op_type not in OPS})),
    }


def _producer(var):
    """The op that computes var, looking through casts."""
    op = var.op
    while op is not None and op.op_type == "cast":
        op = op.inputs["x"].op
    return op


def _same_tensor(a, b) -> bool:
    """a and b are the same tensor, up to casts."""
    return a is b or _producer(a) is _producer(b)


def _program_normalization(output) -> dict:
    """Is the output x / guard(‖x‖₂ over the last axis), or an l2_norm op? Names the ops found."""
    op = _producer(output)
    if op is None:
        return {"normalization": "", "embedding_width": _last_dim(output)}
    if op.op_type == "l2_norm":
        return {"normalization": "l2_norm", "embedding_width": _last_dim(op.inputs["x"])}
    if op.op_type != "real_div":
        return {"normalization": "", "embedding_width": _last_dim(output)}
    embedding, guard = op.inputs["x"], op.inputs["y"]
    chain = []
    norm = _producer(guard)
    while norm is not None and norm.op_type in _EPS_GUARDS:
        chain.append(norm.op_type)
        norm = _producer(norm.inputs["x"])
    if norm is None or norm.op_type != "reduce_l2_norm" or not _same_tensor(norm.inputs["x"], embedding):
        return {"normalization": "", "embedding_width": _last_dim(output)}
    axes = [int(a) for a in norm.inputs["axes"].val]
    rank = len(embedding.shape)
    if [a % rank for a in axes] != [rank - 1]:
        return {"normalization": "", "embedding_width": _last_dim(output)}
    steps = " → ".join(["reduce_l2_norm(axis -1)", *reversed(chain), "real_div"])
    return {"normalization": steps, "embedding_width": _last_dim(embedding)}


def _last_dim(var) -> int | None:
    shape = var.shape
    return int(shape[-1]) if shape and isinstance(shape[-1], int) else None


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _macs(op) -> int:
    """Multiply-adds of one op (conv, linear, matmul); 0 for the rest or for dynamic shapes."""
    try:
        out = _prod(op.outputs[0].shape)
        if op.op_type == "conv":
            weight = op.inputs["weight"].shape  # (C_out, C_in / groups, *kernel)
            return out * _prod(weight[1:])
        if op.op_type == "linear":
            return out * int(op.inputs["weight"].shape[-1])
        if op.op_type == "matmul":
            x = op.inputs["x"].shape
            transpose_x = op.inputs.get("transpose_x")
            k = x[-2] if transpose_x is not None and transpose_x.val else x[-1]
            return out * int(k)
    except (TypeError, ValueError):  # a symbolic dim
        return 0
    return 0


# ----------------------------------------------------------------------------- neuralnetwork


def _neural_network_facts(network) -> dict:
    layers = list(network.layers)
    by_output = {out: layer for layer in layers for out in layer.output}
    weights = Counter()
    for layer in layers:
        params = getattr(layer, layer.WhichOneof("layer"))
        for name in ("weights", "data"):
            blob = getattr(params, name, None)
            if blob is None or not hasattr(blob, "float16Value"):
                continue
            if len(blob.float16Value):
                weights["fp16"] += 1
            elif len(blob.floatValue):
                weights["fp32"] += 1
    normalization, width = "", None
    last = layers[-1] if layers else None
    if last is not None and last.WhichOneof("layer") == "l2normalize":
        normalization = "l2normalize"
    elif last is not None and last.WhichOneof("layer") == "divideBroadcastable" and len(last.input) == 2:
        embedding, guard = last.input
        chain, norm = [], by_output.get(guard)
        while norm is not None and norm.WhichOneof("layer") in ("clip", "addBroadcastable"):
            chain.append(norm.WhichOneof("layer"))
            norm = by_output.get(norm.input[0])
        if norm is not None and norm.WhichOneof("layer") == "reduceL2" and list(norm.input) == [embedding]:
            if list(norm.reduceL2.axes) == [-1]:
                normalization = " → ".join(["reduceL2(axis -1)", *reversed(chain), "divideBroadcastable"])
        width = _nn_width(by_output.get(embedding))
    return {
        "op_counts": dict(Counter(layer.WhichOneof("layer") for layer in layers).most_common()),
        "precision_counts": {},
        "fp32_compute_ops": {},
        "weight_dtypes": dict(weights),
        "normalization": normalization,
        "embedding_width": width,
        "macs": None,
        "unknown_to_executor": (),
    }


def _nn_width(layer) -> int | None:
    """Output width of the layer that makes the embedding (innerProduct / batchedMatmul)."""
    if layer is None:
        return None
    kind = layer.WhichOneof("layer")
    if kind == "innerProduct":
        return int(layer.innerProduct.outputChannels)
    if kind == "batchedMatmul":
        return int(layer.batchedMatmul.weightMatrixSecondDimension) or None
    return None


# ----------------------------------------------------------------------------- checks


def multiply_adds(macs: int) -> str:
    return f"{macs / 1e9:.2f} G multiply-adds" if macs >= 1e8 else f"{macs / 1e6:.2f} M multiply-adds"


def _status(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


def structural_checks(path: Path, expected: Expected, artifact: str) -> list[Check]:
    """The structural rows of the report for one saved Core ML model."""
    return checks_from(inspect(path), expected, artifact)


class StructureInspector:
    """The structural rows, from the saved model and what its conversion asked for (`facts`)."""

    name = "coreml_structure"
    formats = frozenset({"mlpackage", "mlmodel"})

    def inspect(self, path: Path, artifact) -> list[Check]:
        asked = artifact.facts.get(FACTS_KEY)
        if not asked:
            return [
                Check(
                    "Core ML structure",
                    Status.NOT_RUN,
                    Fidelity.NOT_RUN,
                    artifact=path.name,
                    detail="the manifest does not record what the conversion asked for; convert again",
                )
            ]
        expected = Expected(**{**asked, "fp32_ops": frozenset(asked.get("fp32_ops", ()))})
        return structural_checks(path, expected, path.name)


FACTS_KEY = "coreml_expected"


def expected_facts(expected: Expected) -> dict:
    """`expected` as JSON-ready facts for the manifest (StructureInspector reads them back)."""
    from dataclasses import asdict

    return {FACTS_KEY: {**asdict(expected), "fp32_ops": sorted(expected.fp32_ops)}}


def checks_from(s: Structure, expected: Expected, artifact: str) -> list[Check]:
    return [
        _format_check(s, expected, artifact),
        _input_check(s, expected, artifact),
        _output_check(s, expected, artifact),
        _normalization_check(s, expected, artifact),
        _precision_check(s, expected, artifact),
        _ops_check(s, artifact),
        *([_executor_check(s, artifact)] if s.model_type == "mlProgram" else []),
        _metadata_check(s, expected, artifact),
    ]


def _check(name, ok, value, threshold, artifact, detail="", data=None) -> Check:
    return Check(name, _status(ok), Fidelity.MEASURED, value, threshold, artifact, detail, data or {})


def _format_check(s: Structure, e: Expected, artifact: str) -> Check:
    wanted = spec_version_of(e.deployment_target)
    ok = s.model_type == e.model_type and s.spec_version <= wanted
    return _check(
        "Core ML format and deployment target",
        ok,
        f"{s.model_type}, spec {s.spec_version} (loads on {s.loads_on}+)",
        f"{e.model_type}, spec ≤ {wanted} (loads on {e.deployment_target})",
        artifact,
        data={"model_type": s.model_type, "spec_version": s.spec_version, "loads_on": s.loads_on},
    )


def _input_check(s: Structure, e: Expected, artifact: str) -> Check:
    shape = (1, 3, e.input_size, e.input_size)
    if e.image_input:
        want = Feature(e.input_name, "image", shape, "RGB")
    else:
        want = Feature(e.input_name, "multiArray", shape, "FLOAT32")
    ok = s.inputs == (want,)
    return _check(
        "Core ML input: name, shape, dtype",
        ok,
        "; ".join(str(f) for f in s.inputs),
        str(want),
        artifact,
        detail="" if ok else f"expected exactly one input {want}",
    )


def _output_check(s: Structure, e: Expected, artifact: str) -> Check:
    (out, *more) = s.outputs or (Feature("", "", (), ""),)
    declared = out.shape
    # neuralnetwork specs leave output shapes out; the width then comes from the layer that makes it
    width = declared[-1] if declared else s.embedding_width
    shape_ok = declared in ((1, e.embedding_dim), ()) and width == e.embedding_dim
    ok = not more and out.name == e.output_name and out.dtype == "FLOAT32" and shape_ok
    value = str(out) if declared else f"{out} — width {width} from the layer that makes it"
    return _check(
        "Core ML output: the embedding, name, shape, dtype",
        ok,
        value,
        f"{e.output_name}: float32 (1, {e.embedding_dim})",
        artifact,
    )


def _normalization_check(s: Structure, e: Expected, artifact: str) -> Check:
    name = "embedding L2 normalization inside the model"
    if not e.normalized:
        return Check(
            name,
            Status.NOT_APPLICABLE,
            Fidelity.MEASURED,
            s.normalization or "none",
            artifact=artifact,
            detail="the model leaves L2 normalization to the host",
        )
    ok = bool(s.normalization) and s.embedding_width == e.embedding_dim
    return _check(
        name,
        ok,
        f"{s.normalization} on the {s.embedding_width}-d embedding" if s.normalization else "not found",
        f"the output is x / ‖x‖₂ over the {e.embedding_dim}-d embedding",
        artifact,
        detail="" if ok else "the output is not the L2-normalized embedding (head or normalization dropped?)",
    )


def _precision_check(s: Structure, e: Expected, artifact: str) -> Check:
    name = "Core ML compute precision"
    if s.model_type != "mlProgram":
        # a neuralnetwork model has no compute precision: the device picks it (fp16 on GPU / Neural Engine)
        want = "fp16" if e.precision == "fp16" else "fp32"
        ok = set(s.weight_dtypes) <= {want}
        return _check(
            name,
            ok,
            "weights: " + ", ".join(f"{n} {d}" for d, n in s.weight_dtypes.items()),
            f"weights stored {want}",
            artifact,
            detail="neuralnetwork: the device chooses the compute precision (fp16 on GPU and Neural Engine)",
        )
    fp16, fp32 = s.precision_counts.get("fp16", 0), s.precision_counts.get("fp32", 0)
    kept = ", ".join(f"{op}×{n}" for op, n in sorted(s.fp32_compute_ops.items()))
    if e.precision == "fp32":
        ok, threshold = fp16 == 0, "no op computes in fp16"
    else:
        # fp32 may remain for the chosen sensitive ops and the image input's scale/bias
        allowed = set(e.fp32_ops) | ({"mul", "add"} if e.image_input else set())
        stray = sorted(set(s.fp32_compute_ops) - allowed)
        ok = fp16 > 0 and not stray
        threshold = "compute in fp16" + (f"; fp32 only for {', '.join(sorted(allowed))}" if allowed else "")
    return _check(
        name,
        ok,
        f"fp16 ops {fp16}, fp32 ops {fp32}",
        threshold,
        artifact,
        detail=f"fp32: {kept}" if kept else "",
        data={"precision_counts": s.precision_counts, "fp32_compute_ops": s.fp32_compute_ops},
    )


def _ops_check(s: Structure, artifact: str) -> Check:
    total = sum(s.op_counts.values())
    histogram = ", ".join(f"{op}×{n}" for op, n in s.op_counts.items())
    macs = f"; {multiply_adds(s.macs)} per image (conv, linear, matmul)" if s.macs else ""
    unit = "ops" if s.model_type == "mlProgram" else "layers"
    return Check(
        "Core ML op-type histogram",
        Status.INFO,
        Fidelity.MEASURED,
        f"{total} {unit}, {len(s.op_counts)} types",
        artifact=artifact,
        detail=histogram + macs,
        data=s.to_dict(),
    )


def _executor_check(s: Structure, artifact: str) -> Check:
    unknown = s.unknown_to_executor
    return _check(
        "every op known to the numpy MIL executor (emulation)",
        not unknown,
        f"{len(s.op_counts) - len(unknown)}/{len(s.op_counts)} op types",
        "all op types",
        artifact,
        detail=f"unknown to zoo.runtimes.coreml_mil: {', '.join(unknown)}" if unknown else "",
    )


def _metadata_check(s: Structure, e: Expected, artifact: str) -> Check:
    missing = [k for k in _DESCRIPTIONS if not s.descriptions.get(k)]
    missing += [f"description of {k}" for k, v in s.descriptions.items() if ":" in k and not v]
    wrong = [k for k, v in e.metadata.items() if s.metadata.get(k) != v]
    keys = ("zoo_version", "embedding_dim", "embedding_space", "mean", "std", "checkpoint_sha256")
    shown = {k: s.metadata.get(k, "—") for k in keys}
    problems = [f"missing {m}" for m in missing] + [f"user-defined {k} missing or different" for k in wrong]
    return _check(
        "Core ML metadata (author, license, version, description, user-defined)",
        not problems,
        f"{len(s.metadata)} user-defined keys",
        f"all of zoo's {len(e.metadata)} keys, author, license, version, descriptions",
        artifact,
        detail="; ".join(problems) if problems else json.dumps(shown, ensure_ascii=False),
        data={"descriptions": s.descriptions, "user_defined": s.metadata},
    )
