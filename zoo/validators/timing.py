"""Timings beyond the batch-1 latency row: other configurations of the same artifact, and throughput.

Both are optional hooks of a runtime session (zoo.runtimes.SessionBase declares them with defaults):

- `session.latency_variants()` → {label: session}: the same artifact in another runtime configuration,
  timed like the main row (batch 1, warm-up, p50/p90/p99); e.g. OpenVINO at its default inference
  precision, beside the f32-hinted session that parity is judged on. Reported, never gated.
- throughput at a larger batch: a session with a dynamic batch runs the batch directly; a session
  with `with_batch(n)` (→ a session, or None when the artifact cannot take it) is resized; an artifact
  with a static batch of 1 and no resize gets a not-applicable row saying so.

Only sessions whose numbers are measured (or from the device) get a throughput row: timing an emulator
at batch 8 costs minutes and says nothing about the device.
"""

from __future__ import annotations

import time

import numpy as np

from zoo.fidelity import Check, Fidelity, Status
from zoo.targets import TargetSpec
from zoo.validators import latency

THROUGHPUT_BATCH = 8
THROUGHPUT_MIN_SECONDS = 1.0  # keep timing a batch until this much time has passed (and 3 batches)


def extra_timing_checks(
    session, target: TargetSpec, fidelity: Fidelity, artifact: str, input_size: int, runs: int
) -> list[Check]:
    rows: list[Check] = []
    for label, variant in session.latency_variants().items():
        stats = latency.measure(variant, input_size, runs=runs)
        pct = target.latency_percentile
        value = float(np.percentile(stats["times_ms"], pct))
        rows.append(
            Check(
                f"latency, {label} (host, batch 1)",
                Status.INFO,
                fidelity,
                round(value, 2),
                f"p{pct}; reported, not gated",
                artifact,
                f"p50 {stats['p50_ms']:.1f} / p90 {stats['p90_ms']:.1f} / p99 {stats['p99_ms']:.1f} ms "
                f"over {stats['runs']} runs on {stats['host']}",
                stats,
            )
        )
    if fidelity in (Fidelity.MEASURED, Fidelity.DEVICE):
        rows.append(throughput_check(session, fidelity, artifact, input_size))
    return rows


def throughput_check(session, fidelity: Fidelity, artifact: str, input_size: int, batch: int = THROUGHPUT_BATCH):
    name = f"throughput (batch {batch})"
    runner = None
    if session.batch is None:
        runner = session
    elif session.batch == batch:
        runner = session
    else:
        runner = session.with_batch(batch)
    if runner is None:
        return Check(
            name,
            Status.NOT_APPLICABLE,
            Fidelity.NOT_RUN,
            artifact=artifact,
            detail=f"the artifact has a static batch of {session.batch} and its runtime cannot resize it",
        )
    stats = measure_throughput(runner, input_size, batch)
    return Check(
        name,
        Status.INFO,
        fidelity,
        round(stats["images_per_s"], 1),
        "images/s; reported, not gated",
        artifact,
        f"{stats['batches']} batches of {batch} in {stats['seconds']:.2f} s "
        f"({stats['ms_per_image']:.2f} ms per image) on {stats['host']}",
        stats,
    )


def measure_throughput(session, input_size: int, batch: int = THROUGHPUT_BATCH, warmup: int = 1) -> dict:
    x = np.random.default_rng(2).standard_normal((batch, 3, input_size, input_size), dtype=np.float32)
    for _ in range(warmup):
        session.run(x)
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < THROUGHPUT_MIN_SECONDS:
        session.run(x)
        count += 1
    seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "batches": count,
        "seconds": seconds,
        "images_per_s": batch * count / seconds,
        "ms_per_image": seconds * 1000.0 / (batch * count),
        "host": latency.host_description(),
    }


def _timed(session, input_size: int, what: str, runtime: str) -> float:
    """p50 of one timing round; a freshly built artifact its own runtime cannot run is a conversion failure,
    said in one line (this runs before validation, so it must not surface as a bare traceback)."""
    from zoo.errors import ConversionError

    try:
        return latency.measure(session, input_size, runs=20, warmup=3)["p50_ms"]
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise ConversionError(
            f"{what} does not run on {runtime}: {type(exc).__name__}: {message}",
            hint="the artifact was written but its own runtime refuses it (try another int8 scheme or target); "
            "run with --traceback for details",
        ) from exc


def speedup_check(runtime: str, baseline, quantized, input_size: int, artifact: str, rounds: int = 3) -> Check:
    """int8 vs fp32 on the same runtime, batch 1: p50 of each, timed in alternating rounds so that
    load from other processes hits both alike; the lowest p50 of each is compared."""
    base, quant = [], []
    for _ in range(rounds):
        base.append(_timed(baseline, input_size, f"the fp32 baseline of {artifact}", runtime))
        quant.append(_timed(quantized, input_size, artifact, runtime))
    b, q = min(base), min(quant)
    return Check(
        f"int8 speedup vs fp32 ({runtime}, batch 1 p50)",
        Status.INFO,
        Fidelity.MEASURED,
        round(b / q, 3),
        "reported, not gated",
        artifact,
        f"fp32 {b:.2f} ms, int8 {q:.2f} ms (best p50 of {rounds} alternating rounds of 20 runs) on "
        f"{latency.host_description()}",
        {"fp32_p50_ms": b, "int8_p50_ms": q, "fp32_rounds": base, "int8_rounds": quant},
    )
