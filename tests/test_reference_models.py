"""The shipped reference models: trained for real, and the checks on them mean something."""

import json

import pytest

from zoo.cli import main
from zoo.distillation import REFERENCE_DOG, REFERENCE_STUDENTS, REFERENCE_TEACHER
from zoo.fidelity import Fidelity, Status
from zoo.pipeline import convert


def test_reference_checkpoints_are_small_and_verified(registry):
    total = 0
    for name in (REFERENCE_TEACHER, *REFERENCE_STUDENTS, REFERENCE_DOG):
        spec = registry.get(name)
        assert spec.trained, f"{name} ships without a checkpoint"
        total += spec.checkpoint.path.stat().st_size
    assert total < 20 * 2**20


def test_reference_teacher_separates_identities(registry):
    from zoo.identity_task import eval_set
    from zoo.models import build_model
    from zoo.training import embed
    from zoo.validators.acceptance import identity_metrics, separates

    teacher = registry.get(REFERENCE_TEACHER)
    net = build_model(teacher)
    ev = eval_set()
    m = identity_metrics(embed(net, ev.gallery, teacher), embed(net, ev.views, teacher), ev.labels, ev.conditions)
    ok, summary = separates(m)
    assert ok, summary
    # the shipped teacher (its model card): top-1 100 % on every condition, same-card p5 0.884,
    # different-card p95 0.441, 47 of 48 card-free scenes "no match", no card view rejected
    assert m["top1_clean"] == m["top1_occluded"] == m["top1_glare"] == 1.0
    assert m["same_p5"] > 0.87 and m["different_p95"] < 0.45
    assert m["unknown_rejected"] >= 0.95 and m["known_false_rejection"] == 0.0


# What the shipped students reach on the card task (their model cards give the figures): each passes
# every retrieval, same/different-card and "no match" rule, and the > 0.95 minimum vs the teacher on its
# worst held-out photograph (ConvNeXt 0.971, EfficientNet 0.956, the ViT 0.9715).
UNKNOWN_RULE = "unknown images reported 'no match'"
TEACHER_PARITY = "parity vs teacher (ref_teacher, torch)"
UNSEEN_ROW = "unseen cards: nearest distance (not gated)"
SAME_P5 = "same identity, clean/glare views: cosine p5"
KNOWN_FAILURES: dict[str, set[str]] = {
    "ref_convnext": set(),
    "ref_efficientnet": set(),
    "ref_vit": set(),
}
WORST_VIEW_AT_LEAST = {"ref_convnext": 0.965, "ref_efficientnet": 0.955, "ref_vit": 0.965}
MEAN_AT_LEAST = {"ref_convnext": 0.99, "ref_efficientnet": 0.99, "ref_vit": 0.99}
# card-free scenes reported "no match" (the rule: ≥ 90 %): ConvNeXt 48 of 48, EfficientNet 47, the ViT 46
UNKNOWN_AT_LEAST = {"ref_convnext": 1.0, "ref_efficientnet": 0.97, "ref_vit": 0.95}


@pytest.mark.parametrize("student", REFERENCE_STUDENTS)
def test_shipped_students_on_onnx(student, registry, tmp_path):
    outcome = convert(student, "server", out_root=tmp_path, registry=registry, latency_runs=20)
    rows = {c.name: c for c in outcome.report.checks}
    guard = next(c for n, c in rows.items() if "vacuity guard" in n)
    assert guard.status is Status.PASS and guard.value >= 0.95  # the teacher's top-1 on clean views
    parity = rows[TEACHER_PARITY]
    assert parity.fidelity is Fidelity.MEASURED and parity.data["samples"] == 210
    assert parity.data["cosine_mean"] > MEAN_AT_LEAST[student]  # an untrained student is near 0
    assert parity.data["cosine_min"] > WORST_VIEW_AT_LEAST[student]
    assert rows["parity vs source (torch fp32)"].data["cosine_min"] >= 0.9999
    for name in (
        "retrieval top-1, clean views",
        "retrieval top-5, clean views",
        "retrieval top-3, occluded views",
        "retrieval top-5, glare views",
        SAME_P5,
        "different identities: cosine p95",
    ):
        if name not in KNOWN_FAILURES[student]:
            assert rows[name].status is Status.PASS, (name, rows[name].value)
    assert rows["cosine vs teacher on unknown images"].status is Status.INFO
    assert rows[UNKNOWN_RULE].status is Status.PASS and rows[UNKNOWN_RULE].value >= UNKNOWN_AT_LEAST[student]
    unseen = rows[UNSEEN_ROW]
    assert unseen.status is Status.INFO and unseen.threshold == "not gated"
    assert len(unseen.data["nearest_distance"]) == 16 and "reported only" in unseen.detail
    failed = {c.name for c in outcome.report.checks if c.status is Status.FAIL}
    assert failed == KNOWN_FAILURES[student], failed
    assert outcome.report.failed == bool(failed)


def test_reference_dog_embedder_meets_the_dog_identity_profile(registry, tmp_path):
    """ref_dog has no teacher: its ONNX is judged by the dog-identity profile against its own source
    model's gallery, on the reference task (its cards stand in for dogs), 512-d as Immich stores faces."""
    outcome = convert(REFERENCE_DOG, "server", out_root=tmp_path, registry=registry, latency_runs=20)
    rows = {c.name: c for c in outcome.report.checks}
    assert rows["parity vs teacher"].status is Status.NOT_APPLICABLE
    rules = [c for c in outcome.report.checks if c.name.startswith(("verification", "retrieval", "same", "different"))]
    assert len(rules) >= 5 and all(c.fidelity is Fidelity.MEASURED for c in rules)
    assert all(c.status is Status.PASS for c in rules), [
        (c.name, c.value) for c in rules if c.status is not Status.PASS
    ]
    verification = next(c for c in rules if c.name.startswith("verification"))
    assert verification.value >= 0.9
    assert rows[UNKNOWN_RULE].status is Status.PASS and rows[UNKNOWN_RULE].value >= 0.8
    shapes = [c for c in outcome.report.checks if c.name == "output shape and dtype"]
    assert shapes and all(c.status is Status.PASS and ", 512)" in c.value for c in shapes)
    assert not outcome.report.failed


def test_reference_build_retrains_all_five(registry, tmp_path, monkeypatch):
    """`zoo reference build` retrains the teacher, the three students and ref_dog (recipes cut to one
    epoch of a few views here), each with a checkpoint, a model card and a registry entry."""
    from zoo import distillation

    for recipe in (distillation.TEACHER_RECIPE, distillation.DOG_RECIPE):
        monkeypatch.setitem(recipe, "epochs", 1)
        monkeypatch.setitem(recipe, "views_per_identity", 2)
    monkeypatch.setitem(distillation.STUDENT_RECIPE, "epochs", 1)
    monkeypatch.setitem(distillation.STUDENT_RECIPE, "views_per_image", 2)
    monkeypatch.setitem(distillation.STUDENT_RECIPE, "negative_views", 1)
    monkeypatch.setattr(distillation, "STUDENT_OVERRIDES", {})
    results = distillation.build_reference(tmp_path, registry, show_progress=False)
    names = [r.spec.name for r in results]
    assert names == [REFERENCE_TEACHER, *REFERENCE_STUDENTS, REFERENCE_DOG]
    written = (tmp_path / "registry.toml").read_text()
    for name in names:
        assert (tmp_path / f"{name}.safetensors").is_file() and (tmp_path / f"{name}.json").is_file()
        assert f"[models.{name}]" in written


def test_untrained_student_fails_teacher_parity_with_exit_1(write_registry, tmp_path, capsys):
    untrained = write_registry(
        """
[models.ref_vit_untrained]
role = "student"
teacher = "ref_teacher"
architecture = "timm:test_vit"
input_size = 64
head = [64]
embedding_dim = 64
embedding_space = "reference-identities-64-v1"
"""
    )
    code = main(
        [
            "convert",
            "--registry",
            str(untrained),
            "--model",
            "ref_vit_untrained",
            "--target",
            "server",
            "--out",
            str(tmp_path),
            "-q",
            "--latency-runs",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    report = json.loads((tmp_path / "ref_vit_untrained" / "server" / "report.json").read_text())
    parity = next(c for c in report["checks"] if c["name"].startswith("parity vs teacher"))
    assert parity["status"] == "fail" and parity["data"]["cosine_min"] < 0.95
    assert parity["data"]["cosine_mean"] < 0.5  # far from the shipped students' ≥ 0.975
    assert "UNTRAINED WEIGHTS" in out


def test_a_few_epochs_of_distillation_learn(registry):
    import dataclasses

    from zoo.training import distill

    student = dataclasses.replace(registry.get("ref_efficientnet"), checkpoint=None)
    _, log = distill(
        registry.get(REFERENCE_TEACHER), student, epochs=3, views_per_image=6, negative_views=2, show_progress=False
    )
    assert log.losses[-1] < log.losses[0]
    # 3 epochs of 6 photographs per card do not yet move the held-out photographs (the shipped recipe
    # is STUDENT_RECIPE); the training loss is what must fall


def test_students_side_by_side_come_out_as_if_trained_alone(registry, monkeypatch):
    """`zoo reference build` trains the students in lockstep on pools rendered in a worker process;
    `zoo distill` trains one, rendering in-process or ahead: the weights must be the same bytes."""
    import dataclasses

    import torch

    from zoo import pool_cache
    from zoo.training import distill, distill_students

    teacher = registry.get(REFERENCE_TEACHER)
    a, b = (dataclasses.replace(registry.get(n), checkpoint=None) for n in ("ref_convnext", "ref_efficientnet"))
    options = dict(views_per_image=2, negative_views=1, show_progress=False)
    # a stops after 2 epochs, b after 1, in batches, at a rate and with a weight average of its own:
    # each as if alone
    own = dict(epochs=[2, 1], batch=[64, 32], lr=[3e-3, 1e-3], ema=[0.0, 0.9])
    (a_side, a_log), (b_side, b_log) = distill_students(teacher, [a, b], workers=1, **own, **options)
    a_alone, a_alone_log = distill(teacher, a, epochs=2, workers=0, **options)
    b_alone, _ = distill(teacher, b, epochs=1, batch=32, lr=1e-3, ema=0.9, workers=1, **options)
    assert (b_log.batch, b_log.lr) == (32, 1e-3)
    for side, alone in ((a_side, a_alone), (b_side, b_alone)):
        assert side.state_dict().keys() == alone.state_dict().keys()
        assert all(torch.equal(x, alone.state_dict()[k]) for k, x in side.state_dict().items())
    assert a_log.losses == a_alone_log.losses and len(a_log.losses) == 2
    # each in a process of its own, from pools rendered once into a folder: the same bytes again
    monkeypatch.setattr(pool_cache, "AHEAD", 1)  # rendering waits for the slowest student after each pool
    (a_apart, a_apart_log), (b_apart, _) = distill_students(teacher, [a, b], workers=1, apart=True, **own, **options)
    for apart, alone in ((a_apart, a_alone), (b_apart, b_alone)):
        assert all(torch.equal(x, alone.state_dict()[k]) for k, x in apart.state_dict().items())
    assert a_apart_log.losses == a_alone_log.losses
    assert a_apart_log.heldout["after"] == a_log.heldout["after"]
    # the average is what comes back: not the last weights
    last, _ = distill(teacher, b, epochs=1, batch=32, lr=1e-3, workers=0, **options)
    assert not all(torch.equal(x, last.state_dict()[k]) for k, x in b_alone.state_dict().items())


@pytest.mark.parametrize("target", ["tflite-int8", "tflite-int8-static"])
def test_trained_convnext_to_tflite_int8_keeps_parity(target, registry, tmp_path):
    # trained layer scales make litert-torch write 4-D FULLY_CONNECTED biases, which the quantizer
    # used to turn into int8 files LiteRT refuses (zoo.converters.tflite_to_int8.flatten_fc_biases);
    # static int8 lost 0.05 on the worst view while its ranges were ai-edge-quantizer's moving
    # average (zoo.converters.tflite_to_int8.calibrate_min_max)
    pytest.importorskip("ai_edge_quantizer")
    pytest.importorskip("litert_torch")
    outcome = convert("ref_convnext", target, out_root=tmp_path, registry=registry, latency_runs=20)
    rows = [c for c in outcome.report.checks if c.artifact == "model.int8.tflite"]
    parity = {c.name: c for c in rows}
    assert parity["parity vs source (torch fp32)"].fidelity is Fidelity.MEASURED
    assert parity["parity vs source (torch fp32)"].data["cosine_min"] >= 0.98
    assert parity[TEACHER_PARITY].data["cosine_min"] > WORST_VIEW_AT_LEAST["ref_convnext"] - 0.02
    manifest = json.loads((outcome.out_dir / "manifest.json").read_text())
    scheme = "dynamic-range" if target == "tflite-int8" else "static int8 activations"
    assert scheme in manifest["quantization"]["scheme"]


def test_efficientnet_openvino_int8_keeps_parity_with_its_float_modules(registry, tmp_path):
    # zoo diagnose --suggest's measured fix in the registry (the stem and the first three stages float):
    # parity vs source 0.983 against the 0.98 rule, and the worst held-out view vs the teacher 0.954
    pytest.importorskip("nncf")
    outcome = convert("ref_efficientnet", "openvino-int8", out_root=tmp_path, registry=registry, latency_runs=20)
    rows = {c.name: c for c in outcome.report.checks if c.artifact == "model.int8.xml"}
    parity = rows["parity vs source (torch fp32)"]
    assert parity.status is Status.PASS and parity.data["cosine_min"] >= 0.98
    kept = next(c for name, c in rows.items() if "float_modules" in name)
    assert kept.status is Status.INFO and kept.value.startswith("8 module(s)")
    assert rows[TEACHER_PARITY].status is Status.PASS and rows[TEACHER_PARITY].data["cosine_min"] > 0.95


def test_efficientnet_tflite_static_int8_keeps_its_stem_float(registry, tmp_path):
    # LiteRT's static int8 step leaves float_modules float (their ops out of ai-edge-quantizer's scope):
    # with the stem float the worst held-out view vs the teacher is 0.953, 0.9499 all int8
    pytest.importorskip("ai_edge_quantizer")
    pytest.importorskip("litert_torch")
    outcome = convert("ref_efficientnet", "tflite-int8-static", out_root=tmp_path, registry=registry, latency_runs=20)
    rows = {c.name: c for c in outcome.report.checks if c.artifact == "model.int8.tflite"}
    kept = next(c for name, c in rows.items() if "float_modules" in name)
    assert kept.value.startswith("1 module(s)") and kept.data["nodes"] >= 1
    assert rows["parity vs source (torch fp32)"].data["cosine_min"] >= 0.99
    assert rows[TEACHER_PARITY].status is Status.PASS and rows[TEACHER_PARITY].data["cosine_min"] > 0.95
    assert not outcome.report.failed


def test_zoo_distill_writes_a_verified_checkpoint_and_registers_it(write_registry, tmp_path, capsys):
    from zoo.registry import load_registry

    students = write_registry(
        """
[models.small_student]
role = "student"
teacher = "ref_teacher"
architecture = "timm:test_efficientnet"
input_size = 64
head = [64]
embedding_dim = 64
embedding_space = "reference-identities-64-v1"
"""
    )
    register = tmp_path / "out.toml"
    ckpt = tmp_path / "small_student.safetensors"
    args = ["distill", "--registry", str(students), "--teacher", "ref_teacher", "--student", "small_student"]
    code = main([*args, "--epochs", "3", "--views", "6", "--out", str(ckpt), "--register", str(register), "-q"])
    assert code == 0, capsys.readouterr()
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert card["epochs"] == 3 and card["views_per_image"] == 6
    assert card["loss_final"] < card["loss_first_epoch"]
    assert card["heldout_cosine_vs_teacher_after"]["mean"] > card["heldout_cosine_vs_teacher_before"]["mean"] + 0.03
    spec = load_registry([students, register]).get("small_student")
    assert spec.trained and spec.checkpoint.sha256 == card["checkpoint_sha256"]


def test_reference_task_and_checkpoints_are_deterministic(registry, tmp_path):
    # the same recipe must give the same bytes: unseeded data or a metadata map in random order
    # would change the sha256 in the registry on every rebuild
    import numpy as np

    from zoo.distillation import save_weights
    from zoo.identity_task import _load
    from zoo.models import build_model

    assert np.array_equal(_load("binary_blobs"), _load("binary_blobs"))
    net = build_model(registry.get("ref_efficientnet"))
    assert len({save_weights(net, tmp_path / f"w{i}.safetensors") for i in range(4)}) == 1


def test_a_student_failing_in_its_process_stops_the_others_and_leaves_no_pools(registry, tmp_path, monkeypatch):
    import dataclasses
    import tempfile

    from zoo.errors import UsageError
    from zoo.training import distill_students

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    teacher = registry.get(REFERENCE_TEACHER)
    good = dataclasses.replace(registry.get("ref_convnext"), checkpoint=None)
    bad = dataclasses.replace(registry.get("ref_vit"), checkpoint=None, architecture_args={"no_such_option": 1})
    with pytest.raises(UsageError, match="no_such_option"):
        distill_students(
            teacher, [good, bad], epochs=40, views_per_image=2, negative_views=1, apart=True, show_progress=False
        )
    assert not list(tmp_path.glob("zoo-pools-*"))  # the rendered pools went with the run
