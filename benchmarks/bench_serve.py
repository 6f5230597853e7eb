"""Requests per second and latency of `zoo serve` on this machine (measured): Immich's face request,
batch 1 (one photo per request), at a few client concurrencies.

    python benchmarks/bench_serve.py PACKAGE_DIR [--requests 200] [--concurrency 1 2 4] [--photo-px 320]

Starts `zoo serve PACKAGE_DIR` on loopback, sends the exact multipart request Immich's server sends
(one seeded card scene per request), and prints requests/s, p50 and p99 latency per concurrency.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def body_for(image: np.ndarray, px: int) -> tuple[bytes, str]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).resize((px, px), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    entries = {
        "facial-recognition": {
            "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.5}},
            "recognition": {"modelName": "buffalo_l"},
        }
    }
    boundary = "----zoo" + uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="entries"\r\n\r\n{json.dumps(entries)}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + buf.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def main() -> None:
    from zoo.detection.scenes import CHECK_SEED, scene

    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--photo-px", type=int, default=320, help="the JPEG's side (a phone photo is ~4000)")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "zoo", "serve", str(args.package), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        bodies = [body_for(scene(CHECK_SEED + 1000 + k).image, args.photo_px) for k in range(20)]

        def one(k: int) -> float:
            body, kind = bodies[k % len(bodies)]
            t = time.perf_counter()
            request = urllib.request.Request(url + "/predict", data=body, method="POST", headers={"Content-Type": kind})
            with urllib.request.urlopen(request, timeout=60) as r:
                r.read()
            return time.perf_counter() - t

        for k in range(10):
            one(k)  # warm-up
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        print(
            f"zoo serve on {os.cpu_count()} cores ({cpu}); {args.photo_px}×{args.photo_px} JPEG scenes with 0–3 "
            "cards, one photo per request (measured)"
        )
        for c in args.concurrency:
            t = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                lat = np.asarray(list(pool.map(one, range(args.requests))))
            wall = time.perf_counter() - t
            print(
                f"concurrency {c}: {args.requests / wall:6.1f} requests/s, p50 {np.percentile(lat, 50) * 1000:6.1f} ms, "
                f"p99 {np.percentile(lat, 99) * 1000:6.1f} ms"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
