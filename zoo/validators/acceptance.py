"""The product's acceptance numbers on the reference identity task, and the vacuity guard.

Queries are an artifact's embeddings of held-out views; the gallery is the teacher's embedding of
each identity's canonical view, as in the product (devices query the teacher's gallery).
"""

from __future__ import annotations

import numpy as np

from zoo.fidelity import Check, Fidelity, Status

# From the product documents (DESIGN.md).
SAME_MIN = 0.8  # same card, different conditions: cosine > 0.8 (gated on the 5th percentile)
# The conditions that cosine rule covers. Occlusion has a rule of its own (top-3 retrieval), which is
# what the product expects of a card with a fifth of it hidden.
SAME_CONDITIONS = ("clean", "glare")
DIFFERENT_MAX = 0.5  # different cards: cosine < 0.5 (gated on the 95th percentile)
RETRIEVAL = {  # (condition, k): minimum rate
    ("clean", 1): 0.95,
    ("clean", 5): 0.99,
    ("occluded", 3): 0.85,
    ("glare", 5): 0.80,
}
UNKNOWN_MIN_DISTANCE = 0.5  # not a card: nearest cosine distance > 0.5 → "no match"
UNKNOWN_MIN_REJECTED = 0.9  # share of unknown images that must come out as "no match"


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def identity_metrics(gallery: np.ndarray, queries: np.ndarray, labels: np.ndarray, conditions) -> dict:
    """Retrieval, same/different-identity cosine and unknown rejection of `queries` against `gallery`."""
    sims = _l2(queries) @ _l2(gallery).T
    conditions = np.asarray(conditions)
    known = labels >= 0
    ranks = np.full(len(labels), -1)
    true_sim = np.full(len(labels), np.nan)
    for i in np.flatnonzero(known):
        true_sim[i] = sims[i, labels[i]]
        ranks[i] = int(np.sum(sims[i] > sims[i, labels[i]]))  # 0 = top-1
    others = sims[known].copy()
    others[np.arange(others.shape[0]), labels[known]] = np.nan
    different = others[~np.isnan(others)]
    same = true_sim[known & np.isin(conditions, SAME_CONDITIONS)]
    metrics = {
        "same_p5": float(np.percentile(same, 5)),
        "same_min": float(same.min()),
        "same_mean": float(same.mean()),
        "different_p95": float(np.percentile(different, 95)),
        "different_max": float(different.max()),
        "different_mean": float(different.mean()),
    }
    for condition in ("clean", "occluded", "glare"):
        sel = conditions == condition
        for k in (1, 3, 5):  # NaN when the set has no view of this condition
            metrics[f"top{k}_{condition}"] = float(np.mean(ranks[sel] < k)) if sel.any() else float("nan")
    unknown = ~known
    if unknown.any():
        nearest = sims[unknown].max(axis=1)
        metrics["unknown_nearest_distance_min"] = float((1 - nearest).min())
        metrics["unknown_rejected"] = float(np.mean(1 - nearest > UNKNOWN_MIN_DISTANCE))
        # known views wrongly rejected as "no match" at the same threshold
        metrics["known_false_rejection"] = float(np.mean(1 - sims[known].max(axis=1) > UNKNOWN_MIN_DISTANCE))
        metrics["unknown_nearest_cosine_mean"] = float(nearest.mean())
    return metrics


def separates(metrics: dict) -> tuple[bool, str]:
    """The vacuity guard: does this embedding (the teacher's) separate identities at all?"""
    ok = (
        metrics["top1_clean"] >= RETRIEVAL[("clean", 1)]
        and metrics["same_p5"] > SAME_MIN
        and metrics["different_p95"] < DIFFERENT_MAX
    )
    summary = (
        f"teacher top-1 {metrics['top1_clean']:.1%}, same-identity p5 {metrics['same_p5']:.3f}, "
        f"different-identity p95 {metrics['different_p95']:.3f}"
    )
    return ok, summary


def acceptance_checks(metrics: dict, fidelity: Fidelity, artifact: str) -> list[Check]:
    def row(name, value, ok, threshold, detail=""):
        return Check(name, Status.PASS if ok else Status.FAIL, fidelity, round(value, 4), threshold, artifact, detail)

    rows = [
        row(
            "same identity, clean/glare views: cosine p5",
            metrics["same_p5"],
            metrics["same_p5"] > SAME_MIN,
            f"> {SAME_MIN}",
            f"min {metrics['same_min']:.3f}, mean {metrics['same_mean']:.3f}",
        ),
        row(
            "different identities: cosine p95",
            metrics["different_p95"],
            metrics["different_p95"] < DIFFERENT_MAX,
            f"< {DIFFERENT_MAX}",
            f"max {metrics['different_max']:.3f}, mean {metrics['different_mean']:.3f}",
        ),
    ]
    for (condition, k), minimum in RETRIEVAL.items():
        value = metrics[f"top{k}_{condition}"]
        rows.append(row(f"retrieval top-{k}, {condition} views", value, value >= minimum, f"≥ {minimum:.0%}"))
    if "unknown_rejected" in metrics:
        value = metrics["unknown_rejected"]
        rows.append(
            row(
                "unknown images reported 'no match'",
                value,
                value >= UNKNOWN_MIN_REJECTED,
                f"≥ {UNKNOWN_MIN_REJECTED:.0%} at distance > {UNKNOWN_MIN_DISTANCE}",
                f"nearest distance min {metrics['unknown_nearest_distance_min']:.3f}",
            )
        )
    return rows
