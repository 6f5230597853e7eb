"""Peak memory of `zoo convert --model convnext_base --target ios` (384 px; goal: < 6 GB).

    python benchmarks/bench_coreml_memory.py [--model convnext_base] [--target ios] [--no-validate]

Runs the conversion as a child process (the real CLI, validation included unless --no-validate)
and reports the child's peak resident set size from resource.getrusage(RUSAGE_CHILDREN).ru_maxrss
(the largest peak among waited-for children: the zoo process itself, which spawns none), plus a
/proc sampling of the whole process tree every 0.2 s as a cross-check. Takes several minutes on 2
cores: the validation executes the 90-GFLOP program 16 times in numpy (emulated Core ML).
Exit status 0 when the peak is under the goal and the conversion succeeded, else 1.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_GB = 6.0


def tree_rss_bytes(pid: int) -> int:
    """RSS of pid and its descendants, from /proc (0 where /proc is missing)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="convnext_base")
    parser.add_argument("--target", default="ios")
    parser.add_argument("--no-validate", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "zoo", "convert", "--model", args.model, "--target", args.target, "--out", out]
        cmd += ["--no-validate"] if args.no_validate else []
        log = Path(out) / "convert.log"
        start = time.perf_counter()
        with open(log, "w") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
            sampled = 0
            while proc.poll() is None:
                sampled = max(sampled, tree_rss_bytes(proc.pid))
                time.sleep(0.2)
        seconds = time.perf_counter() - start
        # ru_maxrss is in kilobytes on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        text = log.read_text()
    verdict = [line for line in text.splitlines() if " → " in line and ("PASS" in line or "FAIL" in line)]
    print(f"command: zoo convert --model {args.model} --target {args.target}" + (" --no-validate" * args.no_validate))
    print(f"exit status: {proc.returncode}; wall time: {seconds:.0f} s; host: {os.cpu_count()} cores")
    print(f"report: {verdict[-1] if verdict else '(no verdict line; see the log below)'}")
    print(f"peak RSS (getrusage RUSAGE_CHILDREN ru_maxrss): {peak / 1e9:.2f} GB")
    print(f"peak RSS (/proc sampling, process tree, every 0.2 s): {sampled / 1e9:.2f} GB")
    ok = proc.returncode == 0 and peak < GOAL_GB * 1e9
    print(f"goal: < {GOAL_GB:g} GB → {'MET' if ok else 'NOT MET'}")
    if proc.returncode != 0:
        print(text[-3000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
