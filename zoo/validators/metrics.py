"""The numbers parity is judged by."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two (N, D) arrays, computed in float64."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(denom, 1e-30)


def parity_stats(reference: np.ndarray, output: np.ndarray) -> dict:
    cos = cosine_rows(reference, output)
    return {
        "cosine_min": float(cos.min()),
        "cosine_p5": float(np.percentile(cos, 5)),
        "cosine_mean": float(cos.mean()),
        "max_abs_diff": float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(output, np.float64)))),
        "samples": len(cos),
        "per_sample_cosine": [round(float(c), 7) for c in cos],
    }


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def discrimination_stats(reference: np.ndarray, output: np.ndarray) -> dict:
    """Can these inputs tell a working artifact from a broken one? How far apart the source's own
    embeddings of different inputs are, how spread the artifact's outputs are, and how many outputs are
    nearest their own input's source embedding (a constant or shuffled output is not)."""
    s, a = _unit(reference), _unit(output)
    off = ~np.eye(len(s), dtype=bool)
    source_pairs = 1 - (s @ s.T)[off]
    output_pairs = 1 - (a @ a.T)[off]
    cross = a @ s.T
    own = np.diag(cross)
    others = np.where(off, cross, -np.inf).max(axis=1)
    return {
        "source_distance_min": float(source_pairs.min()),
        "source_spread": float(source_pairs.mean()),
        "output_spread": float(output_pairs.mean()),
        "identified": int(np.sum(own > others)),
        "error_max": float((1 - own).max()),
    }
