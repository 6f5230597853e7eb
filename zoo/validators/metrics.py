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
