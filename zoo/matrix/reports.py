"""The matrix as JSON, Markdown (a CI job summary or a PR comment) and JUnit XML.

JUnit: one <testsuite> per model × target, one <testcase> per check (artifact: check name).
A failed check is a <failure> whose message carries the value, the threshold and the fidelity, and
whose text carries the figures (Check.data); a check not run is <skipped> with the reason, never a
pass; a not-applicable check is <skipped> too; an info row passes with its value in <system-out>.
A conversion error is one <testcase> with an <error>; a missing cell one <skipped> test case.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from zoo.fidelity import Check, Status
from zoo.matrix import Cell, Matrix

ICONS = {"pass": "✅", "fail": "❌", "error": "💥", "missing": "⏭️"}
_DATA_LIST_LIMIT = 32


def to_json(matrix: Matrix) -> str:
    return json.dumps(matrix.to_dict(), indent=2) + "\n"


def _value(check: Check) -> str:
    if check.value is None:
        return "—"
    return f"{check.value:.7g}" if isinstance(check.value, float) else str(check.value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(matrix: Matrix) -> str:
    t = matrix.totals
    c, k = t["cells"], t["checks"]
    lines = [
        f"## zoo matrix: {len(matrix.models)} model(s) × {len(matrix.targets)} target(s)",
        "",
        f"{ICONS['pass']} {c['pass']} passed · {ICONS['fail']} {c['fail']} failed · {ICONS['error']} {c['error']} "
        f"conversion error(s) · {ICONS['missing']} {c['missing']} not run — checks: {k['pass']} passed, "
        f"{k['fail']} failed, {k['not run']} not run, {k['info']} info, {k['n/a']} n/a",
        "",
        "| model | " + " | ".join(matrix.targets) + " |",
        "|---|" + "---|" * len(matrix.targets),
    ]
    for model in matrix.models:
        row = []
        for target in matrix.targets:
            cell = matrix.cell(model, target)
            row.append(f"{ICONS[cell.state]} {cell.label}" if cell else "—")
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    lines.append("")

    failures = [
        (cell, ch) for cell in matrix.cells if cell.report for ch in cell.report.checks if ch.status is Status.FAIL
    ]
    errors = [cell for cell in matrix.cells if cell.state == "error"]
    if failures or errors:
        lines += ["### Failures", ""]
        for cell in errors:
            lines.append(f"- **{cell.model} → {cell.target}**: conversion error: {_md(cell.detail)}")
        for cell, ch in failures:
            lines.append(
                f"- **{cell.model} → {cell.target}** · `{ch.artifact or '—'}` · {_md(ch.name)}: **{_value(ch)}** "
                f"(threshold {_md(ch.threshold or '—')}, {ch.fidelity.value})"
                + (f" — {_md(ch.detail)}" if ch.detail else "")
            )
        lines.append("")

    not_run = [
        (cell, ch) for cell in matrix.cells if cell.report for ch in cell.report.checks if ch.status is Status.NOT_RUN
    ]
    missing = [cell for cell in matrix.cells if cell.state == "missing"]
    if not_run or missing:
        lines += [f"<details><summary>Not run ({len(not_run)} check(s), {len(missing)} cell(s))</summary>", ""]
        for cell in missing:
            lines.append(f"- {cell.model} → {cell.target}: {_md(cell.detail)}")
        for cell, ch in not_run:
            lines.append(f"- {cell.model} → {cell.target} · `{ch.artifact or '—'}` · {_md(ch.name)}: {_md(ch.detail)}")
        lines += ["", "</details>", ""]

    for cell in matrix.cells:
        if not cell.report:
            continue
        lines += [
            f"<details><summary>{ICONS[cell.state]} {cell.model} → {cell.target}: {cell.label}</summary>",
            "",
            "| artifact | check | value | threshold | fidelity | result |",
            "|---|---|---|---|---|---|",
        ]
        for ch in cell.report.checks:
            lines.append(
                f"| {_md(ch.artifact or '—')} | {_md(ch.name)} | {_md(_value(ch))} | {_md(ch.threshold or '—')} | "
                f"{ch.fidelity.value} | {ch.status.value.upper()} |"
            )
        for warning in cell.report.warnings:
            lines.append(f"\n> ⚠ {_md(warning)}")
        lines += ["", "</details>", ""]
    return "\n".join(lines)


def _compact(data: dict) -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, list) and len(value) > _DATA_LIST_LIMIT:
            value = value[:_DATA_LIST_LIMIT] + [f"… {len(value) - _DATA_LIST_LIMIT} more"]
        out[key] = value
    return out


def _testcase(suite: ET.Element, cell: Cell, ch: Check) -> str:
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"zoo.{cell.model}.{cell.target}",
        name=f"{ch.artifact or '—'}: {ch.name}",
        time="0",
    )
    summary = f"value {_value(ch)}; threshold {ch.threshold or '—'}; fidelity {ch.fidelity.value}"
    if ch.status is Status.FAIL:
        failure = ET.SubElement(case, "failure", message=summary, type="zoo.check.failed")
        failure.text = "\n".join(filter(None, [ch.detail, json.dumps(_compact(ch.data), indent=1) if ch.data else ""]))
        return "failure"
    if ch.status is Status.NOT_RUN:
        ET.SubElement(case, "skipped", message=f"not run: {ch.detail or 'nothing could check it here'}")
        return "skipped"
    if ch.status is Status.NOT_APPLICABLE:
        ET.SubElement(case, "skipped", message=f"not applicable: {ch.detail}")
        return "skipped"
    out = ET.SubElement(case, "system-out")
    out.text = (
        summary
        + (f"; {ch.detail}" if ch.detail else "")
        + ("; reported, not gated" if ch.status is Status.INFO else "")
    )
    return "pass"


def to_junit(matrix: Matrix) -> str:
    root = ET.Element("testsuites", name="zoo matrix")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for cell in matrix.cells:
        suite = ET.SubElement(root, "testsuite", name=f"{cell.model} × {cell.target}")
        props = ET.SubElement(suite, "properties")
        for key, value in (("state", cell.state), ("label", cell.label), ("output", cell.out_dir)):
            ET.SubElement(props, "property", name=key, value=str(value))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if cell.state == "error":
            case = ET.SubElement(
                suite, "testcase", classname=f"zoo.{cell.model}.{cell.target}", name="conversion", time="0"
            )
            ET.SubElement(case, "error", message=cell.detail[:500], type="zoo.conversion.failed").text = cell.detail
            counts["tests"] += 1
            counts["errors"] += 1
        elif cell.report is None or not cell.report.checks:
            case = ET.SubElement(
                suite, "testcase", classname=f"zoo.{cell.model}.{cell.target}", name="validation", time="0"
            )
            ET.SubElement(case, "skipped", message=f"not run: {cell.detail}")
            counts["tests"] += 1
            counts["skipped"] += 1
        else:
            for ch in cell.report.checks:
                outcome = _testcase(suite, cell, ch)
                counts["tests"] += 1
                if outcome == "failure":
                    counts["failures"] += 1
                elif outcome == "skipped":
                    counts["skipped"] += 1
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", "0")
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
