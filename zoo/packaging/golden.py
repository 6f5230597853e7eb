"""Golden inputs: a few real photos, zoo's preprocessing of them, and the source model's outputs.

A consumer checks its own pipeline in two steps: its preprocessing of `<photo>.png` against
`inputs.npy` (the tensors zoo fed the model), then its runtime's output for `inputs.npy` against
`expected.npy` (the source model's embeddings, torch fp32). `zoo verify` runs the same inputs
through every artifact whose runtime is available here.

Folder: `golden/<model>/<size>px/` with the PNGs, `inputs.npy` (N, 3, S, S float32 NCHW),
`expected.npy` (N, D float32) and `golden.json` describing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.registry import ModelSpec
from zoo.validators.inputs import PHOTO_NAMES, preprocess, reference_photos

GOLDEN_JSON = "golden.json"
INPUTS = "inputs.npy"
EXPECTED = "expected.npy"
PREPROCESS_TOLERANCE = 1e-5  # zoo's own preprocessing of the PNGs must reproduce inputs.npy to this


def golden_dir(model: str, size: int) -> str:
    return f"golden/{model}/{size}px"


def preprocessing_spec(spec: ModelSpec, size: int) -> dict:
    """The preprocessing zoo applies (zoo.validators.inputs), in words a consumer can reimplement."""
    return {
        "color": "RGB",
        "resize": f"shorter side to {size} px, bicubic (PIL Image.Resampling.BICUBIC)",
        "crop": f"central {size}×{size}",
        "scale": "uint8 / 255.0",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "normalize": "(x - mean) / std, per channel",
        "layout": "NCHW",
        "dtype": "float32",
    }


def _raw_image(image: np.ndarray, size: int) -> np.ndarray:
    """The photo, shrunk so its shorter side is at most 2 × size (keeps the package small)."""
    from PIL import Image

    h, w = image.shape[:2]
    limit = 2 * size
    if min(h, w) <= limit:
        return image
    scale = limit / min(h, w)
    resized = Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    return np.asarray(resized)


def source_embeddings(spec: ModelSpec, x: np.ndarray) -> tuple[np.ndarray, str]:
    """The registered source model's outputs for x: torch fp32, or ONNX Runtime for an ONNX source."""
    if spec.architecture_kind == "onnx":
        from zoo.runtimes import run_in_batches
        from zoo.runtimes.onnxruntime import OrtSession

        return run_in_batches(OrtSession(Path(spec.architecture)), x), "source ONNX on ONNX Runtime"
    from zoo.models import build_model
    from zoo.pipeline import embed_torch

    return embed_torch(build_model(spec), x), "torch fp32 (the registered source model)"


def write_golden(directory: Path, spec: ModelSpec, size: int, count: int, min_cosine: float) -> dict:
    """Write the golden set for one model at one input size; return its golden.json record."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, min(count, len(PHOTO_NAMES)))
    photos = reference_photos()[:count]
    images, names = [], []
    for name, photo in photos:
        raw = _raw_image(photo, size)
        Image.fromarray(raw).save(directory / f"{name}.png", optimize=False)
        images.append(raw)
        names.append(name)
    x = preprocess(images, size, spec.mean, spec.std)
    expected, source = source_embeddings(spec, x)
    np.save(directory / INPUTS, x.astype(np.float32))
    np.save(directory / EXPECTED, expected.astype(np.float32))
    record = {
        "model": spec.name,
        "input_size": size,
        "count": len(names),
        "images": [{"name": n, "file": f"{n}.png", "shape": list(im.shape)} for n, im in zip(names, images)],
        "inputs": {"file": INPUTS, "shape": list(x.shape), "dtype": "float32", "layout": "NCHW"},
        "expected": {"file": EXPECTED, "shape": list(expected.shape), "dtype": "float32", "source": source},
        "preprocessing": preprocessing_spec(spec, size),
        "l2_normalized": spec.normalize,
        "min_cosine": min_cosine,
        "how_to_use": (
            "1) preprocess each PNG with your pipeline and compare with inputs.npy (same order); "
            "2) run your model on inputs.npy and compare each row with expected.npy by cosine: "
            f"every row must reach min_cosine ({min_cosine})"
        ),
    }
    (directory / GOLDEN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return record


@dataclass(frozen=True)
class Golden:
    directory: Path
    record: dict
    inputs: np.ndarray
    expected: np.ndarray

    @property
    def min_cosine(self) -> float:
        return float(self.record["min_cosine"])


def load_golden(directory: Path) -> Golden:
    directory = Path(directory)
    record = json.loads((directory / GOLDEN_JSON).read_text())
    inputs = np.load(directory / record["inputs"]["file"], allow_pickle=False)
    expected = np.load(directory / record["expected"]["file"], allow_pickle=False)
    return Golden(directory, record, inputs, expected)


def preprocessing_difference(golden: Golden) -> float:
    """Max |Δ| between zoo's preprocessing of the golden PNGs and inputs.npy (0 when reproducible)."""
    from PIL import Image

    images = [
        np.asarray(Image.open(golden.directory / item["file"]).convert("RGB")) for item in golden.record["images"]
    ]
    prep = golden.record["preprocessing"]
    x = preprocess(images, int(golden.record["input_size"]), prep["mean"], prep["std"])
    if x.shape != golden.inputs.shape:
        return float("inf")
    return float(np.max(np.abs(x - golden.inputs)))
