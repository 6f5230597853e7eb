"""The `zoo` command: wiring only. Each command is a typed function that calls the library.

Exit codes: 0 ok, 1 a check failed, 2 usage error, 3 conversion failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from zoo import __version__
from zoo.errors import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, ZooError
from zoo.progress import Progress


def cmd_list(*, what: str, registry: list[Path]) -> int:
    if what == "models":
        from zoo.registry import load_registry

        rows = [("name", "role", "teacher", "architecture", "dim", "size", "weights")]
        for spec in load_registry(registry):
            rows.append(
                (
                    spec.name,
                    spec.role,
                    spec.teacher or "—",
                    spec.architecture,
                    str(spec.embedding_dim),
                    str(spec.input_size),
                    "trained" if spec.trained else "UNTRAINED",
                )
            )
    else:
        from zoo.converters import missing_steps
        from zoo.targets import load_targets

        rows = [("name", "precision", "chain", "runtime", "budget", "status")]
        for t in load_targets().values():
            missing = missing_steps(t)
            budget = (
                f"p{t.latency_percentile} < {t.latency_budget_ms:g} ms ({t.latency_on})" if t.latency_budget_ms else "—"
            )
            status = "ready" if not missing else "not built yet: " + ", ".join(missing)
            rows.append((t.name, t.precision, " → ".join(t.chain), t.runtime, budget, status))
    _print_table(rows)
    return EXIT_OK


def cmd_show(*, model: str, registry: list[Path]) -> int:
    from zoo.registry import load_registry

    reg = load_registry(registry)
    spec = reg.get(model)
    for key, value in spec.to_dict().items():
        print(f"{key:18} {value}")
    print(f"{'weights':18} {spec.weights_label}")
    students = [s.name for s in reg if s.teacher == spec.name]
    if students:
        print(f"{'students':18} {', '.join(students)}")
    return EXIT_OK


def cmd_convert(
    *,
    model: str,
    target: str,
    out: Path,
    validate: bool,
    latency_runs: int,
    calibration: Path | None,
    calibration_count: int | None,
    registry: list[Path],
    quiet: bool,
) -> int:
    from zoo.pipeline import convert
    from zoo.registry import load_registry

    outcome = convert(
        model,
        target,
        out_root=out,
        registry=load_registry(registry),
        validate=validate,
        latency_runs=latency_runs,
        calibration_dir=calibration,
        calibration_count=calibration_count,
        progress=Progress(enabled=not quiet),
    )
    print(outcome.report.to_terminal())
    print(f"artifacts, manifest and report: {outcome.out_dir}")
    return EXIT_CHECK_FAILED if outcome.report.failed else EXIT_OK


def cmd_validate(*, directory: Path, latency_runs: int, quiet: bool) -> int:
    from zoo.pipeline import validate_dir

    outcome = validate_dir(directory, latency_runs=latency_runs, progress=Progress(enabled=not quiet))
    print(outcome.report.to_terminal())
    return EXIT_CHECK_FAILED if outcome.report.failed else EXIT_OK


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help="extra model registry file or folder (repeatable; also $ZOO_REGISTRY)",
    )
    common.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    parser = argparse.ArgumentParser(prog="zoo", description=__doc__.splitlines()[0], parents=[common])
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", parents=[common], help="list registered models or targets")
    p.add_argument("what", choices=["models", "targets"])

    p = sub.add_parser("show", parents=[common], help="show one model's spec")
    p.add_argument("model")

    p = sub.add_parser("convert", parents=[common], help="convert a model for a target, validate, report")
    p.add_argument("--model", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--out", type=Path, default=Path("out"), help="output root (default: out/)")
    p.add_argument("--no-validate", dest="validate", action="store_false", help="convert only")
    p.add_argument("--latency-runs", type=int, default=30, help="timed runs after warm-up (at least 20)")
    p.add_argument(
        "--calibration", type=Path, metavar="DIR", help="images for int8 calibration (default: reference photos)"
    )
    p.add_argument("--calibration-count", type=int, metavar="N", help="how many calibration images to use")

    p = sub.add_parser("validate", parents=[common], help="re-validate an output directory")
    p.add_argument("directory", type=Path)
    p.add_argument("--latency-runs", type=int, default=30)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            return cmd_list(what=args.what, registry=args.registry)
        if args.command == "show":
            return cmd_show(model=args.model, registry=args.registry)
        if args.command == "convert":
            return cmd_convert(
                model=args.model,
                target=args.target,
                out=args.out,
                validate=args.validate,
                latency_runs=args.latency_runs,
                calibration=args.calibration,
                calibration_count=args.calibration_count,
                registry=args.registry,
                quiet=args.quiet,
            )
        if args.command == "validate":
            return cmd_validate(directory=args.directory, latency_runs=args.latency_runs, quiet=args.quiet)
    except ZooError as exc:
        if args.traceback or os.environ.get("ZOO_TRACEBACK"):
            raise
        print(f"zoo: error: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zoo: interrupted; nothing was written under the final output name", file=sys.stderr)
        return 130
    return EXIT_USAGE
