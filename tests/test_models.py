import pytest
import torch
from conftest import tiny_spec

from zoo.checkpoints import sha256_file
from zoo.errors import CheckpointError, UsageError
from zoo.models import build_model


def spec(**overrides):
    return tiny_spec(overrides.pop("name", "m"), **overrides)


def test_timm_models_build_with_this_torchvision():
    from zoo._torchvision_compat import import_timm

    timm = import_timm()
    for name in ("test_vit", "test_convnext", "test_efficientnet"):
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 64, 64))
        assert out.shape[0] == 2 and out.shape[1] == model.num_features


def test_feature_size_is_probed_not_read():
    # mobilenetv3 with num_classes=0 outputs its conv_head width (here 1024), not num_features (576).
    model = build_model(spec(architecture="timm:mobilenetv3_small_100", input_size=64, head=[8], embedding_dim=8))
    assert model.backbone.num_features != model.head[0].in_features == 1024


def test_embedding_is_unit_norm_with_the_stated_dim():
    model = build_model(spec(head=[24, 16], head_dropout=0.1))
    out = model(torch.randn(3, 3, 64, 64)).detach()
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-6)
    assert [type(m).__name__ for m in model.head] == ["Linear", "GELU", "Dropout", "Linear"]


def test_untrained_weights_are_deterministic_and_per_model():
    a = build_model(spec(name="m"))
    b = build_model(spec(name="m"))
    c = build_model(spec(name="other"))
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))


def test_input_size_not_divisible_by_patch_is_refused():
    with pytest.raises(UsageError) as err:
        build_model(spec(architecture="timm:vit_small_patch16_dinov3", input_size=518, head=[16]))
    assert "not divisible by the patch size 16" in str(err.value)
    assert "512" in err.value.hint and "528" in err.value.hint


def test_product_teacher_size_is_valid(registry):
    from zoo._torchvision_compat import import_timm
    from zoo.models import check_input_size

    teacher = registry.get("dinov3_vitl16")
    with torch.device("meta"):
        backbone = import_timm().create_model(
            teacher.timm_name, pretrained=False, num_classes=0, img_size=teacher.input_size
        )
    check_input_size(teacher, backbone)  # 512 = 32 patches of 16
    assert teacher.input_size % 16 == 0 and backbone.num_features == 1024


def test_no_head_needs_matching_backbone_width():
    with pytest.raises(UsageError, match="outputs 64 features"):
        build_model(spec(head=[], embedding_dim=16))


# --- checkpoints -------------------------------------------------------------------------------


def _save(model, path):
    if path.suffix == ".safetensors":
        from zoo.distillation import save_weights

        return {"path": str(path), "sha256": save_weights(model, path)}
    torch.save(model.state_dict(), path)
    return {"path": str(path), "sha256": sha256_file(path)}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, suffix):
    source = build_model(spec(name="source"))
    ck = _save(source, tmp_path / f"w{suffix}")
    loaded = build_model(spec(name="other", checkpoint=ck))
    untrained = build_model(spec(name="other"))  # the same model without the checkpoint differs
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(source(x), loaded(x))
    assert torch.nn.functional.cosine_similarity(source(x), loaded(x)).min().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.nn.functional.cosine_similarity(source(x), untrained(x)).max().item() < 0.99
    state, saved = loaded.state_dict(), source.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert not all(torch.equal(untrained.state_dict()[k], saved[k]) for k in saved)
    assert spec(checkpoint=ck).trained and not spec().trained


def test_tampered_checkpoint_fails_on_sha(tmp_path):
    ck = _save(build_model(spec()), tmp_path / "w.safetensors")
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        build_model(spec(checkpoint=ck))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint_is_unreadable(tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    _save(build_model(spec()), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be read"):
        build_model(spec(checkpoint={"path": str(path), "sha256": sha256_file(path)}))


class Boom:
    def __reduce__(self):
        return (eval, ("__import__('os').getpid()",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "payload": Boom()}, path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        build_model(spec(checkpoint={"path": str(path), "sha256": sha256_file(path)}))


def test_wrong_keys_are_listed(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in build_model(spec()).state_dict().items()}
    state.pop("head.0.bias")
    state["head.9.weight"] = torch.zeros(1)
    state["head.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        build_model(spec(checkpoint={"path": str(path), "sha256": sha256_file(path)}))
    message = str(err.value)
    assert "missing 1 key(s): head.0.bias" in message
    assert "unexpected 1 key(s): head.9.weight" in message
    assert "head.0.weight (3, 3)≠(16, 64)" in message


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(spec(checkpoint={"path": str(tmp_path / "nope.safetensors"), "sha256": "0" * 64}))
