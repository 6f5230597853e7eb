import os
import tempfile
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning)
os.environ.pop("ZOO_REGISTRY", None)  # tests see only the registries they ask for
SHARED_CACHE = Path(tempfile.mkdtemp(prefix="zoo-test-cache-"))  # never the user's cache
os.environ["ZOO_CACHE"] = str(SHARED_CACHE)


def pytest_sessionfinish(session, exitstatus):
    # "no tests collected" (e.g. a -k filter that matches nothing) is not a failure of the code.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


@pytest.fixture(autouse=True)
def _own_conversion_cache(tmp_path_factory, monkeypatch):
    """Each test its own cache of steps and conversions (a test that plants a fault in a converter
    must not be served an earlier test's good artifact); teacher embeddings stay shared, as they only
    depend on what their key says."""
    own = tmp_path_factory.mktemp("zoo-cache")
    (SHARED_CACHE / "teacher-embeddings").mkdir(exist_ok=True)
    (own / "teacher-embeddings").symlink_to(SHARED_CACHE / "teacher-embeddings")
    monkeypatch.setenv("ZOO_CACHE", str(own))


@pytest.fixture(scope="session")
def registry():
    from zoo.registry import load_registry

    return load_registry()


@pytest.fixture
def write_registry(tmp_path):
    """Write a user registry TOML file and return its path."""

    def write(text: str, name: str = "user.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """Write a Python module a registry's `module:function` architecture can name, importable here and in
    the child processes zoo starts."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        return path

    return write


def tiny_models():
    from zoo.registry import load_registry

    return [s.name for s in load_registry() if s.tags.get("tier") == "tiny"]


def ready_targets():
    from zoo.converters import missing_steps
    from zoo.targets import load_targets

    return [t.name for t in load_targets().values() if not missing_steps(t)]


def tiny_spec(name: str = "m", **overrides):
    """A teacher spec on a tiny timm architecture (64 px, 16-d), with fields overridden as given."""
    from zoo.registry import spec_from_dict

    fields = dict(
        role="teacher", architecture="timm:test_vit", input_size=64, head=[16], embedding_dim=16, embedding_space="s"
    )
    fields.update(overrides)
    return spec_from_dict(name, fields)


CHECKPOINTED_TEACHER = """
[models.{name}]
role = "teacher"
architecture = "timm:test_convnext"
input_size = 64
head = [16]
embedding_dim = 16
embedding_space = "{name}-16"
checkpoint = {{ path = "{path}", sha256 = "{sha}" }}
"""


def teacher_block(name: str, checkpoint: Path) -> str:
    """The registry block of tiny teacher `name` whose weights are the file `checkpoint`."""
    from zoo.checkpoints import sha256_file

    return CHECKPOINTED_TEACHER.format(name=name, path=checkpoint, sha=sha256_file(checkpoint))


def checkpointed_teacher(folder: Path, name: str, seed: int | None = None) -> str:
    """A tiny teacher with its own checkpoint (FOLDER/NAME.safetensors), as a registry block; with
    `seed`, its weights are nudged by seeded noise, so teachers made with different seeds differ."""
    import torch

    from zoo.distillation import save_weights
    from zoo.models import build_model

    net = build_model(tiny_spec(name, architecture="timm:test_convnext", embedding_space=f"{name}-16"))
    if seed is not None:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.01)
    path = Path(folder) / f"{name}.safetensors"
    save_weights(net, path)
    return teacher_block(name, path)
