"""`zoo matrix` and its reports: JSON, Markdown, JUnit XML (counts, failures with numbers, not run as
skipped) and a self-contained HTML page with inline SVG plots; `--fail-on`."""

import json
import re
import xml.etree.ElementTree as ET

import pytest
from packaging_helpers import converted_outputs, copy_output, edit_json

from zoo.cli import main
from zoo.fidelity import Status
from zoo.matrix import Cell, Matrix, collect, write_reports
from zoo.matrix.html import to_html
from zoo.matrix.reports import to_junit, to_markdown

FAILING_COSINES = [0.999, 0.93, 0.99999, 0.9999999]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """tiny_vit → android (real), and tiny_convnext → android made to fail one parity check (a copy
    of the real report with one check turned to a failure, as a real regression would show)."""
    real = converted_outputs(tmp_path_factory)
    root = tmp_path_factory.mktemp("matrix-outputs")
    copy_output(real / "tiny_vit/android", root / "tiny_vit/android")
    bad = copy_output(real / "tiny_vit/android", root / "tiny_convnext/android")

    def fail(r):
        r["model"], r["verdict"] = "tiny_convnext", "fail"
        check = next(
            c for c in r["checks"] if c["name"].startswith("parity vs source") and c["artifact"] == "model.ort"
        )
        check.update(status="fail", value=0.93)
        check["data"].update(per_sample_cosine=FAILING_COSINES, cosine_min=0.93, samples=len(FAILING_COSINES))

    edit_json(bad / "report.json", fail)
    return root


@pytest.fixture(scope="module")
def matrix(outputs):
    return collect(models=["tiny_vit", "tiny_convnext"], targets=["android", "server"], outputs=outputs)


def _all_checks(matrix):
    return [ch for cell in matrix.cells if cell.report for ch in cell.report.checks]


def test_collect_cells_and_totals(matrix):
    assert [(c.model, c.target, c.state) for c in matrix.cells] == [
        ("tiny_vit", "android", "pass"),
        ("tiny_vit", "server", "missing"),
        ("tiny_convnext", "android", "fail"),
        ("tiny_convnext", "server", "missing"),
    ]
    t = matrix.totals
    assert t["cells"] == {"pass": 1, "fail": 1, "error": 0, "missing": 2}
    assert t["checks"]["fail"] == 1
    assert t["checks"]["not run"] == sum(ch.status is Status.NOT_RUN for ch in _all_checks(matrix)) > 0
    cell = matrix.cell("tiny_vit", "android")
    assert (cell.budget_ms, cell.budget_percentile, cell.budget_on) == (100, 90, "device")
    assert "zoo convert --model tiny_vit --target server" in matrix.cell("tiny_vit", "server").detail


def test_fail_on(matrix, outputs):
    assert matrix.should_fail("fail") and matrix.should_fail("not-run") and not matrix.should_fail("never")
    passing = collect(models=["tiny_vit"], targets=["android"], outputs=outputs)
    assert not passing.should_fail("fail")
    assert passing.should_fail("not-run")  # the device latency budget cannot be checked here


def test_junit_counts_and_failure_numbers(matrix):
    root = ET.fromstring(to_junit(matrix))
    checks = _all_checks(matrix)
    missing = sum(c.state == "missing" for c in matrix.cells)
    cases = root.findall(".//testcase")
    assert int(root.get("tests")) == len(cases) == len(checks) + missing
    assert int(root.get("failures")) == len(root.findall(".//failure")) == 1
    assert int(root.get("errors")) == 0
    skipped = sum(ch.status in (Status.NOT_RUN, Status.NOT_APPLICABLE) for ch in checks) + missing
    assert int(root.get("skipped")) == len(root.findall(".//skipped")) == skipped
    assert [s.get("name") for s in root.findall("testsuite")] == [
        "tiny_vit × android",
        "tiny_vit × server",
        "tiny_convnext × android",
        "tiny_convnext × server",
    ]
    for suite in root.findall("testsuite"):
        assert int(suite.get("tests")) == len(suite.findall("testcase"))
    (failure,) = root.findall(".//failure")
    case = next(c for c in cases if c.find("failure") is not None)
    assert case.get("classname") == "zoo.tiny_convnext.android"
    assert case.get("name") == "model.ort: parity vs source (torch fp32)"
    assert "value 0.93" in failure.get("message") and "min cosine ≥ 0.9999" in failure.get("message")
    assert "0.93" in failure.text and "per_sample_cosine" in failure.text
    not_run = [c for c in cases if (s := c.find("skipped")) is not None and s.get("message").startswith("not run:")]
    assert len(not_run) == sum(ch.status is Status.NOT_RUN for ch in checks) + missing
    budget = [c for c in not_run if "latency budget" in c.get("name")]
    assert budget and all("device" in c.find("skipped").get("message") for c in budget)


def test_junit_conversion_error_is_an_error():
    matrix = Matrix(("m",), ("t",), (Cell("m", "t", "error", detail="ConversionError: boom"),))
    root = ET.fromstring(to_junit(matrix))
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    assert root.find(".//error").get("message") == "ConversionError: boom"
    assert matrix.should_fail("fail")


def test_markdown_summary(matrix):
    md = to_markdown(matrix)
    assert "| model | android | server |" in md
    assert "| tiny_vit | ✅ PASS (2 not run) | ⏭️ NOT RUN |" in md
    assert "| tiny_convnext | ❌ FAIL (1 check(s)) | ⏭️ NOT RUN |" in md
    assert (
        "**tiny_convnext → android** · `model.ort` · parity vs source (torch fp32): **0.93** (threshold min cosine ≥ 0.9999"
        in md
    )
    assert "\\|" in md  # pipes inside cells are escaped, so the table keeps its columns


def test_html_is_self_contained_with_plots(matrix):
    page = to_html(matrix)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"<script|<link|<iframe|<img|@import|url\(", page, re.I)
    assert page.count("<svg") == 3
    per_sample = sum(len(ch.data.get("per_sample_cosine", [])) for ch in _all_checks(matrix))
    assert page.count('class="sample"') == per_sample > 0
    assert page.count('class="p99"') == sum("p99_ms" in ch.data for ch in _all_checks(matrix)) > 0
    assert page.count('class="budget"') == page.count('class="p99"')  # android: 100 ms device budget
    assert page.count('class="cell ') == 4 and page.count('class="cell fail"') == 1
    # the failing samples are drawn red, right of the threshold
    assert page.count('fill="#c62828" fill-opacity') == sum(c < 0.9999 for c in FAILING_COSINES)


def test_cli_matrix_writes_reports_and_exit_codes(outputs, tmp_path):
    argv = ["matrix", "--outputs", str(outputs), "--models", "tiny_vit", "--targets", "android", "-q"]
    assert main([*argv, "--report-dir", str(tmp_path / "a"), "--fail-on", "fail"]) == 0
    assert main([*argv, "--report-dir", str(tmp_path / "b"), "--fail-on", "not-run"]) == 1
    both = ["matrix", "--outputs", str(outputs), "--report-dir", str(tmp_path / "c"), "-q"]
    assert main([*both, "--fail-on", "fail"]) == 1
    assert main([*both, "--fail-on", "never"]) == 0
    data = json.loads((tmp_path / "c/matrix.json").read_text())
    assert data["totals"]["cells"] == {"pass": 1, "fail": 1, "error": 0, "missing": 0}
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"matrix.json", "matrix.md", "junit.xml", "matrix.html"}


def test_convert_flag_marks_unbuildable_and_failed_conversions(outputs, tmp_path, write_registry):
    """--convert converts what is missing; a target whose converter is absent is not run, and a conversion
    that fails is an error cell (a failure under --fail-on fail), without stopping the others."""
    from zoo.converters import missing_steps
    from zoo.targets import load_targets

    unbuildable = [t.name for t in load_targets().values() if missing_steps(t)]
    registry = write_registry(
        '[models.broken]\nrole = "teacher"\narchitecture = "no_such_module_xyz:factory"\n'
        'embedding_dim = 8\ninput_size = 32\nembedding_space = "x"\n'
    )
    targets = ["android", *unbuildable[:1]]
    m = collect(models=["broken"], targets=targets, outputs=tmp_path / "out", convert=True, registry_paths=[registry])
    broken = m.cell("broken", "android")
    assert broken.state == "error" and "no_such_module_xyz" in broken.detail
    if unbuildable:
        cell = m.cell("broken", unbuildable[0])
        assert cell.state == "missing" and "target not built here" in cell.detail
    assert m.should_fail("fail")
    paths = write_reports(m, tmp_path / "reports")
    assert ET.parse(paths["junit"]).getroot().get("errors") == "1"
