"""Cold vs warm: what zoo's cache and `zoo matrix --jobs` save, in wall time (measured on this host).

    python benchmarks/bench_cache.py                       # everything below
    python benchmarks/bench_cache.py --only convert        # convnext_tiny → hailo8l, cold then warm
    python benchmarks/bench_cache.py --only matrix --targets server android openvino

1. `zoo convert --model convnext_tiny --target hailo8l`: cold (an empty cache) and warm (nothing
   changed). Goals: cold < 60 s on 2 cores; warm < 2 s and < 10 % of cold.
2. `zoo matrix --tier reference --convert` over the targets that run here: cold with `--jobs 1`, cold
   with `--jobs 2` (each from an empty cache; the ratio is the speed-up), then warm. Goal: warm < 10 s.
3. The same matrix on the Ray executor (a local cluster): the cells' states must match `--jobs 2`.

Every run is a fresh `zoo` process with its own `$ZOO_CACHE` and output folder; figures are wall
seconds on this machine (its CPU is printed first — compare figures only within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    simd = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    simd += " VNNI" if "avx512_vnni" in flags else ""  # int8 kernels differ with it
    return f"{name}, {os.cpu_count()} cores, {simd}"


def zoo(args: list[str], cache: Path, cwd: Path) -> tuple[float, int, str]:
    env = dict(os.environ, ZOO_CACHE=str(cache))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "zoo", *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr


def bench_convert(work: Path) -> None:
    cache = work / "cache-convert"
    args = ["convert", "--model", "convnext_tiny", "--target", "hailo8l", "--out", str(work / "out-convert"), "-q"]
    cold, rc_cold, out = zoo(args, cache, work)
    warm, rc_warm, out_warm = zoo(args, cache, work)
    cached = "cache: cached (from" in out_warm
    print(f"convnext_tiny → hailo8l  cold {cold:6.1f} s (exit {rc_cold}; goal < 60 s)  [measured]")
    print(
        f"convnext_tiny → hailo8l  warm {warm:6.2f} s (exit {rc_warm}, {'from the cache' if cached else 'NOT cached'}); "
        f"{100 * warm / cold:.1f} % of cold (goals < 2 s, < 10 %)  [measured]"
    )
    if rc_cold not in (0, 1):
        print(out[-2000:])


def _matrix(work: Path, name: str, cache: Path, targets: list[str], extra: list[str]) -> tuple[float, dict]:
    report = work / f"reports-{name}"
    args = ["matrix", "--tier", "reference", "--convert", "--outputs", str(work / f"out-{name}")]
    args += ["--report-dir", str(report), "--fail-on", "never", "-q", *extra]
    if targets:
        args += ["--targets", *targets]
    seconds, rc, out = zoo(args, cache, work)
    if rc != 0:
        print(out[-2000:])
        return seconds, {}
    return seconds, json.loads((report / "matrix.json").read_text())


def _states(matrix: dict) -> dict:
    return {(c["model"], c["target"]): c["state"] for c in matrix.get("cells", [])}


def bench_matrix(work: Path, targets: list[str], ray: bool) -> None:
    one, m1 = _matrix(work, "jobs1", work / "cache-jobs1", targets, ["--jobs", "1"])
    two, m2 = _matrix(work, "jobs2", work / "cache-jobs2", targets, ["--jobs", "2"])
    warm, m3 = _matrix(work, "warm", work / "cache-jobs2", targets, ["--jobs", "2"])
    cells = len(m1.get("cells", []))
    print(f"reference matrix, {cells} cells: cold --jobs 1 {one:6.1f} s  [measured]")
    print(
        f"reference matrix, {cells} cells: cold --jobs 2 {two:6.1f} s — {one / two:.2f}× faster than --jobs 1  [measured]"
    )
    cached = sum(bool(c.get("cached")) for c in m3.get("cells", []))
    print(
        f"reference matrix, {cells} cells: warm --jobs 2 {warm:6.1f} s, {cached}/{cells} from the cache (goal < 10 s)  [measured]"
    )
    same = _states(m1) == _states(m2)
    print(f"--jobs 1 and --jobs 2 cell states {'match' if same else 'DIFFER'}")
    slow = sorted(m1.get("cells", []), key=lambda c: -(c.get("seconds") or 0))[:5]
    print("slowest cells (--jobs 1): " + ", ".join(f"{c['model']} → {c['target']} {c['seconds']:.1f} s" for c in slow))
    if ray:
        seconds, mr = _matrix(work, "ray", work / "cache-ray", targets, ["--jobs", "2", "--executor", "ray"])
        same = _states(mr) == _states(m2)
        print(
            f"reference matrix on Ray (local cluster) cold {seconds:6.1f} s; states {'match' if same else 'DIFFER'} --jobs 2  [measured]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["convert", "matrix"])
    parser.add_argument("--targets", nargs="+", default=[], help="matrix: these targets (default: every ready one)")
    parser.add_argument("--no-ray", action="store_true", help="matrix: skip the Ray run")
    args = parser.parse_args()
    print(f"host: {cpu()}")
    with tempfile.TemporaryDirectory(prefix="zoo-bench-cache-") as tmp:
        work = Path(tmp)
        if args.only in (None, "convert"):
            bench_convert(work)
        if args.only in (None, "matrix"):
            bench_matrix(work, args.targets, ray=not args.no_ray)


if __name__ == "__main__":
    main()
