"""The model registry: model specs are data (TOML), gathered from three places.

1. the specs shipped in `zoo/reference_models/*.toml`;
2. third-party packages, through the entry-point group `zoo.registries` (each entry point is a
   callable returning paths to TOML files, or a path itself);
3. user files, from `--registry PATH` and the `ZOO_REGISTRY` environment variable
   (paths separated by the OS path separator).

A later source may not silently replace an earlier model: a duplicate name is an error unless the
user file sets `override = true` on that model.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path

from zoo.errors import UsageError, unknown_name

ENTRY_POINT_GROUP = "zoo.registries"
ENV_VAR = "ZOO_REGISTRY"
ROLES = ("teacher", "student")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str  # teacher | student
    architecture: str  # "timm:NAME" (or a bare timm name), "module:function", or "path/to/model.onnx"
    embedding_dim: int
    input_size: int
    embedding_space: str
    teacher: str | None = None
    architecture_args: dict = field(default_factory=dict)  # keyword arguments for timm (e.g. patch_size)
    head: tuple[int, ...] = ()  # projection head widths after the backbone; the last equals embedding_dim
    head_dropout: float = 0.0
    normalize: bool = True  # L2-normalize the embedding inside the model
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    checkpoint: Checkpoint | None = None
    target_input_sizes: dict = field(default_factory=dict)  # per-target overrides, e.g. {hailo8l = 224}
    seed: int = 0  # for deterministic untrained weights
    description: str = ""
    tags: dict = field(default_factory=dict)
    source: str = ""  # the registry file this spec came from

    @property
    def architecture_kind(self) -> str:
        if self.architecture.endswith(".onnx"):
            return "onnx"
        if self.architecture.startswith("timm:") or ":" not in self.architecture:
            return "timm"
        return "factory"

    @property
    def timm_name(self) -> str:
        return self.architecture.removeprefix("timm:")

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def weights_label(self) -> str:
        if self.checkpoint is None:
            return "untrained weights (no checkpoint; deterministic seeded init)"
        return f"checkpoint {self.checkpoint.path.name} sha256:{self.checkpoint.sha256[:12]}…"

    def input_size_for(self, target) -> int:
        """The model's own override for this target, else the target's size, else the model's."""
        return int(self.target_input_sizes.get(target.name) or target.input_size or self.input_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head"] = list(self.head)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.checkpoint is not None:
            d["checkpoint"] = {"path": str(self.checkpoint.path), "sha256": self.checkpoint.sha256}
        return d


def spec_from_dict(name: str, data: dict, source: Path | str = "") -> ModelSpec:
    """Build a ModelSpec from one TOML table, with a readable error for each problem."""
    where = f"model {name!r} in {source}" if source else f"model {name!r}"
    data = dict(data)
    data.pop("override", None)
    known = {f for f in ModelSpec.__dataclass_fields__} - {"name", "source"}
    extra = sorted(set(data) - known)
    if extra:
        raise UsageError(f"{where}: unknown field(s) {', '.join(extra)}", hint="fields: " + ", ".join(sorted(known)))
    missing = [f for f in ("role", "architecture", "embedding_dim", "input_size", "embedding_space") if f not in data]
    if missing:
        raise UsageError(f"{where}: missing field(s) {', '.join(missing)}")
    if data["role"] not in ROLES:
        raise UsageError(f"{where}: role must be one of {', '.join(ROLES)}, not {data['role']!r}")
    base = Path(source).parent if source else Path.cwd()
    checkpoint = None
    if "checkpoint" in data:
        ck = data.pop("checkpoint")
        if not isinstance(ck, dict) or "path" not in ck or "sha256" not in ck:
            raise UsageError(f"{where}: checkpoint needs both 'path' and 'sha256'")
        path = Path(ck["path"]).expanduser()
        checkpoint = Checkpoint(path if path.is_absolute() else base / path, str(ck["sha256"]).lower())
    arch = str(data["architecture"])
    if arch.endswith(".onnx") and not Path(arch).is_absolute():
        data["architecture"] = str(base / arch)
    try:
        spec = ModelSpec(
            name=name,
            checkpoint=checkpoint,
            head=tuple(int(w) for w in data.pop("head", ())),
            mean=tuple(float(v) for v in data.pop("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in data.pop("std", IMAGENET_STD)),
            source=str(source),
            **data,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: {exc}") from exc
    _check_spec(spec, where)
    return spec


def _check_spec(spec: ModelSpec, where: str) -> None:
    if spec.embedding_dim <= 0 or spec.input_size <= 0:
        raise UsageError(f"{where}: embedding_dim and input_size must be positive")
    if spec.architecture_args and spec.architecture_kind != "timm":
        raise UsageError(f"{where}: architecture_args are passed to timm; {spec.architecture} is not a timm model")
    if spec.head and spec.head[-1] != spec.embedding_dim:
        raise UsageError(
            f"{where}: the projection head ends at {spec.head[-1]} but embedding_dim is {spec.embedding_dim}"
        )
    if len(spec.mean) != 3 or len(spec.std) != 3 or any(s <= 0 for s in spec.std):
        raise UsageError(f"{where}: mean and std need three values each, std > 0")
    if spec.role == "student" and not spec.teacher:
        raise UsageError(f"{where}: a student names its teacher")


class Registry:
    """Model specs by name, with where each came from."""

    def __init__(self, specs: Iterable[ModelSpec] = ()):
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)

    def add(self, spec: ModelSpec, override: bool = False) -> None:
        if spec.name in self._specs and not override:
            raise UsageError(
                f"model {spec.name!r} from {spec.source} is already registered by {self._specs[spec.name].source}",
                hint="rename it, or set `override = true` on it to replace the earlier one",
            )
        self._specs[spec.name] = spec

    def add_file(self, path: Path) -> None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"registry file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"registry file {path} is not valid TOML: {exc}") from None
        models = data.get("models")
        if not isinstance(models, dict):
            raise UsageError(f"registry file {path} has no [models.NAME] tables")
        for name, table in models.items():
            self.add(spec_from_dict(name, table, path), override=bool(table.get("override", False)))

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise unknown_name("model", name, self._specs) from None

    def teacher_of(self, spec: ModelSpec) -> ModelSpec | None:
        return self.get(spec.teacher) if spec.teacher else None

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)

    def check_teachers(self) -> None:
        for spec in self._specs.values():
            if spec.teacher and spec.teacher not in self._specs:
                err = unknown_name("model", spec.teacher, self._specs)
                raise UsageError(
                    f"model {spec.name!r} names teacher {spec.teacher!r}, which is not registered", err.hint
                )


def builtin_registry_files() -> list[Path]:
    root = resources.files("zoo.reference_models")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def _entry_point_files() -> list[Path]:
    files: list[Path] = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        result = obj() if callable(obj) else obj
        if isinstance(result, (str, Path)):
            result = [result]
        files.extend(Path(p) for p in result)
    return files


def load_registry(extra_paths: Sequence[Path | str] = ()) -> Registry:
    """The built-in specs, then entry-point registries, then ZOO_REGISTRY, then explicit paths."""
    registry = Registry()
    env_paths = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    for path in [*builtin_registry_files(), *_entry_point_files(), *env_paths, *extra_paths]:
        path = Path(path)
        for file in sorted(path.glob("*.toml")) if path.is_dir() else [path]:
            registry.add_file(file)
    registry.check_teachers()
    return registry


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def spec_to_toml(spec: ModelSpec, *, override: bool = False, relative_to: Path | None = None) -> str:
    """One `[models.NAME]` table; checkpoint paths relative to `relative_to` when given."""
    d = spec.to_dict()
    name = d.pop("name")
    d.pop("source")
    if d.get("checkpoint") and relative_to is not None:
        path = Path(d["checkpoint"]["path"])
        try:
            d["checkpoint"]["path"] = str(path.resolve().relative_to(Path(relative_to).resolve()))
        except ValueError:
            pass
    lines = [f"[models.{name}]"]
    if override:
        lines.append("override = true")
    for key, value in d.items():
        if value is None or value == {} or value == "" or (key == "seed" and value == 0):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def upsert_registry_file(path: Path, spec: ModelSpec, *, override: bool = False) -> None:
    """Add (or replace) one model's table in a user registry file, atomically."""
    import os

    path = Path(path)
    tables: dict[str, str] = {}
    if path.exists():
        current = tomllib.loads(path.read_text())
        for name, table in current.get("models", {}).items():
            if name != spec.name:
                tables[name] = spec_to_toml(
                    spec_from_dict(name, table, path), override=bool(table.get("override")), relative_to=path.parent
                )
    tables[spec.name] = spec_to_toml(spec, override=override, relative_to=path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("# zoo model registry (written by zoo)\n\n" + "\n".join(tables[n] for n in sorted(tables)))
    os.replace(tmp, path)
