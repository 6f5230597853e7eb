from pathlib import Path

import pytest

from zoo.errors import UsageError
from zoo.registry import load_registry

PRODUCT = {
    # name: (role, teacher, embedding_dim, input_size, head)
    "dinov3_vitl16": ("teacher", None, 768, 512, (768, 768)),
    "convnext_tiny": ("student", "dinov3_vitl16", 768, 224, (768,)),
    "convnext_base": ("student", "dinov3_vitl16", 768, 384, (768,)),
    "vit_small": ("student", "dinov3_vitl16", 768, 224, (768,)),
    "dog_mobilenetv3": ("teacher", None, 512, 224, (512,)),
    "dog_efficientnet_b0": ("teacher", None, 512, 224, (512,)),
}


@pytest.mark.parametrize("name", sorted(PRODUCT))
def test_product_models_registered(registry, name):
    spec = registry.get(name)
    role, teacher, dim, size, head = PRODUCT[name]
    assert (spec.role, spec.teacher, spec.embedding_dim, spec.input_size, spec.head) == (role, teacher, dim, size, head)
    if teacher:
        assert registry.get(teacher).embedding_space == spec.embedding_space
    assert spec.tags["derivative_type"] in ("whole_image", "face")


def test_unknown_model_names_the_closest(registry):
    with pytest.raises(UsageError) as err:
        registry.get("convnext_tin")
    assert "convnext_tiny" in err.value.hint


MODEL = """
[models.{name}]
role = "teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "user-16"
"""


def test_user_registry_by_path_and_env(write_registry, monkeypatch):
    a = write_registry(MODEL.format(name="mine_a"), "a.toml")
    b = write_registry(MODEL.format(name="mine_b"), "b.toml")
    monkeypatch.setenv("ZOO_REGISTRY", str(b))
    reg = load_registry([a])
    assert {"mine_a", "mine_b", "convnext_tiny"} <= set(reg.names())
    assert reg.get("mine_a").source == str(a)


def test_entry_point_registry(write_registry, monkeypatch):
    from importlib import metadata

    path = write_registry(MODEL.format(name="plugin_model"))

    class FakeEntryPoint:
        name = "plugin"

        def load(self):
            return lambda: [path]

    real = metadata.entry_points
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda group=None, **kw: [FakeEntryPoint()] if group == "zoo.registries" else real(group=group, **kw),
    )
    assert load_registry().get("plugin_model").embedding_dim == 16


def test_duplicate_name_needs_override(write_registry):
    clash = write_registry(MODEL.format(name="convnext_tiny"))
    with pytest.raises(UsageError, match="already registered"):
        load_registry([clash])
    allowed = write_registry(MODEL.format(name="convnext_tiny") + "override = true\n", "ok.toml")
    assert load_registry([allowed]).get("convnext_tiny").embedding_dim == 16


def test_a_registry_file_named_twice_is_read_once(write_registry):
    import zoo.reference_models

    builtin = Path(zoo.reference_models.__file__).parent / "coverage.toml"
    user = write_registry(MODEL.format(name="mine"))
    registry = load_registry([builtin, user, user])
    assert registry.get("cov_swin").input_size == 224 and registry.get("mine").embedding_dim == 16


@pytest.mark.parametrize(
    "patch, message",
    [
        ('role = "professor"', "role must be one of"),
        ("embedding_dim = 8", "head ends at 16"),
        ('colour = "red"', "unknown field"),
        ('role = "student"', "names its teacher"),
    ],
)
def test_bad_specs_are_refused(write_registry, patch, message):
    text = MODEL.format(name="bad")
    key = patch.split(" = ")[0]
    lines = [line for line in text.splitlines() if not line.startswith(key + " ")] + [patch]
    with pytest.raises(UsageError, match=message):
        load_registry([write_registry("\n".join(lines))])


def test_unknown_teacher_is_refused(write_registry):
    text = MODEL.format(name="orphan").replace('role = "teacher"', 'role = "student"\nteacher = "dinov3_vitl1"')
    with pytest.raises(UsageError, match="not registered") as err:
        load_registry([write_registry(text)])
    assert "dinov3_vitl16" in err.value.hint


def test_invalid_toml(write_registry):
    with pytest.raises(UsageError, match="not valid TOML"):
        load_registry([write_registry("[models.x\nrole=")])


def test_architecture_args_reach_timm(write_registry):
    from zoo.errors import UsageError
    from zoo.models import build_model
    from zoo.registry import load_registry

    path = write_registry(
        """
[models.vit_p8]
role = "teacher"
architecture = "timm:test_vit"
architecture_args = { patch_size = 8 }
input_size = 64
embedding_dim = 64
embedding_space = "x"

[models.vit_bad]
role = "teacher"
architecture = "timm:test_vit"
architecture_args = { no_such_option = 1 }
input_size = 64
embedding_dim = 64
embedding_space = "x"
"""
    )
    registry = load_registry([path])
    backbone = build_model(registry.get("vit_p8")).backbone
    assert backbone.patch_embed.num_patches == 64  # (64 / 8)², not (64 / 16)² = 16
    with pytest.raises(UsageError, match="no_such_option"):
        build_model(registry.get("vit_bad"))
