"""Latency of every artifact zoo produces for the CPU-runnable targets, beside torch eager and a plain
torch.onnx.export in a default ONNX Runtime session, all in one run on this machine.

    python benchmarks/bench_targets.py [--models convnext_tiny vit_small efficientnet_b0] [--rounds 3]

Not a timed test: it converts each model for every target (minutes per model on 2 cores), then
times every artifact at batch 1 in alternating rounds (so that load from other processes hits all
alike) and prints one table, plus the goals: zoo's best artifact vs the plain export, int8 vs fp32
on the same runtime (speed, size, cosine vs fp32).

efficientnet_b0 is registered here through a user registry (timm's efficientnet_b0, pooled 1280-d
features, no head). The product's models have no checkpoints, so weights are seeded and untrained:
int8 cosines on them are indicative only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.98}  # per-sample minimum vs source, as in the targets
TARGETS = (
    "android",
    "android-int8",
    "openvino",
    "openvino-fp16",
    "openvino-int8",
    "tflite",
    "tflite-int8",
    "tflite-int8-static",
)
BENCH_REGISTRY = """
[models.efficientnet_b0]
description = "EfficientNet-B0 pooled features (benchmark)"
role = "teacher"
architecture = "timm:efficientnet_b0"
input_size = 224
embedding_dim = 1280
embedding_space = "bench-efficientnet_b0-1280"
"""


@dataclass
class Row:
    model: str
    label: str  # artifact (runtime)
    runtime: str
    precision: str
    size_mb: float | None
    session: object
    cos_source: float | None = None
    cos_fp32: float | None = None  # int8 only: vs the fp32 artifact on the same runtime
    baseline: str = ""  # the fp32 row an int8 row compares with
    times: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return float(np.percentile(self.times, 50))

    @property
    def p90(self) -> float:
        return float(np.percentile(self.times, 90))


class TorchSession:
    batch = None

    def __init__(self, model):
        self.model = model

    def run(self, x):
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


def cos_min(a: np.ndarray, b: np.ndarray) -> float:
    from zoo.validators.metrics import cosine_rows

    return float(cosine_rows(a, b).min())


def file_mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 1e6


def plain_export(model, size: int, workdir: Path):
    """torch.onnx.export with its defaults, opened in an ONNX Runtime session with its defaults."""
    import onnxruntime as ort
    import torch

    path = workdir / "plain.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    class Plain:
        batch = 1

        def run(self, x):
            return session.run(None, {name: x})[0]

    size_mb = file_mb(*workdir.glob("plain.onnx*"))
    return Plain(), size_mb


def artifact_rows(model_name: str, target_name: str, out_dir: Path, manifest: dict) -> list[Row]:
    from zoo.runtimes import get_runtime

    rows = []
    precision = manifest["target"]["precision"]
    for entry in manifest["artifacts"]:
        if not entry["runnable"]:
            continue
        runtime = get_runtime(entry["runtime"])
        if entry["format"] not in runtime.formats:
            continue
        path = out_dir / entry["path"]
        is_int8 = ".int8." in path.name
        if precision == "int8" and not is_int8:
            continue  # the fp32 baseline inside an int8 target is the fp32 target's artifact too
        paths = [path, path.with_suffix(".bin")] if entry["format"] == "openvino" else [path]
        session = runtime.open(path)
        label = f"{target_name}: {path.name}"
        rows.append(Row(model_name, label, runtime.name, "int8" if is_int8 else precision, file_mb(*paths), session))
        for variant_label, variant in getattr(session, "latency_variants", dict)().items():
            short = "default precision" if "default" in variant_label else variant_label
            rows.append(
                Row(model_name, f"{label} ({short})", runtime.name, rows[-1].precision, rows[-1].size_mb, variant)
            )
    return rows


def baseline_label(row: Row) -> str:
    """The fp32 artifact an int8 row is compared with: same runtime, same artifact kind."""
    target = row.label.split(":")[0].removesuffix("-int8")
    name = row.label.split(": ")[1].replace(".int8", "")
    return f"{target}: {name}"


def bench_model(name: str, registry, rounds: int, runs: int, out_root: Path, log, targets=TARGETS) -> list[Row]:
    import torch

    from zoo.models import build_model
    from zoo.pipeline import convert
    from zoo.runtimes import run_in_batches
    from zoo.validators.inputs import parity_inputs
    from zoo.validators.latency import measure

    spec = registry.get(name)
    size = spec.input_size
    model = build_model(spec)
    x, _ = parity_inputs(size, spec.mean, spec.std)
    with torch.no_grad():
        reference = np.concatenate([model(torch.from_numpy(x[i : i + 4])).numpy() for i in range(0, len(x), 4)])
    rows = [Row(name, "torch eager", "torch", "fp32", None, TorchSession(model))]
    with tempfile.TemporaryDirectory() as tmp:
        plain, plain_mb = plain_export(model, size, Path(tmp))
        rows.append(Row(name, "plain torch.onnx.export", "onnxruntime", "fp32", plain_mb, plain))
        conversion = {}
        for target in targets:
            start = time.perf_counter()
            try:
                outcome = convert(name, target, out_root=out_root, registry=registry, validate=False)
            except Exception as exc:  # one broken target must not hide the others' numbers
                import traceback

                log(f"  {name} → {target}: FAILED {type(exc).__name__}: {exc}")
                log(traceback.format_exc())
                continue
            import json

            manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
            conversion[target] = time.perf_counter() - start
            log(f"  {name} → {target}: converted in {conversion[target]:.0f} s")
            rows += artifact_rows(name, target, outcome.out_dir, manifest)
        for row in rows:
            out = run_in_batches(row.session, x)
            row.cos_source = cos_min(reference, out)
            row._out = out
        by_label = {r.label: r for r in rows}
        for row in rows:
            if row.precision == "int8":
                base = by_label.get(baseline_label(row))
                if base is not None:
                    row.baseline = base.label
                    row.cos_fp32 = cos_min(base._out, row._out)
        for r in range(rounds):
            for row in rows:
                row.times += measure(row.session, size, runs=runs, warmup=3)["times_ms"]
            log(f"  {name}: timing round {r + 1}/{rounds} done")
    return rows


def print_table(rows: list[Row], out=sys.stdout) -> None:
    by_label = {(r.model, r.label): r for r in rows}
    header = (
        "model",
        "artifact (target: file [config])",
        "runtime",
        "prec",
        "MB",
        "cos vs torch",
        "cos vs fp32",
        "p50 ms",
        "p90 ms",
        "vs plain",
        "int8 speedup",
    )
    table = [header]
    for r in rows:
        plain = by_label[(r.model, "plain torch.onnx.export")]
        base = by_label.get((r.model, r.baseline))
        table.append(
            (
                r.model,
                r.label,
                r.runtime,
                r.precision,
                f"{r.size_mb:.1f}" if r.size_mb is not None else "—",
                f"{r.cos_source:.5f}",
                f"{r.cos_fp32:.5f}" if r.cos_fp32 is not None else "",
                f"{r.p50:.2f}",
                f"{r.p90:.2f}",
                f"{plain.p50 / r.p50:.2f}×",
                f"{base.p50 / r.p50:.2f}× ({base.size_mb / r.size_mb:.1f}× smaller)" if base else "",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |", file=out)
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=out)


def print_goals(rows: list[Row], out=sys.stdout) -> None:
    print("\nGoals", file=out)
    models = sorted({r.model for r in rows}, key=[r.model for r in rows].index)
    for model in models:
        mine = [r for r in rows if r.model == model]
        plain = next(r for r in mine if r.label == "plain torch.onnx.export")
        # an artifact that fails its precision's parity rule is no candidate, however fast
        zoo_rows = [
            r
            for r in mine
            if r.runtime != "torch" and r is not plain and (r.cos_source or 0) >= MIN_COSINE[r.precision]
        ]
        best = min(zoo_rows, key=lambda r: r.p50)
        verdict = "met" if best.p50 <= plain.p50 else "MISSED"
        print(
            f"- {model}: best zoo artifact {best.label} ({best.runtime}) p50 {best.p50:.2f} ms vs plain export "
            f"{plain.p50:.2f} ms → {plain.p50 / best.p50:.2f}× ({verdict})",
            file=out,
        )
        by_label = {r.label: r for r in mine}
        for r in mine:
            if r.precision != "int8" or not r.baseline:
                continue
            base = by_label[r.baseline]
            speedup = base.p50 / r.p50
            goal = 1.2 if model == "convnext_tiny" else 1.0
            ok = speedup >= goal and (r.cos_fp32 or 0) >= 0.98
            print(
                f"  int8 {r.label}: {speedup:.2f}× vs fp32 (goal ≥ {goal}×), size {r.size_mb / base.size_mb:.2f} of fp32, "
                f"cosine vs fp32 {r.cos_fp32:.4f} (goal ≥ 0.98) → {'met' if ok else 'MISSED'}",
                file=out,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["convnext_tiny", "vit_small", "efficientnet_b0"])
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per round per artifact")
    parser.add_argument("--out", type=Path, default=None, help="where the artifacts go (default: a temp dir)")
    args = parser.parse_args()

    from zoo.registry import load_registry
    from zoo.validators.latency import host_description

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        reg_file = Path(tmp) / "bench.toml"
        reg_file.write_text(BENCH_REGISTRY)
        registry = load_registry([reg_file])
        out_root = args.out or Path(tmp) / "out"
        rows: list[Row] = []
        for model in args.models:
            log(f"{model}: converting for {', '.join(args.targets)}")
            rows += bench_model(model, registry, args.rounds, args.runs, out_root, log, tuple(args.targets))
    print(f"host: {host_description()}; batch 1; {args.rounds} alternating rounds × {args.runs} runs after warm-up")
    print(f"cpu flags: {cpu_flags()}")
    print_table(rows)
    print_goals(rows)
    return 0


def cpu_flags() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    have = set(flags.split(":", 1)[1].split())
    return ", ".join(f"{f}{'' if f in have else ' (no)'}" for f in wanted)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
