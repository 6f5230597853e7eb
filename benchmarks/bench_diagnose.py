"""What `zoo diagnose` costs and finds on the coverage registry's worst int8 cells (measured on this host).

    python benchmarks/bench_diagnose.py                         # the three cells below, with --suggest
    python benchmarks/bench_diagnose.py --no-suggest            # the per-layer tables only
    python benchmarks/bench_diagnose.py --cells cov_deit:hailo8l

For each cell: convert it (its report already carries the per-layer section), then `zoo diagnose
--suggest` in a fresh process. Printed per cell: wall seconds of each, parity vs source, where the
divergence starts, and the measured fix (the passing try with the fewest modules in float) with its
parity and int8 speedup. Figures are this machine's (its CPU is printed first): compare them only
within one run. Each run has its own `$ZOO_CACHE`.
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

from bench_cache import cpu  # the host line every benchmark prints (benchmarks/ is on the path when run)

CELLS = ("cov_mobilevitv2:android-int8", "cov_mobilenetv4:openvino-int8", "cov_deit:hailo8l")


def zoo(args: list[str], env: dict) -> tuple[float, int]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "zoo", *args, "-q"], env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), metavar="MODEL:TARGET")
    parser.add_argument("--no-suggest", dest="suggest", action="store_false")
    args = parser.parse_args()
    print(f"host: {cpu()}")
    with tempfile.TemporaryDirectory(prefix="zoo-bench-diagnose-") as tmp:
        env = {**os.environ, "ZOO_CACHE": str(Path(tmp) / "cache")}
        for cell in args.cells:
            model, target = cell.split(":")
            out = Path(tmp) / "out"
            seconds, code = zoo(["convert", "--model", model, "--target", target, "--out", str(out)], env)
            folder = out / model / target
            if not (folder / "report.json").is_file():
                print(f"{cell}: conversion failed (exit {code}), nothing to diagnose")
                continue
            flags = ["--suggest"] if args.suggest else []
            diag_seconds, diag_code = zoo(["diagnose", str(folder), *flags], env)
            if diag_code != 0:
                print(f"{cell}: zoo diagnose exit {diag_code}")
                continue
            body = json.loads((folder / "diagnosis.json").read_text())
            for d in body["diagnoses"]:
                tries = [s for s in d["suggestions"] if s.get("after")]
                passing = [s for s in tries if s["after"]["passed"]]
                fix = min(passing, key=lambda s: len(s["modules"])) if passing else None
                print(
                    f"{cell} {d['artifact']} ({d['fidelity']}): convert {seconds:.1f} s, diagnose "
                    f"{diag_seconds:.1f} s; parity {d['final_cosine_min']:.4f}"
                    + (" (fused graph diverges)" if d.get("fused_divergence") else "")
                    + f"; starts at {d['divergence_starts_at']}; {len(tries)} re-quantizations"
                )
                if fix:
                    speed = fix["after"]["speedup"]
                    print(
                        f"  measured fix: {fix['knob']} → parity {fix['after']['parity']:.4f}"
                        + (f", int8 speedup {speed:.2f}×" if isinstance(speed, float) else "")
                    )
                elif args.suggest:
                    print("  no try reached the rule")


if __name__ == "__main__":
    main()
