"""The product's acceptance rules on an evaluation set, and the vacuity guard.

Queries are an artifact's embeddings of held-out views; the gallery is the teacher's embedding of
each identity's gallery images, as in the product (devices query the teacher's gallery). The rules
and thresholds come from an acceptance profile (zoo.profiles); `identity_metrics` and `separates`
give the reference task's figures for training and model cards.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ---------------------------------------------------------------- rules from an acceptance profile


def prototypes(gallery: np.ndarray, gallery_labels: np.ndarray, identities: int) -> np.ndarray:
    """One unit vector per identity: the mean of its gallery images' embeddings (one image: itself)."""
    g = _l2(gallery)
    protos = np.stack([g[gallery_labels == i].mean(axis=0) for i in range(identities)])
    return _l2(protos)


@dataclass(frozen=True)
class RuleResult:
    name: str
    status: Status  # PASS, FAIL or NOT_RUN
    value: float | None
    threshold: str
    detail: str


def _views(rule, conditions: np.ndarray, known: np.ndarray, key: str = "conditions") -> tuple[np.ndarray, str]:
    wanted = rule.get(key)
    if isinstance(wanted, str):
        wanted = [wanted]
    if not wanted:
        return known.copy(), "all query"
    return known & np.isin(conditions, wanted), "/".join(wanted)


def evaluate_rule(rule, sims: np.ndarray, labels: np.ndarray, conditions) -> RuleResult:
    """One profile rule on similarities `sims` (views × identities, cosine) — not run when the views
    it needs are not in the evaluation set."""
    conditions = np.asarray(conditions)
    known = labels >= 0
    idx = np.flatnonzero(known)
    true_sim = np.full(len(labels), np.nan)
    true_sim[idx] = sims[idx, labels[idx]]
    others = sims.copy()
    others[idx, labels[idx]] = np.nan
    kind = rule.kind
    if kind == "unknown_rejection":
        distance, minimum = float(rule.get("distance")), float(rule.get("min"))
        name, threshold = "unknown images reported 'no match'", f"≥ {minimum:.0%} at distance > {distance}"
        if known.all():
            return RuleResult(name, Status.NOT_RUN, None, threshold, "no unknown images in the evaluation set")
        nearest = 1 - sims[~known].max(axis=1)
        value = float(np.mean(nearest > distance))
        detail = f"{int((~known).sum())} unknown images; nearest distance min {nearest.min():.3f}"
        return RuleResult(name, Status.PASS if value >= minimum else Status.FAIL, value, threshold, detail)
    key = "condition" if kind == "retrieval" else "conditions"
    sel, which = _views(rule, conditions, known, key)
    if kind == "retrieval":
        k, minimum = int(rule.get("k")), float(rule.get("min"))
        name, threshold = f"retrieval top-{k}, {which} views", f"≥ {minimum:.0%}"
    elif kind == "same_identity":
        pct, minimum = rule.get("percentile", 5), float(rule.get("min"))
        name, threshold = f"same identity, {which} views: cosine p{pct:g}", f"> {minimum}"
    elif kind == "different_identity":
        pct, maximum = rule.get("percentile", 95), float(rule.get("max"))
        name = "different identities: cosine p" + f"{pct:g}" + ("" if which == "all query" else f", {which} views")
        threshold = f"< {maximum}"
    else:  # verification
        far, minimum = float(rule.get("far")), float(rule.get("min_tar"))
        name, threshold = f"verification: true accepts at {far:.2%} false accepts, {which} views", f"≥ {minimum:.0%}"
    if not sel.any():
        return RuleResult(name, Status.NOT_RUN, None, threshold, f"no {which} views in the evaluation set")
    if kind == "retrieval":
        ranks = np.array([np.sum(sims[i] > sims[i, labels[i]]) for i in np.flatnonzero(sel)])
        value = float(np.mean(ranks < k))
        return RuleResult(name, _status(value >= minimum), value, threshold, f"{int(sel.sum())} views")
    if kind == "same_identity":
        same = true_sim[sel]
        value = float(np.percentile(same, pct))
        detail = f"min {same.min():.3f}, mean {same.mean():.3f} over {len(same)} views"
        return RuleResult(name, _status(value > minimum), value, threshold, detail)
    impostor = others[sel][~np.isnan(others[sel])]
    if kind == "different_identity":
        if not len(impostor):
            return RuleResult(name, Status.NOT_RUN, None, threshold, "only one identity in the evaluation set")
        value = float(np.percentile(impostor, pct))
        detail = f"max {impostor.max():.3f}, mean {impostor.mean():.3f} over {len(impostor)} pairs"
        return RuleResult(name, _status(value < maximum), value, threshold, detail)
    if len(impostor) * far < 1:  # the rate cannot be read off fewer impostor pairs than 1/far
        return RuleResult(
            name, Status.NOT_RUN, None, threshold, f"{len(impostor)} impostor pairs; FAR {far:g} needs ≥ {1 / far:.0f}"
        )
    accept_above = float(np.quantile(impostor, 1 - far))
    value = float(np.mean(true_sim[sel] > accept_above))
    detail = f"accept above cosine {accept_above:.3f}; {int(sel.sum())} genuine, {len(impostor)} impostor pairs"
    return RuleResult(name, _status(value >= minimum), value, threshold, detail)


def _status(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


def similarities(gallery_protos: np.ndarray, views: np.ndarray) -> np.ndarray:
    return _l2(views) @ _l2(gallery_protos).T


def guard(profile, gallery_protos: np.ndarray, views: np.ndarray, labels, conditions) -> tuple[bool, str, list]:
    """The vacuity guard on the teacher: (every guard rule passes, its figures in words, the results).
    A guard rule that cannot run here makes the guard fail: parity against such a teacher proves nothing."""
    sims = similarities(gallery_protos, views)
    results = [evaluate_rule(rule, sims, np.asarray(labels), conditions) for rule in profile.guard]
    ok = bool(results) and all(r.status is Status.PASS for r in results)
    words = "; ".join(
        f"{r.name} {'not run (' + r.detail + ')' if r.value is None else format(r.value, '.3f')}" for r in results
    )
    return ok, f"teacher: {words}" if words else "the profile has no guard rules", results


def profile_checks(
    profile, gallery_protos, views, labels, conditions, fidelity: Fidelity, artifact: str
) -> list[Check]:
    sims = similarities(gallery_protos, views)
    rows = []
    for rule in profile.rules:
        r = evaluate_rule(rule, sims, np.asarray(labels), conditions)
        value = None if r.value is None else round(r.value, 4)
        fid = Fidelity.NOT_RUN if r.status is Status.NOT_RUN else fidelity
        rows.append(Check(r.name, r.status, fid, value, r.threshold, artifact, f"{r.detail}; profile {profile.name}"))
    return rows
