"""Latency on the validation runtime: batch 1, warm-up, percentiles, gated only where it means something."""

from __future__ import annotations

import platform
import time

import numpy as np

from zoo.fidelity import Check, Fidelity, Status
from zoo.targets import TargetSpec


def measure(session, input_size: int, runs: int = 30, warmup: int = 5) -> dict:
    """Wall-clock ms of `runs` batch-1 calls after `warmup` calls; p50/p90/p99 and mean."""
    runs = max(20, runs)
    x = np.random.default_rng(1).standard_normal((1, 3, input_size, input_size), dtype=np.float32)
    for _ in range(warmup):
        session.run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        times.append((time.perf_counter() - start) * 1000.0)
    t = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "runs": runs,
        "warmup": warmup,
        "batch": 1,
        "host": host_description(),
        "times_ms": [round(v, 3) for v in times],
    }


def host_description() -> str:
    import os

    return f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores"


def latency_checks(stats: dict, target: TargetSpec, fidelity: Fidelity, artifact: str) -> list[Check]:
    """The measured row, plus the budget row: gated when the figure comes from where the budget applies."""
    pct = target.latency_percentile
    value = float(np.percentile(stats["times_ms"], pct))
    where = "device" if fidelity is Fidelity.DEVICE else "host"
    figures = f"p50 {stats['p50_ms']:.1f} / p90 {stats['p90_ms']:.1f} / p99 {stats['p99_ms']:.1f} ms"
    rows = []
    budget = target.latency_budget_ms
    if budget is None:
        rows.append(
            Check(
                f"latency p{pct} ({where}, batch 1)",
                Status.INFO,
                fidelity,
                round(value, 2),
                "no budget",
                artifact,
                f"{figures} over {stats['runs']} runs on {stats['host']}",
                stats,
            )
        )
        return rows
    gated = target.latency_on == where
    threshold = f"p{pct} < {budget:g} ms on {target.latency_on}"
    if gated:
        rows.append(
            Check(
                f"latency p{pct} ({where}, batch 1)",
                Status.PASS if value < budget else Status.FAIL,
                fidelity,
                round(value, 2),
                threshold,
                artifact,
                f"{figures} over {stats['runs']} runs on {stats['host']}",
                stats,
            )
        )
    else:
        rows.append(
            Check(
                f"latency p{pct} ({where}, batch 1)",
                Status.INFO,
                fidelity,
                round(value, 2),
                "not gated: host ≠ device",
                artifact,
                f"{figures} over {stats['runs']} runs on {stats['host']}",
                stats,
            )
        )
        rows.append(
            Check(
                f"latency budget on {target.device or 'the device'}",
                Status.NOT_RUN,
                Fidelity.NOT_RUN,
                None,
                threshold,
                artifact,
                "no device runner here; the host figure does not prove the device budget",
            )
        )
    return rows
