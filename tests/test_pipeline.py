"""Teacher parity, atomic outputs, and failures that must not look like success."""

import numpy as np
import pytest
from conftest import tiny_spec

from zoo.checkpoints import sha256_file
from zoo.errors import ConversionError
from zoo.fidelity import Fidelity, Status
from zoo.pipeline import convert
from zoo.registry import load_registry

TEACHER_AND_STUDENT = """
[models.t]
role = "teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "ts-16"
checkpoint = {{ path = "{teacher}", sha256 = "{teacher_sha}" }}

[models.s]
role = "student"
teacher = "t"
architecture = "timm:test_convnext"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "ts-16"
{student_ck}
"""


def _registry(tmp_path, student_weights: str):
    """A trained teacher `t` and a student `s` that is its copy ('same'), another net ('other'), or untrained."""
    from zoo.distillation import save_weights
    from zoo.models import build_model

    def save(name, seed):
        spec = tiny_spec(name, architecture="timm:test_convnext", embedding_space="ts-16", seed=seed)
        path = tmp_path / f"{name}.safetensors"
        return path, save_weights(build_model(spec), path)

    teacher, teacher_sha = save("t", 1)
    student_ck = ""
    if student_weights == "same":
        student_ck = f'checkpoint = {{ path = "{teacher}", sha256 = "{teacher_sha}" }}'
    elif student_weights == "other":
        path, sha = save("s", 2)
        student_ck = f'checkpoint = {{ path = "{path}", sha256 = "{sha}" }}'
    file = tmp_path / "reg.toml"
    file.write_text(TEACHER_AND_STUDENT.format(teacher=teacher, teacher_sha=teacher_sha, student_ck=student_ck))
    return load_registry([file])


@pytest.mark.parametrize("student", ["same", "other", "untrained"])
def test_teacher_that_separates_nothing_makes_teacher_parity_not_meaningful(tmp_path, student):
    """A 'trained' teacher with random weights: parity against it would mean nothing (the vacuity guard)."""
    outcome = convert("s", "server", out_root=tmp_path / "out", registry=_registry(tmp_path, student), latency_runs=20)
    row = next(c for c in outcome.report.checks if c.name.startswith("parity vs teacher"))
    assert row.status is Status.NOT_RUN
    assert "not meaningful" in row.detail and "teacher: retrieval top-1, clean views" in row.detail
    if student == "same":
        assert row.data["cosine_min"] > 0.9999  # the number is still shown, it just does not pass
    assert not any(c.name.startswith("retrieval") for c in outcome.report.checks)
    assert outcome.report.verdict.startswith("pass (") and "not run" in outcome.report.verdict


def test_failed_step_leaves_nothing_and_keeps_the_previous_output(tmp_path, monkeypatch):
    registry = load_registry()
    first = convert("tiny_vit", "server", out_root=tmp_path, registry=registry, validate=False)
    before = sha256_file(first.out_dir / "model.onnx")

    from zoo.converters import torch_to_onnx

    def explode(self, ctx, upstream):
        (ctx.workdir / "model.onnx").write_bytes(b"half a model")
        raise ConversionError("simulated failure mid-export")

    monkeypatch.setattr(torch_to_onnx.TorchToOnnx, "convert", explode)
    with pytest.raises(ConversionError):
        convert("tiny_vit", "server", out_root=tmp_path, registry=registry, validate=False)
    assert sha256_file(first.out_dir / "model.onnx") == before
    assert [p.name for p in (tmp_path / "tiny_vit").iterdir()] == ["server"]  # no partial directory left


def test_simplification_that_changes_numbers_is_not_used(tmp_path, monkeypatch):
    import onnxslim

    def bad_slim(model):
        import copy

        import onnx

        slim = copy.deepcopy(model)
        for init in slim.graph.initializer:  # corrupt every weight
            arr = onnx.numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 1:
                init.CopyFrom(onnx.numpy_helper.from_array(-arr, init.name))
        return slim

    monkeypatch.setattr(onnxslim, "slim", bad_slim)
    outcome = convert("tiny_convnext", "server", out_root=tmp_path, registry=load_registry(), latency_runs=20)
    row = next(c for c in outcome.report.checks if "simplification" in c.name)
    assert row.status is Status.INFO and row.value < 0.999999
    source = next(c for c in outcome.report.checks if c.name.startswith("parity vs source"))
    assert source.status is Status.PASS and source.data["cosine_min"] > 0.9999


def test_not_run_never_counts_as_pass():
    from zoo.fidelity import Check
    from zoo.report import Report

    report = Report(
        "m", "t", (Check("a", Status.PASS, Fidelity.MEASURED), Check("b", Status.NOT_RUN, Fidelity.NOT_RUN))
    )
    assert report.verdict == "pass (1 check(s) not run)" and report.counts["not run"] == 1
    assert "NOT RUN" in report.to_markdown()
