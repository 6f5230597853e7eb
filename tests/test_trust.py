"""Trust hardening: re-validation keeps every row, one error contract, options in either position,
calibration options checked before any work, and a report that cannot be edited into a pass."""

from __future__ import annotations

import json
import os

import pytest
from conftest import ready_targets
from packaging_helpers import converted_outputs, copy_output, edit_json, flip_byte

from zoo.cli import main
from zoo.errors import EXIT_CHECK_FAILED, EXIT_CONVERSION_FAILED, EXIT_UNEXPECTED, EXIT_USAGE
from zoo.fidelity import Status

USER_REGISTRY = """
[models.my_embedder]
role = "teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "mine"
"""


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _rows(report: dict) -> list[tuple[str, str]]:
    return sorted((c["artifact"], c["name"]) for c in report["checks"])


# ---------------------------------------------------------------- zoo validate keeps every row


@pytest.mark.parametrize("target", ready_targets())
def test_revalidation_keeps_every_row(target, tmp_path, capsys):
    """`zoo validate` reproduces each row of the conversion's report: re-run where the artifact allows,
    else carried from the manifest with its original status and fidelity and labelled "not re-run"."""
    argv = ["convert", "--model", "tiny_convnext", "--target", target, "--out", tmp_path, "--latency-runs", 20, "-q"]
    code, _, err = run(capsys, *argv)
    assert code in (0, 1), err
    out_dir = tmp_path / "tiny_convnext" / target
    converted = json.loads((out_dir / "report.json").read_text())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    carried = {(c["artifact"], c["name"]): c for c in manifest["conversion_checks"]}

    code, _, err = run(capsys, "validate", out_dir, "--latency-runs", 20, "-q")
    assert code in (0, 1), err
    again = json.loads((out_dir / "report.json").read_text())
    integrity = ("", "artifact files match the manifest (sha256)")
    assert _rows(again) == sorted([*_rows(converted), integrity])
    by_key = {(c["artifact"], c["name"]): c for c in again["checks"]}
    for key, original in carried.items():
        row = by_key[key]
        assert (row["status"], row["fidelity"]) == (original["status"], original["fidelity"])
        assert row["origin"].startswith("conversion of ") and "not re-run" in row["detail"]
    recomputed = [c for c in again["checks"] if (c["artifact"], c["name"]) not in carried]
    assert all(c["origin"] == "" for c in recomputed)
    # the manifest pins the new report
    from zoo.checkpoints import sha256_file

    assert json.loads((out_dir / "manifest.json").read_text())["report_sha256"] == sha256_file(out_dir / "report.json")


def test_coreml_structure_rows_are_re_run_by_validate(tmp_path):
    """The Core ML structural rows are the only real checks of an .mlmodel off macOS: validate re-runs
    them from the file (a conversion record that no longer matches the file fails, not carried as a pass)."""
    from zoo.pipeline import convert, validate_dir

    outcome = convert("tiny_convnext", "ios-mlmodel", out_root=tmp_path, validate=False)
    structure = [c for c in outcome.report.checks if c.name.startswith("Core ML format")]
    assert len(structure) == 1 and structure[0].status is Status.PASS and structure[0].origin == ""

    def ask_for_an_ml_program(m):
        m["artifacts"][0]["facts"]["coreml_expected"]["model_type"] = "mlProgram"

    edit_json(outcome.out_dir / "manifest.json", ask_for_an_ml_program)
    again = validate_dir(outcome.out_dir, latency_runs=20)
    row = next(c for c in again.report.checks if c.name.startswith("Core ML format"))
    assert row.status is Status.FAIL and row.origin == ""


# ---------------------------------------------------------------- the report zoo wrote is the one packaged


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return converted_outputs(tmp_path_factory)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda r: r.update(verdict="pass"), id="verdict-flipped-only"),
        pytest.param(lambda r: r["checks"].pop(), id="row-dropped"),
    ],
)
def test_package_refuses_an_edited_report(edit, outputs, tmp_path, capsys):
    out = copy_output(outputs / "tiny_vit" / "android", tmp_path / "out" / "tiny_vit" / "android")
    edit_json(out / "report.json", edit)
    argv = ["package", "--consumer", "android", "--version", "1.0.0", "--outputs", tmp_path / "out"]
    code, _, err = run(capsys, *argv, "--out", tmp_path / "dist", "--allow-untrained", "-q")
    assert code == EXIT_CHECK_FAILED
    assert "report.json differs from the one zoo wrote" in err and len(err.strip().splitlines()) == 2
    assert not (tmp_path / "dist").exists()


def test_validate_of_tampered_output_names_the_file(outputs, tmp_path, capsys):
    out = copy_output(outputs / "tiny_vit" / "android", tmp_path / "o")
    flip_byte(out / "model.ort")
    code, out_text, _ = run(capsys, "validate", out, "-q")
    assert code == EXIT_CHECK_FAILED
    assert "model.ort sha256 differs" in out_text


# ---------------------------------------------------------------- global options in either position


@pytest.mark.parametrize("position", ["before", "after"])
def test_registry_option_in_either_position(position, tmp_path, capsys):
    reg = tmp_path / "reg.toml"
    reg.write_text(USER_REGISTRY)
    argv = ["--registry", reg, "list", "models"] if position == "before" else ["list", "models", "--registry", reg]
    code, out, _ = run(capsys, *argv)
    assert code == 0 and "my_embedder" in out


def test_registry_option_in_both_positions_adds_up(tmp_path, capsys):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(USER_REGISTRY)
    second.write_text(USER_REGISTRY.replace("my_embedder", "other_embedder"))
    code, out, _ = run(capsys, "--registry", first, "list", "models", "--registry", second)
    assert code == 0 and "my_embedder" in out and "other_embedder" in out


@pytest.mark.parametrize("position", ["before", "after"])
def test_quiet_option_in_either_position(position, tmp_path, capsys):
    base = ["convert", "--model", "tiny_convnext", "--target", "server", "--out", tmp_path, "--no-validate"]
    code, _, err = run(capsys, *(["-q", *base] if position == "before" else [*base, "-q"]))
    assert code == 0 and "[zoo]" not in err
    code, _, err = run(capsys, *base)
    assert code == 0 and "[zoo]" in err


@pytest.mark.parametrize("position", ["before", "after"])
def test_traceback_option_in_either_position(position, capsys):
    base = ["show", "no_such_model"]
    code, _, err = run(capsys, *base)
    assert code == EXIT_USAGE and err.startswith("zoo: error: unknown model")
    from zoo.errors import UsageError

    with pytest.raises(UsageError):
        main(["--traceback", *base] if position == "before" else [*base, "--traceback"])


# ---------------------------------------------------------------- one error contract


def test_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code, _, err = run(capsys, "convert", "--model", "tiny_convnext", "--target", "server", "--out", blocker, "-q")
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"zoo: error: {blocker} is a file, not a folder")
    assert lines[1].startswith("hint: ") and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_root_is_one_line_exit_3(tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        code, _, err = run(capsys, "convert", "--model", "tiny_convnext", "--target", "server", "--out", root, "-q")
    finally:
        root.chmod(0o700)
    assert code == EXIT_CONVERSION_FAILED and "Permission denied" in err and "Traceback" not in err


def test_full_disk_is_one_line_exit_3(tmp_path, capsys, monkeypatch):
    import errno

    import zoo.pipeline

    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(zoo.pipeline, "write_text_atomic", no_space)
    argv = ["convert", "--model", "tiny_convnext", "--target", "server", "--out", tmp_path, "--no-validate", "-q"]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_CONVERSION_FAILED and "No space left on device" in err and "report.json" in err
    assert not (tmp_path / "tiny_convnext" / "server").exists()
    assert [p.name for p in (tmp_path / "tiny_convnext").iterdir() if not p.name.endswith(".lock")] == []


def test_unexpected_error_is_one_line_exit_4(monkeypatch, capsys):
    import zoo.cli

    def boom(*, model, registry):
        raise RuntimeError("something\n\x1b[31mnobody\x1b[0m foresaw")

    monkeypatch.setattr(zoo.cli, "cmd_show", boom)
    code, _, err = run(capsys, "show", "tiny_vit")
    assert code == EXIT_UNEXPECTED
    assert err.splitlines() == [
        "zoo: error: unexpected RuntimeError: something nobody foresaw",
        "hint: this is a bug in zoo or a toolchain; run with --traceback (or ZOO_TRACEBACK=1) and report it",
    ]


# ---------------------------------------------------------------- calibration options, checked first


@pytest.mark.parametrize(
    ("target", "extra", "message"),
    [
        ("server", ["--calibration", "."], "no step of target 'server'"),
        ("tflite-int8", ["--calibration-count", "8"], "no step of target 'tflite-int8'"),
        ("android-int8", ["--calibration-count", "-5"], "must be a positive number"),
        ("android-int8", ["--calibration-count", "0"], "must be a positive number"),
        ("android-int8", ["--calibration", "missing-folder"], "does not exist"),
        ("android-int8", ["--calibration", "EMPTY"], "has no images"),
        ("android-int8", ["--calibration", "BROKEN"], "cannot be read"),
    ],
)
def test_calibration_options_refused_before_any_work(target, extra, message, tmp_path, capsys):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN").mkdir()
    (tmp_path / "BROKEN" / "a.jpg").write_bytes(b"not a jpeg")
    extra = [str(tmp_path / e) if e in ("EMPTY", "BROKEN", "missing-folder") else e for e in extra]
    out = tmp_path / "out"
    code, _, err = run(capsys, "convert", "--model", "tiny_convnext", "--target", target, "--out", out, *extra)
    assert code == EXIT_USAGE and message in err
    assert "building" not in err  # refused before the model was built
    assert not out.exists()


# ---------------------------------------------------------------- targets from outside the package

USER_TARGET = """
[targets.server-opset17]
description = "a team's own target: server ONNX at opset 17"
chain = ["torch_to_onnx"]
runtime = "onnxruntime"
opset = 17
"""


def test_user_target_from_a_registry_file(tmp_path, capsys):
    import onnx

    reg = tmp_path / "targets.toml"
    reg.write_text(USER_TARGET)
    code, out, _ = run(capsys, "list", "targets", "--registry", reg)
    assert code == 0 and "server-opset17" in out
    argv = ["--registry", reg, "convert", "--model", "tiny_vit", "--target", "server-opset17", "--out", tmp_path]
    code, _, err = run(capsys, *argv, "--latency-runs", 20, "-q")
    assert code == 0, err
    model = onnx.load(str(tmp_path / "tiny_vit" / "server-opset17" / "model.onnx"))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    # the output carries its target, so validate needs no registry
    code, _, err = run(capsys, "validate", tmp_path / "tiny_vit" / "server-opset17", "--latency-runs", 20, "-q")
    assert code == 0, err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[targets.server]\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\ndescription = "x"\n',
            "already defined",
        ),
        ('[targets.t]\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\n', "description"),
        ("[targets]\nt = 5\n", "[targets.NAME] tables"),
    ],
)
def test_bad_user_target_is_exit_2(text, message, tmp_path, capsys):
    reg = tmp_path / "targets.toml"
    reg.write_text(text)
    code, _, err = run(capsys, "list", "targets", "--registry", reg)
    assert code == EXIT_USAGE and message in err and "Traceback" not in err


def test_user_target_may_override_a_builtin_when_it_says_so(tmp_path):
    from zoo.targets import load_targets

    reg = tmp_path / "targets.toml"
    reg.write_text(
        '[targets.server]\noverride = true\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\n'
        'description = "ours"\nmin_cosine_vs_source = 0.999\n'
    )
    assert load_targets([reg])["server"].min_cosine_vs_source == 0.999


# ---------------------------------------------------------------- runtime hooks are declared


def test_runtime_plugin_must_subclass_the_base(monkeypatch):
    import zoo.runtimes
    from zoo.errors import UsageError

    class NotARuntime:
        name = "mine"

    class FakeEntryPoint:
        name = "mine"

        def load(self):
            return NotARuntime

    monkeypatch.setattr(zoo.runtimes.metadata, "entry_points", lambda group: [FakeEntryPoint()])
    with pytest.raises(UsageError, match="does not subclass zoo.runtimes.RuntimeBase"):
        zoo.runtimes.get_runtime("mine")


def test_every_builtin_runtime_declares_the_hooks():
    from zoo.runtimes import BUILTIN, RuntimeBase, SessionBase, get_runtime

    for name in BUILTIN:
        runtime = get_runtime(name)
        assert isinstance(runtime, RuntimeBase) and isinstance(runtime.measures_latency, bool)
    assert SessionBase().latency_variants() == {} and SessionBase().with_batch(8) is None


def test_a_toolchain_crash_inside_a_step_is_exit_3_naming_the_step(monkeypatch, tmp_path, capsys):
    from zoo.converters import torch_to_onnx

    def crash(self, ctx, upstream):
        raise RuntimeError("exporter exploded\n  deep inside")

    monkeypatch.setattr(torch_to_onnx.TorchToOnnx, "convert", crash)
    code, _, err = run(capsys, "convert", "--model", "tiny_vit", "--target", "server", "--out", tmp_path, "-q")
    assert code == EXIT_CONVERSION_FAILED
    assert err.splitlines()[0] == (
        "zoo: error: torch_to_onnx failed for tiny_vit (server): RuntimeError: exporter exploded deep inside"
    )
    assert not (tmp_path / "tiny_vit" / "server").exists()


def test_a_litert_failure_says_what_its_log_says(monkeypatch, tmp_path, capsys):
    """litert-torch reports MLIR errors on stderr (captured into its log), not in the exception, and a
    failed run's folder is not kept: the one line must carry the log's error itself."""
    litert_torch = pytest.importorskip("litert_torch")

    def fail(*args, **kwargs):
        os.write(2, b"loc(fused[mul]): error: 'tfl.mul' op operands don't have broadcast-compatible shapes\n")
        os.write(2, b"note: see current operation\n")
        raise RuntimeError("Failed to legalize the module")

    monkeypatch.setattr(litert_torch, "convert", fail)
    code, _, err = run(capsys, "convert", "--model", "tiny_vit", "--target", "tflite", "--out", tmp_path, "-q")
    assert code == EXIT_CONVERSION_FAILED
    line = next(line for line in err.splitlines() if line.startswith("zoo: error:"))
    assert "RuntimeError: Failed to legalize the module; its log: " in line
    assert "'tfl.mul' op operands don't have broadcast-compatible shapes" in line
    assert "--traceback" in err and "litert.log" not in err


def test_an_artifact_its_runtime_cannot_run_is_exit_3_naming_it(monkeypatch, tmp_path, capsys):
    from zoo.runtimes import onnxruntime

    def refuse(self, path):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : broken")

    monkeypatch.setattr(onnxruntime.OnnxRuntime, "open", refuse)
    code, _, err = run(capsys, "convert", "--model", "tiny_vit", "--target", "server", "--out", tmp_path, "-q")
    assert code == EXIT_CONVERSION_FAILED
    assert err.splitlines()[0].startswith("zoo: error: model.onnx does not run on onnxruntime: RuntimeError: [ONNX")


def test_two_concurrent_validations_leave_a_report_the_manifest_pins(tmp_path):
    """zoo validate rewrites report.json and the manifest in place: under the output's lock, two at
    once take turns, and the manifest pins the report that is on disk."""
    import subprocess
    import sys

    from zoo.checkpoints import sha256_file
    from zoo.pipeline import convert

    out = convert("tiny_vit", "server", out_root=tmp_path, validate=False).out_dir
    argv = [sys.executable, "-m", "zoo", "validate", str(out), "--latency-runs", "20", "-q"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert not any("Traceback" in err for _, err in results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["report_sha256"] == sha256_file(out / "report.json")
    assert sorted(p.name for p in tmp_path.joinpath("tiny_vit").iterdir()) == ["server"]  # no lock or leftovers


def test_an_int8_artifact_its_runtime_cannot_run_is_a_one_line_conversion_failure(capsys):
    """The int8-vs-fp32 timing runs before validation: a kernel that refuses the fresh artifact
    (seen: LiteRT's PADV2 overflow, OpenVINO's GatherTransformation) is exit 3 in one line."""
    import numpy as np

    from zoo.cli import describe_error
    from zoo.errors import ConversionError
    from zoo.runtimes import SessionBase
    from zoo.validators.timing import speedup_check

    class Works(SessionBase):
        batch = 1

        def run(self, x):
            return np.ones((len(x), 4), np.float32)

    class Refuses(Works):
        def run(self, x):
            raise RuntimeError("tensorflow/lite/kernels/pad.cc:\n PADV2 Pad output dimension overflowed")

    with pytest.raises(ConversionError) as err:
        speedup_check("LiteRT XNNPACK", Works(), Refuses(), 16, "model.int8.tflite")
    code, line, hint = describe_error(err.value)
    assert code == EXIT_CONVERSION_FAILED and "\n" not in line
    assert line.startswith("model.int8.tflite does not run on LiteRT XNNPACK: RuntimeError:") and "PADV2" in line
    assert "another int8 scheme" in hint
    assert speedup_check("LiteRT XNNPACK", Works(), Works(), 16, "m").status is Status.INFO


# ---- a native crash is one line, exit 3 (the `zoo` command runs its work in a child process) ----

SEGFAULTING_FACTORY = """
import ctypes
import torch


class Crash(torch.nn.Module):
    def forward(self, x):
        ctypes.string_at(0)  # reads address 0: SIGSEGV, as a toolchain's native kernel would
        return x


def factory(**kwargs):
    return Crash()
"""


def test_a_native_crash_is_one_line_and_exit_3(tmp_path):
    import subprocess
    import sys

    (tmp_path / "segfaulting.py").write_text(SEGFAULTING_FACTORY)
    (tmp_path / "reg.toml").write_text(
        '[models.crasher]\nrole = "teacher"\narchitecture = "segfaulting:factory"\n'
        'embedding_dim = 8\ninput_size = 32\nembedding_space = "x"\n'
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("ZOO_NO_ISOLATION", None)
    argv = [sys.executable, "-m", "zoo", "convert", "--model", "crasher", "--target", "server"]
    argv += ["--registry", str(tmp_path / "reg.toml"), "--out", str(tmp_path / "out"), "-q"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == EXIT_CONVERSION_FAILED
    errors = [line for line in done.stderr.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and "native crash (SIGSEGV)" in errors[0] and "building crasher" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "crasher" / "server").exists()  # nothing under the final name


def test_a_toolchains_multi_line_message_becomes_one_line():
    from zoo.errors import MAX_LINE, ConversionError

    error = ConversionError(
        "NNCF int8 quantization failed: RuntimeError: Exception from src/core.cpp:117:\n\n\nshapes\n"
    )
    assert str(error) == "NNCF int8 quantization failed: RuntimeError: Exception from src/core.cpp:117: shapes"
    long = ConversionError("x" * 10_000, hint="first\nsecond")
    assert (
        len(str(long)) <= MAX_LINE
        and str(long).endswith(f"({10_000 - MAX_LINE + 40} more characters)")
        and long.hint == "first second"
    )
