"""The matrix as one self-contained HTML page: inline CSS and inline SVG, no script, no external file.

Plots:
- the pass/fail matrix (model × target);
- per-sample cosine distributions (every check with `per_sample_cosine` in its data), on a log scale
  of 1 − cosine so that 0.9999 and 0.9999999 are told apart, with each check's threshold;
- latency percentiles (p50 / p90 / p99 from the latency checks' data) against the target's budget,
  marked as gated only where the figure comes from where the budget applies.
"""

from __future__ import annotations

import math
import re
from html import escape

from zoo.fidelity import Status
from zoo.matrix import Cell, Matrix

COLORS = {"pass": "#2e7d32", "fail": "#c62828", "error": "#6a1b9a", "missing": "#9e9e9e"}
STATUS_COLORS = {"pass": "#2e7d32", "fail": "#c62828", "not run": "#9e9e9e", "info": "#1565c0", "n/a": "#bdbdbd"}
CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#212121;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
.pass{color:#2e7d32;font-weight:600}.fail{color:#c62828;font-weight:600}.notrun{color:#757575}
.info{color:#1565c0}.na{color:#9e9e9e}
.note{color:#616161;font-size:13px}
svg text{font-size:12px;font-family:inherit}
details{margin:6px 0}
"""
LOG_MIN = -9.0  # 1 − cosine below 1e-9 is drawn at 1e-9
LOG_MAX = 0.31  # 1 − cosine = 2 (cosine −1)


def _status_class(status: str) -> str:
    return {"pass": "pass", "fail": "fail", "not run": "notrun", "info": "info", "n/a": "na"}.get(status, "")


def _threshold_cosine(threshold: str) -> float | None:
    match = re.search(r"cosine\s*[≥>]=?\s*([0-9.]+)", threshold or "")
    return float(match.group(1)) if match else None


def matrix_svg(matrix: Matrix) -> str:
    label_w, cell_w, cell_h, head_h = 170, 180, 34, 30
    width = label_w + cell_w * len(matrix.targets) + 2
    height = head_h + cell_h * len(matrix.models) + 2
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append("<title>pass/fail matrix: models × targets</title>")
    for j, target in enumerate(matrix.targets):
        x = label_w + j * cell_w + cell_w / 2
        parts.append(
            f'<text x="{x:.0f}" y="{head_h - 10}" text-anchor="middle" font-weight="600">{escape(target)}</text>'
        )
    for i, model in enumerate(matrix.models):
        y = head_h + i * cell_h
        parts.append(
            f'<text x="{label_w - 8}" y="{y + cell_h / 2 + 4:.0f}" text-anchor="end" font-weight="600">{escape(model)}</text>'
        )
        for j, target in enumerate(matrix.targets):
            cell = matrix.cell(model, target)
            x = label_w + j * cell_w
            state = cell.state if cell else "missing"
            label = cell.label if cell else "—"
            parts.append(
                f'<rect class="cell {state}" x="{x + 1}" y="{y + 1}" width="{cell_w - 2}" height="{cell_h - 2}" '
                f'rx="4" fill="{COLORS[state]}"><title>{escape(f"{model} → {target}: {label}")}</title></rect>'
            )
            parts.append(
                f'<text x="{x + cell_w / 2:.0f}" y="{y + cell_h / 2 + 4:.0f}" text-anchor="middle" fill="#fff">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _cosine_rows(matrix: Matrix) -> list[tuple[str, list[float], float | None, str]]:
    rows = []
    for cell in matrix.cells:
        if not cell.report:
            continue
        for ch in cell.report.checks:
            values = ch.data.get("per_sample_cosine") if isinstance(ch.data, dict) else None
            if values:
                label = f"{cell.model} → {cell.target} · {ch.artifact or '—'} · {ch.name}"
                rows.append((label, [float(v) for v in values], _threshold_cosine(ch.threshold), ch.status.value))
    return rows


def _log_gap(cos: float) -> float:
    gap = 1.0 - cos
    return LOG_MAX if gap >= 2 else max(LOG_MIN, math.log10(gap) if gap > 0 else LOG_MIN)


def cosine_svg(matrix: Matrix) -> str:
    rows = _cosine_rows(matrix)
    if not rows:
        return '<p class="note">No check recorded per-sample cosines.</p>'
    label_w, plot_w, row_h, top, bottom = 420, 560, 24, 10, 40
    width, height = label_w + plot_w + 20, top + row_h * len(rows) + bottom

    def x_of(log_gap: float) -> float:
        return label_w + (log_gap - LOG_MIN) / (LOG_MAX - LOG_MIN) * plot_w

    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append("<title>per-sample cosine vs reference, as 1 − cosine on a log scale</title>")
    axis_y = top + row_h * len(rows)
    for decade in range(int(LOG_MIN), 1):
        x = x_of(decade)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">1e{decade}</text>')
    parts.append(
        f'<text x="{label_w + plot_w / 2:.0f}" y="{axis_y + 32}" text-anchor="middle">'
        "1 − cosine (log scale; left is closer to the reference; ≤1e-9 drawn at 1e-9)</text>"
    )
    for i, (label, values, threshold, status) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end" fill="{STATUS_COLORS.get(status, "#212121")}">'
            f"{escape(label[:70])}</text>"
        )
        parts.append(f'<line x1="{label_w}" y1="{y:.1f}" x2="{label_w + plot_w}" y2="{y:.1f}" stroke="#f5f5f5"/>')
        if threshold is not None:
            tx = x_of(_log_gap(threshold))
            parts.append(
                f'<line class="threshold" x1="{tx:.1f}" y1="{y - row_h / 2 + 2:.1f}" x2="{tx:.1f}" '
                f'y2="{y + row_h / 2 - 2:.1f}" stroke="#c62828" stroke-width="2" stroke-dasharray="3,2">'
                f"<title>threshold: min cosine ≥ {threshold}</title></line>"
            )
        for k, cos in enumerate(values):
            jitter = ((k * 37) % 11 - 5) * 1.3
            bad = threshold is not None and cos < threshold
            parts.append(
                f'<circle class="sample" cx="{x_of(_log_gap(cos)):.1f}" cy="{y + jitter:.1f}" r="3" '
                f'fill="{"#c62828" if bad else "#1565c0"}" fill-opacity="0.7"><title>{cos:.7f}</title></circle>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _latency_rows(matrix: Matrix) -> list[tuple[str, dict, Cell, str, str]]:
    rows = []
    for cell in matrix.cells:
        if not cell.report:
            continue
        for ch in cell.report.checks:
            data = ch.data if isinstance(ch.data, dict) else {}
            if all(k in data for k in ("p50_ms", "p90_ms", "p99_ms")):
                rows.append(
                    (
                        f"{cell.model} → {cell.target} · {ch.artifact or '—'} · {ch.name}",
                        data,
                        cell,
                        ch.status.value,
                        ch.fidelity.value,
                    )
                )
    return rows


def latency_svg(matrix: Matrix) -> str:
    rows = _latency_rows(matrix)
    if not rows:
        return '<p class="note">No latency was measured.</p>'
    label_w, plot_w, row_h, top, bottom = 420, 560, 26, 10, 56
    width, height = label_w + plot_w + 20, top + row_h * len(rows) + bottom
    biggest = max(max(d["p99_ms"] for _, d, _, _, _ in rows), *(c.budget_ms or 0 for _, _, c, _, _ in rows))
    scale_max = _nice(biggest * 1.1)

    def x_of(ms: float) -> float:
        return label_w + min(ms, scale_max) / scale_max * plot_w

    axis_y = top + row_h * len(rows)
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    parts.append("<title>latency percentiles (batch 1) against the target's budget</title>")
    for k in range(6):
        ms = scale_max * k / 5
        x = x_of(ms)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{ms:g} ms</text>')
    parts.append(
        f'<text x="{label_w + plot_w / 2:.0f}" y="{axis_y + 30}" text-anchor="middle">● p50  ◆ p90  ○ p99 (batch 1)</text>'
        f'<text x="{label_w + plot_w / 2:.0f}" y="{axis_y + 46}" text-anchor="middle">red dashed: a budget gated here; '
        "grey dashed: a device budget, which a host figure does not gate</text>"
    )
    for i, (label, d, cell, _status, fidelity) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        parts.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{escape(label[:70])}</text>')
        x50, x90, x99 = x_of(d["p50_ms"]), x_of(d["p90_ms"]), x_of(d["p99_ms"])
        parts.append(
            f'<line x1="{x50:.1f}" y1="{y:.1f}" x2="{x99:.1f}" y2="{y:.1f}" stroke="#1565c0" stroke-width="2"/>'
        )
        parts.append(
            f'<circle class="p50" cx="{x50:.1f}" cy="{y:.1f}" r="4" fill="#1565c0"><title>p50 {d["p50_ms"]:.2f} ms</title></circle>'
        )
        parts.append(
            f'<rect class="p90" x="{x90 - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#0d47a1" '
            f'transform="rotate(45 {x90:.1f} {y:.1f})"><title>p90 {d["p90_ms"]:.2f} ms</title></rect>'
        )
        parts.append(
            f'<circle class="p99" cx="{x99:.1f}" cy="{y:.1f}" r="4" fill="#fff" stroke="#1565c0" stroke-width="2">'
            f"<title>p99 {d['p99_ms']:.2f} ms</title></circle>"
        )
        if cell.budget_ms:
            where = "device" if fidelity == "device" else "host"
            gated = cell.budget_on == where
            bx = x_of(cell.budget_ms)
            color = "#c62828" if gated else "#9e9e9e"
            note = f"budget p{cell.budget_percentile} < {cell.budget_ms:g} ms on {cell.budget_on}" + (
                "" if gated else f" (not gated by a {where} figure)"
            )
            parts.append(
                f'<line class="budget" x1="{bx:.1f}" y1="{y - row_h / 2 + 2:.1f}" x2="{bx:.1f}" y2="{y + row_h / 2 - 2:.1f}" '
                f'stroke="{color}" stroke-width="2" stroke-dasharray="4,3"><title>{escape(note)}</title></line>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _nice(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _value(ch) -> str:
    if ch.value is None:
        return "—"
    return f"{ch.value:.7g}" if isinstance(ch.value, float) else str(ch.value)


def _cell_table(cell: Cell) -> str:
    if not cell.report:
        return f'<p class="note">{escape(cell.detail)}</p>'
    rows = [
        "<table><tr><th>artifact</th><th>check</th><th>value</th><th>threshold</th><th>fidelity</th><th>result</th>"
        "<th>detail</th></tr>"
    ]
    for ch in cell.report.checks:
        cls = _status_class(ch.status.value)
        rows.append(
            f"<tr><td>{escape(ch.artifact or '—')}</td><td>{escape(ch.name)}</td><td>{escape(_value(ch))}</td>"
            f"<td>{escape(ch.threshold or '—')}</td><td>{escape(ch.fidelity.value)}</td>"
            f'<td class="{cls}">{escape(ch.status.value.upper())}</td><td>{escape(ch.detail)}</td></tr>'
        )
    rows.append("</table>")
    warnings = "".join(f'<p class="fail">⚠ {escape(w)}</p>' for w in cell.report.warnings)
    return warnings + "".join(rows) + _diagnosis_plot(cell)


def _diagnosis_plot(cell: Cell) -> str:
    """Where the cell's failed parity breaks: relative error by layer (zoo.diagnose), when it has one."""
    if not cell.report.diagnoses:
        return ""
    from zoo.diagnose import Diagnosis
    from zoo.diagnose.run import error_svg

    diagnoses = [Diagnosis.from_dict(d) for d in cell.report.diagnoses]
    said = "".join(f"<p>{escape(d.summary())}</p>" for d in diagnoses)
    return f"<h3>Where parity breaks</h3>{said}{error_svg(diagnoses)}"


def to_html(matrix: Matrix) -> str:
    t = matrix.totals
    c, k = t["cells"], t["checks"]
    summary = (
        f"{c['pass']} passed, {c['fail']} failed, {c['error']} conversion error(s), {c['missing']} not run — "
        f"checks: {k['pass']} passed, {k['fail']} failed, {k[Status.NOT_RUN.value]} not run, {k['info']} info"
    )
    details = "".join(
        f"<details{' open' if cell.state in ('fail', 'error') else ''}><summary>"
        f'<span class="{_status_class("pass" if cell.state == "pass" else "fail" if cell.state in ("fail", "error") else "not run")}">'
        f"{escape(cell.model)} → {escape(cell.target)}: {escape(cell.label)}</span></summary>{_cell_table(cell)}</details>"
        for cell in matrix.cells
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>zoo matrix</title><style>{CSS}</style></head><body>"
        f"<h1>zoo matrix: {len(matrix.models)} model(s) × {len(matrix.targets)} target(s)</h1>"
        f"<p>{escape(summary)}</p>"
        '<p class="note">A check that could not run here is "not run", never a pass. Host latency never '
        "passes a budget stated for a device.</p>"
        f"<h2>Pass / fail</h2>{matrix_svg(matrix)}"
        f"<h2>Per-sample cosine vs reference</h2>{cosine_svg(matrix)}"
        f"<h2>Latency percentiles vs budget</h2>{latency_svg(matrix)}"
        f"<h2>Every check</h2>{details}"
        "</body></html>\n"
    )
