"""The key/values every artifact carries, so a consumer never mixes embeddings of different models.

Every artifact also states its own input contract — `input_layout`, `input_dtype`, `input_range`,
`normalization` — because the artifacts of one conversion do not all take the same input: the plain
exports take the normalized NCHW float tensor (host: (x/255 - mean)/std), an artifact with the
normalization inside takes raw 0–255 pixels. `mean`/`std` are written only where the consumer must
apply them; where the normalization is inside, the values go under `folded_mean`/`folded_std`
(applying them again would normalize twice).
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo import __version__
from zoo.registry import ModelSpec
from zoo.targets import TargetSpec

HOST_NORMALIZATION = "host: (x/255 - mean)/std"
NORMALIZED_RANGE = "0-1 then (x-mean)/std"
PIXEL_RANGE = "0-255"
PLAIN_KEYS = ("mean", "std")
FOLDED_KEYS = ("folded_mean", "folded_std")


def artifact_metadata(model: ModelSpec, target: TargetSpec, input_size: int) -> dict[str, str]:
    return {
        "zoo_version": __version__,
        "model_name": model.name,
        "model_role": model.role,
        "teacher": model.teacher or "",
        # an ONNX-file source is a host path: its file name identifies it, the directory is the build host's
        "architecture": Path(model.architecture).name if model.architecture_kind == "onnx" else model.architecture,
        "weights": "trained" if model.trained else "untrained",
        "checkpoint_sha256": model.checkpoint.sha256 if model.checkpoint else "none (untrained weights)",
        "embedding_dim": str(model.embedding_dim),
        "embedding_space": model.embedding_space,
        "l2_normalized": "true" if model.normalize else "false",
        "host_l2_normalize": "false",
        "input_size": str(input_size),
        **host_normalized_input(model, "NCHW"),
        "target": target.name,
        "precision": target.precision,
        "tags": json.dumps(model.tags, sort_keys=True),
    }


def host_normalized_input(model: ModelSpec, layout: str) -> dict[str, str]:
    """The contract of an artifact that takes the normalized float32 tensor, as the source model does."""
    return {
        "input_layout": layout,
        "layout": layout,  # the older key, kept equal to input_layout
        "input_dtype": "float32",
        "input_range": NORMALIZED_RANGE,
        "normalization": HOST_NORMALIZATION,
        "color": "RGB",
        "mean": json.dumps(list(model.mean)),
        "std": json.dumps(list(model.std)),
    }


def normalization_inside(metadata: dict[str, str], *, layout: str, dtype: str, how: str) -> dict[str, str]:
    """`metadata` for an artifact that takes raw RGB pixels 0–255 and normalizes inside the model."""
    out = {k: v for k, v in metadata.items() if k not in PLAIN_KEYS + FOLDED_KEYS}
    return {
        **out,
        "input_layout": layout,
        "layout": layout,
        "input_dtype": dtype,
        "input_range": PIXEL_RANGE,
        "normalization": f"inside the model ({how}): feed pixels as they are, apply no mean/std",
        "color": "RGB",
        "folded_mean": metadata.get("mean", metadata.get("folded_mean", "")),
        "folded_std": metadata.get("std", metadata.get("folded_std", "")),
    }


def host_l2(metadata: dict[str, str], host_l2_normalize: bool) -> dict[str, str]:
    """`metadata` for an artifact whose graph stops before the final L2 normalization."""
    return {
        **metadata,
        "l2_normalized": "false",
        "host_l2_normalize": "true" if host_l2_normalize else "false",
    }
