"""torch → TFLite (LiteRT) flatbuffer through litert-torch, fp32, NCHW or NHWC input.

Before converting, the model is exported with torch.export and every ATen operator that litert-torch
has no lowering for is listed with its FX node name, all at once. One rewrite is made first, and
checked by the validators' parity vs source like any other: a resize whose output size equals its
input size is an identity (timm's ViTs with a dynamic image size resample their position embedding
to the same grid with antialiased bicubic, an op LiteRT lacks).

`input_layout = "NHWC"` in the target wraps the model with litert-torch's channel-last input, so the
artifact takes (N, H, W, 3) as Android's bitmaps come. The model's metadata (mean/std, embedding
dimension, layout …) is embedded in the flatbuffer's metadata table as `zoo_metadata` (JSON), and
after conversion the flatbuffer is checked for custom or Flex (TensorFlow) ops that the LiteRT
builtin runtime cannot execute.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require

EXTRA = "tflite"
METADATA_NAME = "zoo_metadata"
_RESIZE_OPS = (  # any overload (.default, .vec)
    "aten._upsample_bicubic2d_aa.",
    "aten.upsample_bicubic2d.",
    "aten._upsample_bilinear2d_aa.",
    "aten.upsample_bilinear2d.",
    "aten.upsample_nearest2d.",
)


@contextlib.contextmanager
def quiet_fds(log_path: Path):
    """Send the C++ toolchain's own stdout/stderr (glog, progress bars) to a log file."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def export_program(model, sample):
    """torch.export, with same-size resizes (identities) removed."""
    import torch

    program = torch.export.export(model, (sample,))
    graph = program.graph_module.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function" or not str(node.target).startswith(_RESIZE_OPS):
            continue
        source = node.args[0]
        src_val, out_val = source.meta.get("val"), node.meta.get("val")
        if src_val is not None and out_val is not None and tuple(src_val.shape) == tuple(out_val.shape):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
            changed = True
    if changed:
        graph.eliminate_dead_code()
        program.graph_module.recompile()
    return program


def unsupported_aten_ops(program) -> list[str]:
    """'aten.op at node NAME' for every node litert-torch cannot lower (after its decompositions)."""
    import operator

    from litert_torch import fx_infra
    from litert_torch.backend import lowerings

    decomposed = fx_infra.safe_run_decompositions(program, fx_infra.decomp.pre_lower_decomp(), can_skip=False)
    missing = []
    for node in decomposed.graph.nodes:
        if node.op == "call_function" and node.target is not operator.getitem and lowerings.lookup(node.target) is None:
            missing.append(f"{node.target} at node {node.name!r}")
    return missing


def tflite_schema():
    return require("ai_edge_litert.schema_py_generated", EXTRA)


def non_builtin_ops(path: Path) -> list[str]:
    """Custom and Flex ops in a .tflite (the builtin LiteRT runtime cannot run them), with the name of
    each op's first output tensor (TFLite operators have no names of their own)."""
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == schema.BuiltinOperator.CUSTOM:
                name = (code.CustomCode() or b"?").decode()
                tensor = subgraph.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else "?"
                kind = "Flex (TensorFlow) op" if name.startswith("Flex") else "custom op"
                found.append(f"{kind} {name} at operator {i} (output {tensor!r})")
    return found


def embed_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add (or replace) the `zoo_metadata` entry of the flatbuffer's metadata table."""
    import flatbuffers
    import numpy as np

    schema = tflite_schema()
    raw = Path(path).read_bytes()
    model = schema.ModelT.InitFromPackedBuf(raw, 0)
    for buf in model.buffers or []:
        # Writers may append large buffers after the flatbuffer and point at them by offset (ai-edge-
        # quantizer does); repacking moves everything, so such data is brought inline first.
        if buf.offset and buf.offset > 1:
            buf.data = np.frombuffer(raw[buf.offset : buf.offset + buf.size], dtype=np.uint8)
            buf.offset, buf.size = 0, 0
    payload = json.dumps(metadata, sort_keys=True).encode()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(payload, dtype=np.uint8)
    model.buffers = list(model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    Path(path).write_bytes(builder.Output())


def read_metadata(path: Path) -> dict[str, str]:
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_NAME:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return {}


def _name(entry) -> str:
    name = entry.name
    return name.decode() if isinstance(name, bytes) else str(name)


def sample_input(ctx: ConvertContext):
    import torch

    x = torch.from_numpy(ctx.sample_inputs[:1].copy())
    return x.permute(0, 2, 3, 1).contiguous() if ctx.target.input_layout == "NHWC" else x


def wrapped_model(ctx: ConvertContext):
    if ctx.target.input_layout != "NHWC":
        return ctx.torch_model
    litert_torch = require("litert_torch", EXTRA)
    return litert_torch.to_channel_last_io(ctx.torch_model, args=[0]).eval()


def input_contract(path: Path) -> dict[str, str]:
    """The first input's element type as the flatbuffer declares it (and its quantization when it is not
    float): an int8 step could change it, so it is read from the file, never assumed."""
    schema = tflite_schema()
    graph = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0).Subgraphs(0)
    tensor = graph.Tensors(graph.Inputs(0))
    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    dtype = names.get(tensor.Type(), f"tflite type {tensor.Type()}")
    out = {"input_dtype": dtype}
    q = tensor.Quantization()
    if dtype != "float32" and q is not None and q.ScaleLength():
        out["input_quantization"] = (
            f"normalize as stated, then q = round(x / {q.Scale(0):.9g}) + {q.ZeroPoint(0)} ({dtype})"
        )
    return out


def artifact_metadata(ctx: ConvertContext, precision: str, path: Path | None = None) -> dict[str, str]:
    layout = ctx.target.input_layout
    meta = {**ctx.metadata, "input_layout": layout, "layout": layout, "tflite_precision": precision}
    return {**meta, **input_contract(path)} if path is not None else meta


class TorchToTflite:
    name = "torch_to_tflite"
    extra = EXTRA

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        with quiet_fds(ctx.workdir / "litert.log"):  # its import and decompositions print a lot
            require("litert_torch", self.extra)
        require("ai_edge_litert.interpreter", self.extra)
        if ctx.torch_model is None:
            return ["torch_to_tflite converts a torch model; this model comes from an ONNX file"]
        if ctx.target.dynamic_batch:
            return ["torch_to_tflite writes a static batch of 1; set dynamic_batch = false in the target"]
        try:
            with quiet_fds(ctx.workdir / "litert.log"):
                program = export_program(wrapped_model(ctx), sample_input(ctx))
                missing = unsupported_aten_ops(program)
            self._exported = (id(ctx), program)  # convert() reuses it
        except Exception as exc:
            return [f"torch.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"]
        if missing:
            return [f"{len(missing)} operator(s) litert-torch cannot lower: " + ", ".join(missing)]
        return []

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        out = ctx.workdir / f"{ctx.target.artifact_name}.tflite"
        cached = getattr(self, "_exported", None)
        convert_fp32(ctx, out, cached[1] if cached and cached[0] == id(ctx) else None)
        layout = ctx.target.input_layout
        return [Artifact(out.name, "tflite", description=f"TFLite fp32, {layout} input (litert-torch)")]


def convert_fp32(ctx: ConvertContext, out: Path, program=None) -> None:
    import torch

    litert_torch = require("litert_torch", EXTRA)
    log = ctx.workdir / "litert.log"
    try:
        with quiet_fds(log), torch.no_grad():
            if program is None:
                program = export_program(wrapped_model(ctx), sample_input(ctx))
            edge = litert_torch.convert(program.module(), (sample_input(ctx),))
            with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix=".tflite-") as tmp:
                path = Path(tmp) / out.name
                edge.export(str(path))
                path.replace(out)
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0][:300]
        said = last_error_line(log)
        raise ConversionError(
            f"torch → TFLite (litert-torch) failed: {type(exc).__name__}: {first}"
            + (f"; its log: {said}" if said and said not in first else ""),
            # a failed run's folder is not kept, so the log's last error line is in the message itself
            hint="run with --traceback for the whole traceback",
        ) from exc
    finish(ctx, out, "fp32")
    log.unlink(missing_ok=True)


def last_error_line(log: Path) -> str:
    """The last line of the converter's log that reports an error (MLIR's diagnostics, such as
    "'tfl.mul' op operands don't have broadcast-compatible shapes", land there, not in the exception),
    else its last line; "" without a log."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def finish(ctx: ConvertContext, out: Path, precision: str, extra: dict[str, str] | None = None) -> None:
    """Fail closed on ops LiteRT cannot run, then embed the metadata."""
    bad = non_builtin_ops(out)
    if bad:
        raise ConversionError(
            f"{out.name} has {len(bad)} op(s) the LiteRT builtin runtime cannot run: " + ", ".join(bad)
        )
    embed_metadata(out, {**artifact_metadata(ctx, precision, out), **(extra or {})})
