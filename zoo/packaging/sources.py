"""Output directories (`out/<model>/<target>/` from `zoo convert`) as package sources, and the gates
they must pass before anything of theirs goes into a package."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zoo.checkpoints import sha256_file
from zoo.errors import UsageError
from zoo.outputs import file_entry, read_manifest
from zoo.packaging.errors import IntegrityError, PackageRefused
from zoo.registry import ModelSpec, spec_from_manifest


@dataclass(frozen=True)
class SourceDir:
    """One validated output directory."""

    path: Path
    manifest: dict
    report: dict

    @property
    def model(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def verdict(self) -> str:
        return str(self.report.get("verdict", ""))

    @property
    def untrained(self) -> bool:
        return self.manifest.get("weights") == "untrained" or not self.manifest["model"].get("checkpoint")

    @property
    def input_size(self) -> int:
        return int(self.manifest["input_size"])

    @property
    def artifacts(self) -> list[dict]:
        return list(self.manifest["artifacts"])

    def spec(self) -> ModelSpec:
        return spec_from_manifest(self.manifest["model"], self.path)

    def report_sha256(self) -> str:
        return sha256_file(self.path / "report.json")


def load_source(path: Path) -> SourceDir:
    """Read an output directory; its artifacts must still match its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        report = json.loads((path / "report.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} has no report.json; it is not a complete zoo output directory") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}/report.json is not valid JSON: {exc}") from None
    _check_report_is_zoos(path, manifest, report)
    try:
        source = SourceDir(path, manifest, report)
        source.model, source.target, source.artifacts  # noqa: B018  (the fields every source needs)
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{path}/manifest.json is missing {exc}") from None
    bad = []
    for entry in source.artifacts:
        if not (path / entry["path"]).exists():
            bad.append(f"{entry['path']} is missing")
        elif file_entry(path, entry["path"])["sha256"] != entry["sha256"]:
            bad.append(f"{entry['path']} sha256 differs from the manifest")
    if bad:
        raise IntegrityError(
            f"{path}: " + "; ".join(bad),
            hint=f"the output directory changed after it was validated; run `zoo convert` again or `zoo validate {path}`",
        )
    return source


def _check_report_is_zoos(path: Path, manifest: dict, report: dict) -> None:
    """report.json must be the one zoo wrote (its sha256 is in the manifest) and its verdict must be
    what its own rows give: an edited verdict never gets packaged."""
    from zoo.report import Report

    hint = f"run `zoo validate {path}` to rebuild the report from the artifacts"
    recorded = manifest.get("report_sha256")
    if recorded is None:
        raise IntegrityError(f"{path}/manifest.json does not pin report.json (written by an older zoo)", hint=hint)
    if sha256_file(path / "report.json") != recorded:
        raise IntegrityError(f"{path}/report.json differs from the one zoo wrote (sha256 in manifest.json)", hint=hint)
    try:
        verdict = Report.from_dict(report).verdict
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path}/report.json is not a zoo report ({exc})", hint=hint) from None
    if verdict != report.get("verdict"):
        raise IntegrityError(
            f"{path}/report.json says {report.get('verdict')!r} but its checks give {verdict!r}", hint=hint
        )


def gate(source: SourceDir, *, allow_untrained: bool) -> None:
    """Refuse a source whose validation failed or never ran, and untrained weights unless allowed.

    The verdict is report.json's: the latest validation (`zoo validate DIR` rewrites it, not the manifest).
    """
    failed = [
        f"{c.get('artifact') or '—'}: {c.get('name')} = {c.get('value')} (threshold {c.get('threshold') or '—'})"
        for c in source.report.get("checks", [])
        if c.get("status") == "fail"
    ]
    if source.verdict == "fail" or failed:
        shown = "; ".join(failed[:3]) + (f" (+{len(failed) - 3} more)" if len(failed) > 3 else "")
        raise PackageRefused(
            f"{source.path}: validation FAILED ({shown or 'verdict fail'}); zoo packages only artifacts that passed",
            hint=f"fix the conversion and run `zoo convert --model {source.model} --target {source.target}` again",
        )
    if source.verdict == "not validated" or not source.report.get("checks"):
        raise PackageRefused(
            f"{source.path}: was converted with --no-validate; zoo packages only artifacts that passed validation",
            hint=f"run `zoo validate {source.path}` first",
        )
    if not source.verdict.startswith("pass"):
        raise PackageRefused(f"{source.path}: unknown verdict {source.verdict!r} in report.json")
    if source.untrained and not allow_untrained:
        raise UsageError(
            f"{source.model} ({source.path}) has UNTRAINED WEIGHTS (no checkpoint): its embeddings mean nothing",
            hint="register a trained checkpoint, or pass --allow-untrained to package it anyway "
            "(the package manifest then flags it loudly)",
        )


def find_sources(outputs: Path, targets: Sequence[str], models: Sequence[str] = ()) -> dict[str, list[SourceDir]]:
    """{model: [sources in `targets` order]} from `outputs/<model>/<target>/`; every named model needs one."""
    outputs = Path(outputs)
    if not models:
        models = sorted(
            {p.parent.name for t in targets for p in outputs.glob(f"*/{t}") if (p / "manifest.json").is_file()}
        )
        if not models:
            raise UsageError(
                f"no output directories for target(s) {', '.join(targets)} under {outputs}",
                hint=f"run `zoo convert --model M --target {targets[0]} --out {outputs}` first, or pass --outputs",
            )
    found: dict[str, list[SourceDir]] = {}
    for model in models:
        dirs = [outputs / model / t for t in targets if (outputs / model / t / "manifest.json").is_file()]
        if not dirs:
            looked = ", ".join(str(outputs / model / t) for t in targets)
            raise UsageError(
                f"model {model!r} has no output directory for this consumer (looked for {looked})",
                hint=f"run `zoo convert --model {model} --target {targets[0]} --out {outputs}` first",
            )
        found[model] = [load_source(d) for d in dirs]
    return found
