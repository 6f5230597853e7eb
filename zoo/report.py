"""The report of one model × target: every check with value, threshold, fidelity and verdict."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from zoo.fidelity import Check, Status


@dataclass(frozen=True)
class Report:
    model: str
    target: str
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = ()
    artifacts: tuple[str, ...] = ()
    validated: bool = True
    info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # wall seconds per step ("torch_to_onnx", "validation", "total")
    # per-layer divergence of the artifacts whose parity vs source failed (zoo.diagnose.Diagnosis.to_dict)
    diagnoses: tuple[dict, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Status}
        for check in self.checks:
            counts[check.status.value] += 1
        return counts

    @property
    def failed(self) -> bool:
        return any(c.status is Status.FAIL for c in self.checks)

    @property
    def verdict(self) -> str:
        """fail if any check failed; 'not validated' when validation was skipped; checks not run stay visible."""
        if self.failed:
            return "fail"
        if not self.validated:
            return "not validated"
        not_run = self.counts[Status.NOT_RUN.value]
        return f"pass ({not_run} check(s) not run)" if not_run else "pass"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "target": self.target,
            "verdict": self.verdict,
            "counts": self.counts,
            "warnings": list(self.warnings),
            "artifacts": list(self.artifacts),
            "info": self.info,
            "timings": self.timings,
            "checks": [c.to_dict() for c in self.checks],
            "diagnosis": list(self.diagnoses),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(
            model=d["model"],
            target=d["target"],
            checks=tuple(Check.from_dict(c) for c in d["checks"]),
            warnings=tuple(d.get("warnings", ())),
            artifacts=tuple(d.get("artifacts", ())),
            validated=d.get("verdict") != "not validated",
            info=d.get("info", {}),
            timings=d.get("timings", {}),
            diagnoses=tuple(d.get("diagnosis", ())),
        )

    @classmethod
    def read(cls, folder) -> Report:
        """The report.json of an output folder."""
        from pathlib import Path

        return cls.from_dict(json.loads((Path(folder) / "report.json").read_text()))

    @property
    def wall_time(self) -> str:
        """'12.3 s (torch_to_onnx 2.1 s, validation 9.8 s)', or '' when nothing was timed."""
        if "total" not in self.timings:
            return ""
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items() if k != "total")
        return f"{self.timings['total']:.1f} s" + (f" ({parts})" if parts else "")

    def to_markdown(self) -> str:
        lines = [f"# zoo report: {self.model} → {self.target}", ""]
        lines.append(f"**Verdict: {self.verdict.upper()}**  ")
        c = self.counts
        lines.append(
            f"{c['pass']} passed, {c['fail']} failed, {c['not run']} not run, {c['info']} info, {c['n/a']} not applicable"
        )
        lines.append("")
        for warning in self.warnings:
            lines.append(f"> ⚠ {warning}")
        if self.warnings:
            lines.append("")
        for key, value in self.info.items():
            lines.append(f"- {key}: {value}")
        if self.wall_time:
            lines.append(f"- wall time: {self.wall_time}")
        if self.info:
            lines.append("")
        lines.append("| artifact | check | value | threshold | fidelity | result | detail |")
        lines.append("|---|---|---|---|---|---|---|")
        for ch in self.checks:
            value = "—" if ch.value is None else (f"{ch.value:.7g}" if isinstance(ch.value, float) else str(ch.value))
            lines.append(
                f"| {ch.artifact or '—'} | {ch.name} | {value} | {ch.threshold or '—'} | {ch.fidelity.value} | "
                f"{ch.status.value.upper()} | {ch.detail.replace('|', '/')} |"
            )
        if self.diagnoses:
            from zoo.diagnose import Diagnosis

            lines += ["", "## Where parity breaks", ""]
            for d in self.diagnoses:
                lines.append(Diagnosis.from_dict(d).to_markdown())
        return "\n".join(lines) + "\n"

    def to_terminal(self) -> str:
        """A compact table for the console."""
        rows = [("artifact", "check", "value", "threshold", "fidelity", "result")]
        for ch in self.checks:
            value = "—" if ch.value is None else (f"{ch.value:.7g}" if isinstance(ch.value, float) else str(ch.value))
            rows.append(
                (ch.artifact or "—", ch.name, value, ch.threshold or "—", ch.fidelity.value, ch.status.value.upper())
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        text.insert(1, "  ".join("-" * w for w in widths))
        for ch in self.checks:  # a failure names what failed, not only "0/1"
            if ch.status is Status.FAIL and ch.detail:
                text.append(f"FAIL {ch.artifact or '—'}: {ch.name}: {ch.detail}")
        for warning in self.warnings:
            text.append(f"WARNING: {warning}")
        if self.info.get("cache"):
            text.append(f"cache: {self.info['cache']}")
        if self.wall_time:
            text.append(f"wall time: {self.wall_time}")
        c = self.counts
        text.append(
            f"{self.model} → {self.target}: {self.verdict.upper()} — {c['pass']} passed, {c['fail']} failed, "
            f"{c['not run']} not run"
        )
        return "\n".join(text)
