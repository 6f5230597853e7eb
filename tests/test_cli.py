import json
import subprocess
import sys

import pytest
from conftest import checkpointed_teacher

from zoo.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_models_and_targets(capsys):
    code, out, _ = run(capsys, "list", "models")
    assert code == 0
    assert "dinov3_vitl16" in out and "UNTRAINED" in out
    code, out, _ = run(capsys, "list", "targets")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "ready" in lines["server"] and "ready" in lines["android"]


def test_show(capsys):
    code, out, _ = run(capsys, "show", "dinov3_vitl16")
    assert code == 0
    assert "512" in out and "convnext_tiny" in out and "untrained weights" in out


def test_unknown_model_exits_2_with_did_you_mean():
    # the real console entry point, as a user runs it
    proc = subprocess.run(
        [sys.executable, "-m", "zoo", "convert", "--model", "nope", "--target", "server"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown model 'nope'" in proc.stderr
    assert "did you mean" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_target_exits_2(capsys):
    code, _, err = run(capsys, "convert", "--model", "tiny_vit", "--target", "andriod")
    assert code == 2
    assert "did you mean 'android'" in err


def test_target_without_converter_is_one_clear_line(capsys, monkeypatch):
    from zoo import converters

    monkeypatch.setattr(converters, "BUILTIN", {k: v for k, v in converters.BUILTIN.items() if k != "onnx_to_ort"})
    code, _, err = run(capsys, "convert", "--model", "tiny_vit", "--target", "android")
    assert code == 2
    assert "needs the converter step 'onnx_to_ort'" in err


def _checkpointed_registry(tmp_path, corrupt: bool):
    block = checkpointed_teacher(tmp_path, "tiny_ck")
    if corrupt:
        weights = tmp_path / "tiny_ck.safetensors"
        data = bytearray(weights.read_bytes())
        data[200:220] = b"\0" * 20
        weights.write_bytes(bytes(data))
    registry = tmp_path / "reg.toml"
    registry.write_text(block)
    return registry


def test_corrupt_checkpoint_one_line_nonzero_no_artifacts(tmp_path, capsys):
    registry = _checkpointed_registry(tmp_path, corrupt=True)
    out_root = tmp_path / "out"
    code, _, err = run(
        capsys,
        "convert",
        "--registry",
        str(registry),
        "--model",
        "tiny_ck",
        "--target",
        "server",
        "--out",
        str(out_root),
        "-q",
    )
    assert code == 3
    error_lines = [line for line in err.splitlines() if line.startswith("zoo: error")]
    assert len(error_lines) == 1 and "sha256" in error_lines[0]
    assert "Traceback" not in err
    assert not (out_root / "tiny_ck").exists() or not any((out_root / "tiny_ck").iterdir())


def test_convert_then_validate_then_tamper(tmp_path, capsys):
    registry = _checkpointed_registry(tmp_path, corrupt=False)
    out_root = tmp_path / "out"
    code, out, err = run(
        capsys,
        "convert",
        "--registry",
        str(registry),
        "--model",
        "tiny_ck",
        "--target",
        "server",
        "--out",
        str(out_root),
        "--latency-runs",
        "20",
    )
    assert code == 0, out + err
    assert "UNTRAINED" not in out  # it has a checkpoint
    out_dir = out_root / "tiny_ck" / "server"
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["weights"] == "trained" and len(manifest["checkpoint_sha256"]) == 64

    code, out, _ = run(capsys, "validate", str(out_dir), "-q", "--latency-runs", "20")
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    integrity = next(c for c in report["checks"] if c["name"].startswith("artifact files match"))
    assert integrity["status"] == "pass" and integrity["value"] == "1/1"

    data = bytearray((out_dir / "model.onnx").read_bytes())
    data[-5] ^= 0x01
    (out_dir / "model.onnx").write_bytes(bytes(data))
    code, out, _ = run(capsys, "validate", str(out_dir), "-q")
    assert code == 1
    assert "FAIL" in out


def test_untrained_is_said_on_the_terminal_and_in_the_report(tmp_path, capsys):
    code, out, err = run(
        capsys,
        "convert",
        "--model",
        "tiny_efficientnet",
        "--target",
        "server",
        "--out",
        str(tmp_path),
        "--latency-runs",
        "20",
    )
    assert code == 0
    assert "UNTRAINED WEIGHTS" in out and "UNTRAINED WEIGHTS" in err
    md = (tmp_path / "tiny_efficientnet" / "server" / "report.md").read_text()
    assert "UNTRAINED WEIGHTS" in md


def test_validate_a_non_output_dir(tmp_path, capsys):
    code, _, err = run(capsys, "validate", str(tmp_path))
    assert code == 2 and "no manifest.json" in err


@pytest.mark.parametrize("argv", [["convert", "--model", "tiny_vit"], ["list", "things"], []])
def test_usage_errors_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
