"""An ONNX model with Immich's face input (`onnx_to_immich_face`), on ONNX Runtime: `measured`.

Validation feeds every session zoo's normalized NCHW tensor at the model's size; this session turns
it into what Immich hands the model — the RGB pixels as a 112-px crop (bicubic), scaled
(x − 127.5) / 127.5 — so parity against the source model is the cosine between Immich's input path
and zoo's. (Immich's crop comes from landmark alignment on the full photo; here it is the same
pixels resized, which is the part of Immich's path that the folded graph has to undo.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.errors import require
from zoo.fidelity import Fidelity
from zoo.runtimes import RuntimeBase, SessionBase, module_missing
from zoo.runtimes.hailo import to_pixels


def immich_face_blob(pixels_nhwc: np.ndarray, size: int = 112) -> np.ndarray:
    """RGB pixels (N, H, W, 3), 0–255 → Immich's (N, 3, size, size) blob, (x − 127.5) / 127.5."""
    from PIL import Image

    faces = [
        np.asarray(
            Image.fromarray(np.clip(np.rint(p), 0, 255).astype(np.uint8)).resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            np.float32,
        )
        for p in pixels_nhwc
    ]
    return np.ascontiguousarray(((np.stack(faces) - 127.5) / 127.5).transpose(0, 3, 1, 2))


class ImmichFaceSession(SessionBase):
    batch = None

    def __init__(self, path: Path):
        ort = require("onnxruntime", "onnx")
        onnx = require("onnx", "onnx")
        import json

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        self.mean = json.loads(props["folded_mean"])
        self.std = json.loads(props["folded_std"])
        self.face_px = int(props.get("input_size", 112))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self._session.get_inputs()[0].name
        self.output_name = self._session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        blob = immich_face_blob(to_pixels(x, self.mean, self.std), self.face_px)
        return self._session.run([self.output_name], {self.input_name: blob})[0].astype(np.float32)


class ImmichFaceRuntime(RuntimeBase):
    name = "immich_face"
    formats = frozenset({"onnx-immich-face"})
    fidelity = Fidelity.MEASURED
    extra = "onnx"
    parity_on_photos_only = True

    def unavailable_reason(self) -> str | None:
        return module_missing("onnxruntime", self.extra)

    def version(self) -> str:
        return f"ONNX Runtime {require('onnxruntime', 'onnx').__version__} (Immich's face input: 112 px, (x − 127.5)/127.5)"

    def open(self, path: Path) -> ImmichFaceSession:
        return ImmichFaceSession(path)
