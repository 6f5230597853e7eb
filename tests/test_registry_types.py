"""Every field of a registry entry is checked for type and range; all problems come in one UsageError."""

import dataclasses

import pytest
from conftest import tiny_spec

from zoo.errors import UsageError
from zoo.registry import load_registry, spec_from_dict, spec_to_toml, upsert_registry_file

HEX = "ab" * 32

MODEL = """
[models.m]
role = "teacher"
architecture = "timm:test_vit"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "s"
"""


def with_fields(text: str, **fields: str) -> str:
    """The model's TOML with each field set to the given TOML value (replaced, or added)."""
    lines = [line for line in text.splitlines() if line.split(" = ")[0] not in fields]
    return "\n".join(lines + [f"{key} = {value}" for key, value in fields.items()]) + "\n"


def refusal(write_registry, text: str) -> UsageError:
    path = write_registry(text)
    with pytest.raises(UsageError) as err:
        load_registry([path])
    assert "\n" not in str(err.value)
    return err.value


# (field, TOML value, what the message says)
BAD = [
    ("input_size", '"224"', "input_size must be a positive integer, not '224' (str)"),
    ("input_size", "true", "input_size must be a positive integer, not True (bool)"),
    ("input_size", "0", "input_size must be a positive integer, not 0 (int)"),
    ("input_size", "-64", "input_size must be a positive integer, not -64 (int)"),
    ("input_size", "64.0", "input_size must be a positive integer, not 64.0 (float)"),
    ("embedding_dim", '"16"', "embedding_dim must be a positive integer, not '16' (str)"),
    ("embedding_dim", "false", "embedding_dim must be a positive integer, not False (bool)"),
    ("role", '"professor"', "role must be one of teacher, student, embedder, not 'professor' (str)"),
    ("role", "1", "role must be one of teacher, student, embedder, not 1 (int)"),
    ("teacher", "5", "teacher must be a model name (a non-empty string), not 5 (int)"),
    ("architecture", '""', "architecture must be a non-empty string, not '' (str)"),
    ("architecture", "3", "architecture must be a non-empty string, not 3 (int)"),
    ("embedding_space", "[1]", "embedding_space must be a non-empty string, not [1] (list)"),
    ("architecture_args", '"patch_size=8"', "architecture_args must be a table, not 'patch_size=8' (str)"),
    ("head", '"16"', "head must be a list of positive integers, not '16' (str)"),
    ("head", "[16.0]", "head must be a list of positive integers, not [16.0] (list)"),
    ("head", "[0, 16]", "head must be a list of positive integers, not [0, 16] (list)"),
    ("head", "[true]", "head must be a list of positive integers, not [True] (list)"),
    ("head_dropout", "1.0", "head_dropout must be a number in [0, 1), not 1.0 (float)"),
    ("head_dropout", "-0.1", "head_dropout must be a number in [0, 1), not -0.1 (float)"),
    ("head_dropout", '"0.1"', "head_dropout must be a number in [0, 1), not '0.1' (str)"),
    ("head_dropout", "true", "head_dropout must be a number in [0, 1), not True (bool)"),
    ("normalize", '"yes"', "normalize must be true or false, not 'yes' (str)"),
    ("normalize", "1", "normalize must be true or false, not 1 (int)"),
    ("mean", '["0.5", "0.5", "0.5"]', "mean must be a list of 3 numbers, not ['0.5', '0.5', '0.5'] (list)"),
    ("mean", "[0.5, 0.5]", "mean must be a list of 3 numbers, not [0.5, 0.5] (list)"),
    ("mean", "0.5", "mean must be a list of 3 numbers, not 0.5 (float)"),
    ("std", "[0.2, 0.0, 0.2]", "std must be a list of 3 positive numbers, not [0.2, 0.0, 0.2] (list)"),
    ("std", "[0.2, true, 0.2]", "std must be a list of 3 positive numbers, not [0.2, True, 0.2] (list)"),
    ("checkpoint", '"w.safetensors"', "checkpoint must be a table { path = ..., sha256 = ... }, not 'w.safetensors'"),
    ("checkpoint", '{ path = "w.pt" }', "checkpoint needs sha256"),
    ("checkpoint", "{}", "checkpoint needs path and sha256"),
    ("checkpoint", '{ path = "w.pt", sha256 = "abc" }', "checkpoint.sha256 must be 64 hex digits, not 'abc' (str)"),
    ("checkpoint", f'{{ path = 5, sha256 = "{HEX}" }}', "checkpoint.path must be a non-empty string, not 5 (int)"),
    ("checkpoint", f'{{ path = "w.pt", sha256 = "{HEX}", size = 3 }}', "checkpoint has unknown field(s) size"),
    ("target_input_sizes", "224", "target_input_sizes must be a table of TARGET = SIZE, not 224 (int)"),
    ("target_input_sizes", '{ server = "72" }', "target_input_sizes.server must be a positive integer, not '72' (str)"),
    ("target_input_sizes", "{ server = true }", "target_input_sizes.server must be a positive integer, not True"),
    ("seed", '"0"', "seed must be an integer, not '0' (str)"),
    ("seed", "1.5", "seed must be an integer, not 1.5 (float)"),
    ("seed", "true", "seed must be an integer, not True (bool)"),
    ("description", "5", "description must be a string, not 5 (int)"),
    ("tags", '"tiny"', "tags must be a table of strings, not 'tiny' (str)"),
    ("tags", "{ tier = 1 }", "tags must be a table of strings, not {'tier': 1} (dict)"),
    ("override", '"yes"', "override must be true or false, not 'yes' (str)"),
    ("colour", '"red"', "unknown field(s) colour"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_bad_value_is_refused_naming_field_and_value(write_registry, field, value, message):
    err = refusal(write_registry, with_fields(MODEL, **{field: value}))
    assert message in str(err)
    assert str(err).startswith("model 'm' in ")


# (field, TOML value, the spec attribute's value)
GOOD = [
    ("head_dropout", "0", 0.0),
    ("mean", "[0, 0, 1]", (0.0, 0.0, 1.0)),
    ("std", "[1, 0.5, 2]", (1.0, 0.5, 2.0)),
    ("head", "[]", ()),
    ("normalize", "false", False),
    ("seed", "-1", -1),
    ("tags", '{ tier = "tiny", product = "cards" }', {"tier": "tiny", "product": "cards"}),
    ("target_input_sizes", "{ server = 80 }", {"server": 80}),
    ("architecture_args", "{ patch_size = 8 }", {"patch_size": 8}),
]


@pytest.mark.parametrize("field, value, expected", GOOD, ids=[f"{f}={v}" for f, v, _ in GOOD])
def test_good_value_is_taken_as_written(write_registry, field, value, expected):
    spec = load_registry([write_registry(with_fields(MODEL, **{field: value}))]).get("m")
    assert getattr(spec, field) == expected
    assert type(getattr(spec, field)) is type(expected)


def test_reference_model_tags_are_accepted(registry):
    assert registry.get("convnext_tiny").tags["device"] == "hailo8l"
    assert registry.get("tiny_vit").tags == {"tier": "tiny"}


def test_every_problem_of_a_model_in_one_error(write_registry):
    text = with_fields(MODEL, input_size='"224"', teacher="5", head='"12"', normalize='"yes"', colour='"red"')
    message = str(refusal(write_registry, text))
    for part in (
        "unknown field(s) colour",
        "input_size must be a positive integer, not '224' (str)",
        "teacher must be a model name (a non-empty string), not 5 (int)",
        "head must be a list of positive integers, not '12' (str)",
        "normalize must be true or false, not 'yes' (str)",
    ):
        assert part in message
    assert message.count("model 'm' in ") == 1


def test_every_problem_of_a_file_in_one_error(write_registry):
    text = (
        "version = 2\n"
        + with_fields(MODEL, input_size='"224"')
        + with_fields(MODEL.replace("models.m", "models.other"), seed='"1"')
        + "[models.plain]\nrole = 'student'\n"
    )
    err = refusal(write_registry, text)
    message = str(err)
    assert "unknown top-level key(s) version" in message
    assert "model 'm' in " in message and "input_size must be" in message
    assert "model 'other' in " in message and "seed must be an integer" in message
    assert "model 'plain' in " in message and "missing field(s) architecture, embedding_dim" in message
    assert "[models.NAME], [targets.NAME], [profiles.NAME] and [pipelines.NAME] tables" in err.hint


def test_every_problem_across_files_in_one_error(write_registry):
    a = write_registry(with_fields(MODEL, input_size='"224"'), "a.toml")
    b = write_registry(with_fields(MODEL.replace("models.m", "models.n"), seed='"1"'), "b.toml")
    with pytest.raises(UsageError) as err:
        load_registry([a, b])
    assert str(a) in str(err.value) and str(b) in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[models]\nx = 5\n", "model 'x' in {path}: must be a table of fields ([models.x]), not 5 (int)"),
        ("models = 5\n", "registry file {path}: models must be a table of [models.NAME] tables, not 5 (int)"),
        ("[model.x]\nrole = 'teacher'\n", "registry file {path}: unknown top-level key(s) model"),
        ("role = 'teacher'\n", "registry file {path}: unknown top-level key(s) role"),
        ("", "registry file {path} has no [models.NAME] tables"),
        ('[models."../up"]\n' + MODEL.split("\n", 2)[2], "the name '../up' must be letters, digits"),
        ("[models.a.b]\n" + MODEL.split("\n", 2)[2], "model 'a' in {path}: unknown field(s) b"),
    ],
)
def test_malformed_file_is_refused(write_registry, text, message):
    path = write_registry(text)
    err = refusal(write_registry, text)
    assert message.format(path=path) in str(err)


def test_targets_tables_are_left_to_the_targets_loader(write_registry):
    targets = '[targets.mine]\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\n'
    assert "m" in load_registry([write_registry(MODEL + targets, "both.toml")]).names()
    assert "m" not in load_registry([write_registry(targets, "targets.toml")]).names()


@pytest.mark.parametrize("position", ["before", "after"])
def test_cli_exits_2_with_every_problem_on_one_line(write_registry, capsys, position):
    from zoo.cli import main

    path = write_registry(with_fields(MODEL, input_size='"224"', teacher="5"))
    argv = ["list", "models"]
    argv = ["--registry", str(path), *argv] if position == "before" else [*argv, "--registry", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[0]
    assert line.startswith(f"zoo: error: model 'm' in {path}: ")
    assert "input_size must be a positive integer, not '224' (str)" in line
    assert "teacher must be a model name (a non-empty string), not 5 (int)" in line


# --- per-target input sizes against the architecture -------------------------------------------


def test_every_target_input_size_meets_the_patch_size():
    from zoo.models import build_model

    spec = tiny_spec(target_input_sizes={"server": 72, "android": 80, "ios": 100})  # test_vit: 16-px patches
    with pytest.raises(UsageError) as err:
        build_model(spec)
    message = str(err.value)
    assert "input size 72 for target 'server' is not divisible by the patch size 16 of timm:test_vit" in message
    assert "input size 100 for target 'ios' is not divisible by the patch size 16" in message
    assert "android" not in message
    assert err.value.hint == "use 96 or 112 for target 'ios'; use 64 or 80 for target 'server'"


def test_own_and_target_sizes_are_reported_together():
    from zoo.models import build_model

    with pytest.raises(UsageError) as err:
        build_model(tiny_spec(input_size=60, target_input_sizes={"server": 8}))
    assert "input size 60 is not divisible" in str(err.value)
    assert "input size 8 for target 'server' is not divisible" in str(err.value)
    assert err.value.hint == "use 48 or 64; use 16 for target 'server'"


def test_target_input_sizes_that_fit_build():
    from zoo.models import build_model

    assert build_model(tiny_spec(target_input_sizes={"server": 80})).head[0].out_features == 16


# --- roles ---------------------------------------------------------------------------------------

EMBEDDER = with_fields(MODEL.replace("models.m", "models.dogs").replace('role = "teacher"\n', ""))


def test_a_model_without_role_is_an_embedder(write_registry, capsys):
    from zoo.cli import main

    path = write_registry(EMBEDDER)
    assert load_registry([path]).get("dogs").role == "embedder"
    assert main(["list", "models", "--registry", str(path)]) == 0
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines() if line.startswith("dogs ")] == [
        ["dogs", "embedder", "—"]
    ]


def test_an_embedder_names_no_teacher(write_registry):
    err = refusal(write_registry, with_fields(EMBEDDER, teacher='"tiny_teacher"'))
    assert "an embedder (the role when none is given) names no teacher, not 'tiny_teacher'" in str(err)
    assert 'role = "student"' in err.hint


@pytest.mark.parametrize("teacher", ["dogs", "tiny_vit"])  # an embedder, a student
def test_a_teacher_has_the_teacher_role(write_registry, teacher):
    student = with_fields(MODEL.replace("models.m", "models.pupil"), role='"student"', teacher=f'"{teacher}"')
    err = refusal(write_registry, EMBEDDER + student)
    role = "embedder" if teacher == "dogs" else "student"
    assert f"model 'pupil' names teacher {teacher!r}, whose role is {role!r}, not 'teacher'" in str(err)
    assert f'set role = "teacher" on {teacher!r}' in err.hint


def test_every_teacher_problem_in_one_error(write_registry):
    a = with_fields(MODEL.replace("models.m", "models.a"), role='"student"', teacher='"tiny_teachr"')
    b = with_fields(MODEL.replace("models.m", "models.b"), role='"student"', teacher='"tiny_vit"')
    err = refusal(write_registry, a + b)
    assert "model 'a' names teacher 'tiny_teachr', which is not registered" in str(err)
    assert "model 'b' names teacher 'tiny_vit', whose role is 'student'" in str(err)
    assert "did you mean 'tiny_teacher'" in err.hint


# --- paths are absolute in the spec --------------------------------------------------------------


def test_relative_checkpoint_path_works_from_another_directory(tmp_path, monkeypatch):
    from zoo.distillation import save_weights
    from zoo.models import build_model

    source = build_model(tiny_spec("m"))
    (tmp_path / "my").mkdir()
    sha = save_weights(source, tmp_path / "my" / "w.safetensors")
    (tmp_path / "my" / "reg.toml").write_text(
        with_fields(MODEL, checkpoint=f'{{ path = "w.safetensors", sha256 = "{sha}" }}', architecture='"net.onnx"')
    )
    monkeypatch.chdir(tmp_path)
    spec = load_registry(["my/reg.toml"]).get("m")
    assert spec.checkpoint.path == tmp_path / "my" / "w.safetensors"
    assert spec.architecture == str(tmp_path / "my" / "net.onnx")

    # a manifest's spec (to_dict without name and source) is rebuilt as it was, from anywhere
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    fields = {k: v for k, v in spec.to_dict().items() if k not in ("name", "source")}
    assert spec_from_dict("m", fields) == dataclasses.replace(spec, source="")

    # ... and the weights load from there
    loaded = build_model(dataclasses.replace(spec, architecture="timm:test_vit")).state_dict()
    assert all(tensor.equal(loaded[key]) for key, tensor in source.state_dict().items())

    # the registry file is still written with paths relative to it
    text = spec_to_toml(spec, relative_to=tmp_path / "my")
    assert 'path = "w.safetensors"' in text and 'architecture = "net.onnx"' in text


def test_rewriting_a_registry_file_keeps_its_targets(write_registry):
    targets = '[targets.mine]\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\ninput_size = 96\n'
    path = write_registry(MODEL + targets)
    upsert_registry_file(path, tiny_spec("n"))
    assert {"m", "n"} <= set(load_registry([path]).names())
    text = path.read_text()
    assert '[targets.mine]\nchain = ["torch_to_onnx"]\nruntime = "onnxruntime"\ninput_size = 96\n' in text


WIDTH_FACTORY = """
import torch

def factory(input_size, width=4):
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
"""


def test_a_factory_takes_the_architecture_args(write_registry, factory_module):
    from zoo.models import build_backbone

    factory_module("width_factory", WIDTH_FACTORY)
    common = 'role = "teacher"\narchitecture = "width_factory:factory"\ninput_size = 32\nembedding_dim = {}\nembedding_space = "s"\n'
    path = write_registry(
        "[models.wide]\n" + common.format(6) + "architecture_args = { width = 6 }\n"
        "[models.refused]\n" + common.format(4) + "architecture_args = { depth = 3 }\n"
    )
    registry = load_registry([path])
    assert build_backbone(registry.get("wide"))[0].out_channels == 6
    with pytest.raises(UsageError, match="refuses architecture_args") as refused:
        build_backbone(registry.get("refused"))
    assert "\n" not in str(refused.value)
