"""Where the matrix's conversions run: one after another, in processes side by side, or on Ray.

Every executor runs the same function, `run_cell`, on a `CellJob` and returns a `Cell` — so results
are the same cell for cell whichever ran them. A cell is isolated: a crash, even a native one that
kills its process, is that cell's error and never stops the others. Cells side by side get
`cores // jobs` threads each (torch, ONNX Runtime, OpenVINO, LiteRT: `$ZOO_THREADS`), so they do not
oversubscribe the machine.

- `local`: in this process (jobs = 1).
- `process`: `--jobs N` spawned worker processes on this machine, each taking cell after cell.
- `ray`: Ray tasks on a cluster (`--address`), or on a local one started for the run. Ray schedules
  them; every node needs zoo installed and must see `--outputs` and the registries at the same paths
  (a shared filesystem), as any Ray job reading and writing files does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from multiprocessing import get_context
from multiprocessing.connection import wait
from pathlib import Path

from zoo.runtimes import THREADS_ENV

EXECUTORS = ("local", "process", "ray")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class CellJob:
    model: str
    target: str
    outputs: str
    registry_paths: tuple[str, ...]
    latency_runs: int
    eval_path: str | None
    threads: int  # 0: the runtimes' defaults (all cores)
    env: tuple[tuple[str, str], ...] = ()  # ZOO_* settings of the caller (cache folder, …)


def threads_per_cell(jobs: int) -> int:
    return 0 if jobs <= 1 else max(1, (os.cpu_count() or 1) // jobs)


@contextlib.contextmanager
def thread_budget_of(threads: int):
    """`$ZOO_THREADS` as a cell with `threads` threads sees it, for the block only (a cache lookup made
    on the worker's behalf); torch and the runtimes' pools are left as they are."""
    before = os.environ.get(THREADS_ENV)
    if threads > 0:
        os.environ[THREADS_ENV] = str(threads)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = before


def limit_threads(threads: int) -> None:
    """Give this process `threads` threads for torch and every runtime (before they start their pools)."""
    if threads <= 0:
        return
    os.environ[THREADS_ENV] = str(threads)
    for var in _THREAD_VARS:
        os.environ[var] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def run_cell(job: CellJob):
    """One cell, converted and validated (zoo.matrix._convert_cell), in whatever process runs it."""
    from zoo.matrix import _convert_cell
    from zoo.progress import QUIET
    from zoo.registry import load_registry

    os.environ.update(dict(job.env))
    limit_threads(job.threads)
    start = time.perf_counter()
    try:
        registry = load_registry([Path(p) for p in job.registry_paths])
        cell = _convert_cell(
            job.model,
            job.target,
            Path(job.outputs),
            registry,
            job.latency_runs,
            QUIET,
            Path(job.eval_path) if job.eval_path else None,
        )
    except Exception as exc:  # _convert_cell already turns failures into cells; this is a last guard
        from zoo.matrix import Cell

        cell = Cell(job.model, job.target, "error", detail=f"unexpected {type(exc).__name__}: {exc}")
    return replace(cell, seconds=round(time.perf_counter() - start, 3))


def _crashed(job: CellJob, why: str):
    from zoo.matrix import Cell

    return Cell(job.model, job.target, "error", detail=f"the cell's conversion crashed: {why}")


def run_local(jobs: list[CellJob], workers: int, address: str | None) -> Iterable:
    for job in jobs:
        yield job, run_cell(job)


def cell_log(job: CellJob) -> Path:
    """Where a worker's own stdout/stderr go (toolchain chatter, a native crash's last words): a
    hidden folder of --outputs, which the matrix never reads as a model."""
    return Path(job.outputs) / ".logs" / f"{job.model}--{job.target}.log"


def _worker(conn) -> None:
    """A worker process: cells one after another until told to stop (None)."""
    while True:
        job = conn.recv()
        if job is None:
            return
        log = cell_log(job)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:  # the terminal keeps zoo's own progress lines only
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        conn.send(run_cell(job))


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _died(process, job: CellJob):
    process.join()
    code = process.exitcode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    said = _last_line(cell_log(job))
    return _crashed(
        job,
        f"its process died ({how}) before reporting: a native crash or out of memory"
        + (f"; its last output: {said}" if said else "")
        + f" (whole output: {cell_log(job)})",
    )


def run_processes(jobs: list[CellJob], workers: int, address: str | None) -> Iterable:
    """Cells in `workers` spawned worker processes side by side. A worker takes one cell after
    another (spawning and importing the toolchains costs seconds a cell would pay again); a cell
    that kills its worker (a native crash, out of memory) is that cell's error, named with its
    exit signal, and a fresh worker takes the next cell."""
    context = get_context("spawn")
    waiting = list(jobs)
    running: dict = {}  # connection → (process, job it is converting)

    def start(job: CellJob) -> None:
        here, there = context.Pipe()
        process = context.Process(target=_worker, args=(there,), daemon=True)
        process.start()
        there.close()
        here.send(job)
        running[here] = (process, job)

    try:
        while waiting and len(running) < workers:
            start(waiting.pop(0))
        while running:
            ready = set(wait([*running, *(p.sentinel for p, _ in running.values())]))
            for conn, (process, job) in list(running.items()):
                if conn not in ready and process.sentinel not in ready:
                    continue
                del running[conn]
                try:
                    cell = conn.recv()
                except (EOFError, OSError):
                    conn.close()
                    yield job, _died(process, job)
                    if waiting:
                        start(waiting.pop(0))
                    continue
                if waiting:
                    following = waiting.pop(0)
                    conn.send(following)
                    running[conn] = (process, following)
                else:
                    conn.send(None)
                    process.join()
                    conn.close()
                yield job, cell
    finally:
        for conn, (process, _) in running.items():  # the caller stopped early: no orphans
            process.kill()
            conn.close()


def run_ray(jobs: list[CellJob], workers: int, address: str | None) -> Iterable:
    from zoo.errors import require

    ray = require("ray", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        options = {"address": address} if address else {"num_cpus": os.cpu_count() or 1}
        ray.init(
            **options,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )  # each task applies the caller's ZOO_* settings itself (CellJob.env)
    try:
        cpus = max(1, jobs[0].threads) if jobs else 1
        remote = ray.remote(num_cpus=cpus, max_retries=0)(run_cell)
        refs = {remote.remote(job): job for job in jobs}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(done[0])
            try:
                yield job, ray.get(done[0])
            except Exception as exc:  # the task's process died, or Ray lost it
                yield job, _crashed(job, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        if started_here:
            ray.shutdown()


RUNNERS: dict[str, Callable] = {"local": run_local, "process": run_processes, "ray": run_ray}
