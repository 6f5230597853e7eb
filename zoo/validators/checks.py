"""Checks on one artifact's outputs: shape and dtype, unit norm, parity vs source and vs teacher."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from zoo.fidelity import Check, Fidelity, Status
from zoo.validators.metrics import discrimination_stats, parity_stats

NORM_TOLERANCE = 1e-3


def _status(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


def output_shape(out: np.ndarray, batch: int, dim: int, fidelity: Fidelity, artifact: str) -> Check:
    expected = (batch, dim)
    ok = tuple(out.shape) == expected and out.dtype == np.float32 and bool(np.isfinite(out).all())
    detail = "" if np.isfinite(out).all() else "non-finite values in the output"
    return Check(
        "output shape and dtype",
        _status(ok),
        fidelity,
        value=f"{tuple(out.shape)} {out.dtype}",
        threshold=f"{expected} float32, finite",
        artifact=artifact,
        detail=detail,
    )


def unit_norm(out: np.ndarray, fidelity: Fidelity, artifact: str, normalized: bool = True) -> Check:
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    worst = float(np.max(np.abs(norms - 1.0)))
    if not normalized:
        return Check(
            "unit L2 norm",
            Status.NOT_APPLICABLE,
            fidelity,
            value=round(worst, 6),
            artifact=artifact,
            detail="the model leaves L2 normalization to the host",
        )
    return Check(
        "unit L2 norm",
        _status(worst <= NORM_TOLERANCE),
        fidelity,
        value=round(worst, 7),
        threshold=f"max |‖e‖ − 1| ≤ {NORM_TOLERANCE}",
        artifact=artifact,
        data={"norm_min": float(norms.min()), "norm_max": float(norms.max())},
    )


def parity(
    name: str, reference: np.ndarray, out: np.ndarray, min_cosine: float, fidelity: Fidelity, artifact: str, detail=""
) -> Check:
    stats = parity_stats(reference, out)
    return Check(
        name,
        _status(stats["cosine_min"] >= min_cosine),
        fidelity,
        value=round(stats["cosine_min"], 7),
        threshold=f"min cosine ≥ {min_cosine}",
        artifact=artifact,
        detail=f"mean {stats['cosine_mean']:.7f}, max |Δ| {stats['max_abs_diff']:.2e}, "
        f"{stats['samples']} samples" + (f"; {detail}" if detail else ""),
        data=stats,
    )


COLLAPSE_RATIO = 0.5  # outputs that vary less than half as much as the source's are constant or collapsed


def source_parity(
    name: str, reference: np.ndarray, out: np.ndarray, min_cosine: float, fidelity: Fidelity, artifact: str, detail=""
) -> Check:
    """Parity that can fail. The cosine rule alone passes a constant output when the source embeds
    different inputs almost alike (untrained weights: pairwise cosine ≥ 0.9998). So: outputs that vary
    far less than the source's fail (constant or collapsed); and unless every output is nearest its own
    input's source embedding, a passing cosine means nothing here — "not run (not meaningful)"."""
    row = parity(name, reference, out, min_cosine, fidelity, artifact, detail)
    if len(reference) < 2:
        return row
    d = discrimination_stats(reference, out)
    data = {**row.data, **d}
    if row.status is Status.FAIL:
        return replace(row, data=data)
    figures = (
        f"the source embeds the inputs within {d['source_distance_min']:.2e} of each other (cosine distance), "
        f"this artifact's largest error is {d['error_max']:.2e}"
    )
    if d["output_spread"] < COLLAPSE_RATIO * d["source_spread"]:
        return replace(
            row,
            status=Status.FAIL,
            detail=f"{row.detail}; the outputs vary {d['source_spread'] / max(d['output_spread'], 1e-30):.0f}× less "
            "than the source's across the inputs: a constant or collapsed output",
            data=data,
        )
    if d["identified"] < len(reference):
        return replace(
            row,
            status=Status.NOT_RUN,
            detail=f"{row.detail}; not meaningful: {d['identified']}/{len(reference)} outputs are nearest their own "
            f"input's source embedding — {figures}, so these inputs cannot tell it from a broken artifact "
            "(untrained weights?)",
            data=data,
        )
    return replace(row, detail=f"{row.detail}; every output nearest its own input ({figures})", data=data)


def not_applicable(name: str, reason: str, artifact: str = "") -> Check:
    return Check(name, Status.NOT_APPLICABLE, Fidelity.NOT_RUN, artifact=artifact, detail=reason)
