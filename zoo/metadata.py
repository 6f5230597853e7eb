"""The key/values every artifact carries, so a consumer never mixes embeddings of different models."""

from __future__ import annotations

import json

from zoo import __version__
from zoo.registry import ModelSpec
from zoo.targets import TargetSpec


def artifact_metadata(model: ModelSpec, target: TargetSpec, input_size: int) -> dict[str, str]:
    return {
        "zoo_version": __version__,
        "model_name": model.name,
        "model_role": model.role,
        "teacher": model.teacher or "",
        "architecture": model.architecture,
        "weights": "trained" if model.trained else "untrained",
        "checkpoint_sha256": model.checkpoint.sha256 if model.checkpoint else "none (untrained weights)",
        "embedding_dim": str(model.embedding_dim),
        "embedding_space": model.embedding_space,
        "l2_normalized": "true" if model.normalize else "false",
        "input_size": str(input_size),
        "layout": "NCHW",
        "color": "RGB",
        "mean": json.dumps(list(model.mean)),
        "std": json.dumps(list(model.std)),
        "target": target.name,
        "precision": target.precision,
        "tags": json.dumps(model.tags, sort_keys=True),
    }
