"""How long `zoo distill` takes to reproduce each reference student on this machine (goal: < ~10 min).

Run: python benchmarks/bench_distill.py [--students ref_convnext ...] [--threads 2] [--epochs N]
Prints one row per student: seconds, final loss, held-out cosine vs the teacher (min / mean), and
how far the weights are from the shipped checkpoint (0 when bit-for-bit; the shipped students were
distilled with 1 thread each, and a different thread count changes float summation order).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from zoo.distillation import REFERENCE_STUDENTS, REFERENCE_TEACHER, STUDENT_RECIPE, max_weight_diff, student_recipe
from zoo.registry import load_registry
from zoo.training import distill


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--students", nargs="+", default=list(REFERENCE_STUDENTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="default: each student's own recipe (student_recipe)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = load_registry()
    teacher = registry.get(REFERENCE_TEACHER)
    print(
        f"host: {os.cpu_count()} cores, {args.threads} threads; recipe: "
        f"{STUDENT_RECIPE['views_per_image']} views per identity, {STUDENT_RECIPE['negative_views']} per negative"
    )
    print(
        f"{'student':18} {'epochs':>6} {'seconds':>8} {'loss':>8} {'min cos':>8} {'mean cos':>9} {'max |Δw| vs shipped':>20}"
    )
    for name in args.students:
        shipped = registry.get(name)
        recipe = student_recipe(name)
        epochs = args.epochs or recipe["epochs"]
        start = time.perf_counter()
        model, log = distill(
            teacher,
            dataclasses.replace(shipped, checkpoint=None),
            epochs=epochs,
            views_per_image=recipe["views_per_image"],
            negative_views=recipe["negative_views"],
            batch=recipe["batch"],
            lr=recipe["lr"],
            ema=recipe["ema"],
            seed=recipe["seed"],
            show_progress=False,
        )
        seconds = time.perf_counter() - start
        after = log.heldout["after"]
        diff = float("nan")
        if shipped.checkpoint:
            from safetensors.torch import load_file

            found = max_weight_diff(model.state_dict(), load_file(str(shipped.checkpoint.path)))
            diff = float("nan") if found is None else found
        print(
            f"{name:18} {epochs:6d} {seconds:8.1f} {log.losses[-1]:8.4f} {after['min']:8.4f} {after['mean']:9.4f} {diff:20.3g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
