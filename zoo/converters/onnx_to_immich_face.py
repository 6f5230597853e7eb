"""ONNX → the input Immich's face recognition feeds it: (batch, 3, 112, 112) RGB, (x − 127.5) / 127.5.

Immich's ML service aligns each detected face to 112 px on five landmarks, swaps BGR → RGB and scales
(x − 127.5) / 127.5 (`cv2.dnn.blobFromImages`); it never reads a preprocessing file for faces, so a
model that expects zoo's preprocessing gets the wrong numbers there. This step folds zoo's
preprocessing into the graph, in front of the model: back to 0–1, resize 112 px → the model's input
size (cubic with antialiasing, as PIL's bicubic resize in zoo's preprocessing), (x − mean) / std.
The batch axis is named `batch` (Immich rewrites any other model in place) and there is one output.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from zoo.converters import Artifact, ConvertContext
from zoo.errors import ConversionError, require

FACE_PX = 112  # Immich's aligned face crop
FORMAT = "onnx-immich-face"


class OnnxToImmichFace:
    name = "onnx_to_immich_face"
    extra = "onnx"

    def preflight(self, ctx: ConvertContext, upstream: Artifact | None) -> list[str]:
        require("onnx", self.extra)
        problems = []
        if upstream is None or upstream.format != "onnx":
            problems.append("onnx_to_immich_face needs an ONNX model from the previous step")
        if not ctx.target.dynamic_batch:
            problems.append(f"target {ctx.target.name!r} must set dynamic_batch = true (Immich batches faces)")
        if ctx.target.input_layout != "NCHW":
            problems.append("Immich feeds NCHW blobs")
        return problems

    def convert(self, ctx: ConvertContext, upstream: Artifact | None) -> list[Artifact]:
        onnx = require("onnx", self.extra)
        from onnx import TensorProto, helper

        model = onnx.load(str(ctx.workdir / upstream.name))
        graph = model.graph
        init = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in init]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ConversionError(
                f"expected one input and one output, the model has {len(inputs)} and {len(graph.output)}"
            )
        inner = inputs[0].name
        size = ctx.input_size
        scale = size / FACE_PX
        mean = np.asarray(ctx.model.mean, np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(ctx.model.std, np.float32).reshape(1, 3, 1, 1)
        face = "immich_face"
        consts = [
            helper.make_tensor("zoo_half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("zoo_scales", TensorProto.FLOAT, [4], [1.0, 1.0, scale, scale]),
            helper.make_tensor("zoo_mean", TensorProto.FLOAT, [1, 3, 1, 1], mean.ravel().tolist()),
            helper.make_tensor("zoo_std", TensorProto.FLOAT, [1, 3, 1, 1], std.ravel().tolist()),
        ]
        nodes = [
            helper.make_node("Mul", [face, "zoo_half"], ["zoo_half_scaled"]),  # [-1, 1] → [-0.5, 0.5]
            helper.make_node("Add", ["zoo_half_scaled", "zoo_half"], ["zoo_unit"]),  # → [0, 1], as /255
            helper.make_node(
                "Resize",
                ["zoo_unit", "", "zoo_scales"],
                ["zoo_resized"],
                mode="cubic",
                cubic_coeff_a=-0.5,
                antialias=1,
                coordinate_transformation_mode="half_pixel",
            ),
            helper.make_node("Sub", ["zoo_resized", "zoo_mean"], ["zoo_centred"]),
            helper.make_node("Div", ["zoo_centred", "zoo_std"], [inner]),
        ]
        del graph.input[:]
        graph.input.extend([helper.make_tensor_value_info(face, TensorProto.FLOAT, ["batch", 3, FACE_PX, FACE_PX])])
        for node in reversed(nodes):
            graph.node.insert(0, node)
        graph.initializer.extend(consts)
        out_dims = graph.output[0].type.tensor_type.shape.dim
        if out_dims:
            out_dims[0].ClearField("dim_value")
            out_dims[0].dim_param = "batch"
        opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is None or opset.version < 18:
            raise ConversionError("the Immich face input needs opset ≥ 18 (Resize with antialias)")
        meta = {p.key: p.value for p in model.metadata_props}
        meta = {k: v for k, v in meta.items() if k not in ("mean", "std")}
        meta.update(
            {
                "input_size": str(FACE_PX),
                "model_input_size": str(size),
                "input_layout": "NCHW",
                "layout": "NCHW",
                "input_dtype": "float32",
                "input_range": "-1-1: (x - 127.5) / 127.5 of RGB pixels",
                "normalization": "inside the model (zoo's mean/std and resize folded in): feed Immich's face "
                "blob, 112 px RGB (x - 127.5) / 127.5, apply no mean/std",
                "color": "RGB",
                "folded_mean": json.dumps(list(ctx.model.mean)),
                "folded_std": json.dumps(list(ctx.model.std)),
                "consumer": "immich facial-recognition",
            }
        )
        del model.metadata_props[:]
        onnx.helper.set_model_props(model, meta)
        out = ctx.workdir / f"{Path(upstream.name).stem}.immich-face.onnx"
        onnx.save_model(model, str(out))
        try:
            onnx.checker.check_model(str(out), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"the Immich-input ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from exc
        return [
            Artifact(
                out.name,
                FORMAT,
                runtime="immich_face",
                description=f"ONNX taking Immich's face blob ({FACE_PX} px RGB, (x − 127.5)/127.5); zoo's "
                f"preprocessing to {size} px folded in",
            )
        ]
