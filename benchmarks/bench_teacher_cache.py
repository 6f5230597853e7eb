"""What the teacher-embedding cache saves over a matrix: the teacher's time on the evaluation set for
N targets, with the cache off (computed every time, as before) and on (computed once, then read).

Run: python benchmarks/bench_teacher_cache.py [--teacher ref_teacher] [--targets 10] [--eval PATH]
Prints the seconds per target and in all, both ways (measured, this host; wall time of
zoo.pipeline.teacher_embeddings, the step every conversion of a student runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from zoo.evalset import load_evaluation_set, reference_evaluation_set
from zoo.pipeline import teacher_embeddings
from zoo.registry import load_registry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="ref_teacher")
    parser.add_argument("--targets", type=int, default=10)
    parser.add_argument("--eval", dest="eval_set", default=None)
    args = parser.parse_args()
    teacher = load_registry().get(args.teacher)
    evaluation = load_evaluation_set(args.eval_set) if args.eval_set else reference_evaluation_set()
    print(f"teacher {teacher.name}; {evaluation.describe()}; {os.cpu_count()} CPUs")
    os.environ["ZOO_CACHE"] = "off"
    teacher_embeddings(teacher, evaluation)  # warm-up (imports, first model build): counted in neither row
    results = {}
    for label, cache in (("cache off", "off"), ("cache on", tempfile.mkdtemp(prefix="zoo-bench-cache-"))):
        os.environ["ZOO_CACHE"] = cache
        times = []
        for _ in range(args.targets):
            start = time.perf_counter()
            outcome = teacher_embeddings(teacher, evaluation)
            times.append(time.perf_counter() - start)
        results[label] = times
        print(
            f"{label:9}: {sum(times):6.2f} s for {args.targets} targets "
            f"(first {times[0]:.2f} s, then {sum(times[1:]) / max(1, len(times) - 1):.3f} s each; last: {outcome.status})"
        )
    saved = sum(results["cache off"]) / max(1e-9, sum(results["cache on"]))
    print(f"the cache makes the teacher's share of a {args.targets}-target matrix {saved:.1f}× faster")


if __name__ == "__main__":
    main()
