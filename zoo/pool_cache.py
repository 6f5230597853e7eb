"""Students distilled each in a process of its own, from pools rendered once.

This process renders each epoch's pool (in render workers, as in lockstep), has the teacher embed it
and writes both to a temporary folder; every student trains in its own process from those files,
with its own random state, so its weights are the bytes it would have trained alone. A pool is
deleted once every student that needs it is past it, and rendering waits while it is AHEAD pools in
front of the slowest student: the folder holds at most AHEAD + 1 pools (about 23 MB each for the
reference task's 1840 photographs at 64 px).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from zoo.outputs import write_text_atomic

AHEAD = 32
POLL_SECONDS = 0.2
STOP = "stop"  # written when the rendering process fails: the students stop waiting for pools


def _pool_path(folder: Path, epoch: int) -> Path:
    return folder / f"pool-{epoch:05d}.npz"


def _progress_path(folder: Path, index: int) -> Path:
    return folder / f"student-{index}.progress"


def _write_pool(path: Path, views: np.ndarray, target: np.ndarray) -> None:
    """Written beside `path`, then renamed onto it: a student never reads half a pool."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, views=views, target=target)
    os.replace(tmp, path)


def _epochs_done(folder: Path, index: int) -> int:
    try:
        return int(_progress_path(folder, index).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _train_one(run, heldout, folder: str, index: int, parent: int, threads: int):
    """In a student's process: train `run` on the folder's pools; returns (state dict as arrays, log)."""
    import torch

    torch.set_num_threads(threads)  # the parent's thread count: the same float sums, the same bytes
    folder = Path(folder)
    run.start(heldout)
    start = time.perf_counter()
    for epoch in range(run.epochs):
        path = _pool_path(folder, epoch)
        while not path.exists():
            if os.getppid() != parent or (folder / STOP).exists():
                raise RuntimeError("the process rendering the training pools stopped")
            time.sleep(POLL_SECONDS)
        with np.load(path) as pool:
            views, target = pool["views"], torch.from_numpy(pool["target"])
        run.train_epoch(views, target)
        write_text_atomic(_progress_path(folder, index), str(epoch + 1))
    model, log = run.finish(heldout, time.perf_counter() - start)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}, log


def distill_in_processes(teacher, teacher_spec, heldout, runs: list, jobs: list[tuple], workers, show_progress: bool):
    """training.distill_students for `runs` (training._StudentRun), each in a process of its own, all at
    once: rendering waits for the slowest, so a student left queued behind the others would stall them
    all. `heldout` (training.HeldOut) goes to every student as computed here. Returns [(student model,
    log)] in the order of `runs`."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from zoo.models import build_model
    from zoo.training import _progress_bar, embedded_pools

    names = ", ".join(run.spec.name for run in runs)
    bar = _progress_bar(sum(run.epochs for run in runs), f"distill {names} ← {teacher_spec.name}", show_progress)
    with tempfile.TemporaryDirectory(prefix="zoo-pools-") as tmp:
        folder = Path(tmp)
        # spawn, not fork: this process holds torch's thread pools, which a forked child must not inherit
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(runs), mp_context=context) as executor:
            futures = [
                executor.submit(_train_one, run, heldout, str(folder), i, os.getpid(), torch.get_num_threads())
                for i, run in enumerate(runs)
            ]

            deleted = 0

            def slowest() -> int:
                """Epochs done by the slowest student still training (len(jobs) once all are done); pools
                before it are deleted, and a failed student's error is raised here."""
                nonlocal deleted
                for future in futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()
                counts = [_epochs_done(folder, i) for i in range(len(runs))]
                bar.update(sum(counts) - bar.n)
                behind = min((n for n, run in zip(counts, runs) if n < run.epochs), default=len(jobs))
                for epoch in range(deleted, behind):  # no student still needs these
                    _pool_path(folder, epoch).unlink(missing_ok=True)
                deleted = max(deleted, behind)
                return behind

            try:
                for epoch, (views, target) in enumerate(embedded_pools(jobs, teacher, teacher_spec, workers)):
                    while epoch - slowest() >= AHEAD:
                        time.sleep(POLL_SECONDS)
                    _write_pool(_pool_path(folder, epoch), views, target.numpy())
                while slowest() < len(jobs) or not all(future.done() for future in futures):
                    time.sleep(POLL_SECONDS)
            except BaseException:
                (folder / STOP).touch()  # else leaving this block would wait for students waiting for pools
                raise
            results = [future.result() for future in futures]
    bar.close()
    trained = []
    for run, (state, log) in zip(runs, results):
        model = build_model(run.spec, load_checkpoint=False)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        model.eval()
        trained.append((model, log))
    return trained
