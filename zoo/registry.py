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
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata, resources
from pathlib import Path

from zoo.errors import UsageError, unknown_name

ENTRY_POINT_GROUP = "zoo.registries"
ENV_VAR = "ZOO_REGISTRY"
ROLES = ("teacher", "student", "embedder")  # embedder: neither teaches nor is distilled
CLASH_HINT = "rename it, or set `override = true` on it to replace the earlier one"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    role: str  # teacher | student | embedder (the default in a registry file)
    architecture: str  # "timm:NAME" (or a bare timm name), "module:function", or "path/to/model.onnx"
    embedding_dim: int
    input_size: int
    embedding_space: str
    teacher: str | None = None
    architecture_args: dict = field(default_factory=dict)  # keyword arguments for timm or a factory (e.g. patch_size)
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
    eval_set: str = ""  # evaluation set (folder or index file) teacher parity runs on; "" = the teacher's or built-in
    acceptance: str = ""  # acceptance profile (zoo.profiles) the artifacts are judged by; "" = the teacher's
    # per target, torch module paths its int8 step leaves in float (what `zoo diagnose --suggest` measures)
    float_modules: dict = field(default_factory=dict)
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


NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name, and a bare TOML key
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
TOP_LEVEL_KEYS = ("models", "targets", "profiles", "pipelines")  # read by zoo.targets, zoo.profiles, zoo.detection.spec


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # TOML's true is not 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _is_text(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _is_triple(v, ok) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(ok(x) for x in v)


# field: (is the value acceptable, what an acceptable value is). checkpoint and target_input_sizes
# are checked part by part in _field_problems, to name the part that is wrong.
FIELD_RULES = {
    "role": (lambda v: isinstance(v, str) and v in ROLES, "one of " + ", ".join(ROLES)),
    "architecture": (_is_text, "a non-empty string"),
    "embedding_dim": (_is_positive_int, "a positive integer"),
    "input_size": (_is_positive_int, "a positive integer"),
    "embedding_space": (_is_text, "a non-empty string"),
    "teacher": (_is_text, "a model name (a non-empty string)"),
    "architecture_args": (lambda v: isinstance(v, dict), "a table"),
    "head": (lambda v: isinstance(v, (list, tuple)) and all(map(_is_positive_int, v)), "a list of positive integers"),
    "head_dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "normalize": (lambda v: isinstance(v, bool), "true or false"),
    "mean": (lambda v: _is_triple(v, _is_number), "a list of 3 numbers"),
    "std": (lambda v: _is_triple(v, lambda x: _is_number(x) and x > 0), "a list of 3 positive numbers"),
    "seed": (_is_int, "an integer"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "tags": (lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()), "a table of strings"),
    "override": (lambda v: isinstance(v, bool), "true or false"),
    "eval_set": (_is_text, "a path to an evaluation-set folder or index file"),
    "acceptance": (lambda v: isinstance(v, str) and NAME_CHARS.fullmatch(v), "an acceptance profile name"),
    "float_modules": (
        lambda v: (
            isinstance(v, dict) and all(isinstance(m, list) and m and all(_is_text(x) for x in m) for m in v.values())
        ),
        'a table of TARGET = ["module.path", …] (non-empty lists of module paths)',
    ),
}
OPTIONAL_TEXT = ("eval_set", "acceptance")
REQUIRED = ("architecture", "embedding_dim", "input_size", "embedding_space")


def _shown(value) -> str:
    """A value as an error message quotes it: its repr (cut short) and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _field_problems(data: dict) -> list[str]:
    """Every field whose type or range is wrong, each as 'FIELD must be WHAT, not VALUE (TYPE)'."""
    problems = []
    for key, (ok, what) in FIELD_RULES.items():
        if key in data and not ok(data[key]):
            problems.append(f"{key} must be {what}, not {_shown(data[key])}")
    ck = data.get("checkpoint")
    if "checkpoint" in data and not isinstance(ck, dict):
        problems.append(f"checkpoint must be a table {{ path = ..., sha256 = ... }}, not {_shown(ck)}")
    elif isinstance(ck, dict):
        extra = sorted(set(ck) - {"path", "sha256"})
        if extra:
            problems.append(f"checkpoint has unknown field(s) {', '.join(extra)} (it takes path and sha256)")
        missing = [key for key in ("path", "sha256") if key not in ck]
        if missing:
            problems.append(f"checkpoint needs {' and '.join(missing)}")
        if "path" in ck and not _is_text(ck["path"]):
            problems.append(f"checkpoint.path must be a non-empty string, not {_shown(ck['path'])}")
        if "sha256" in ck and not (isinstance(ck["sha256"], str) and SHA256.fullmatch(ck["sha256"])):
            problems.append(f"checkpoint.sha256 must be 64 hex digits, not {_shown(ck['sha256'])}")
    sizes = data.get("target_input_sizes")
    if "target_input_sizes" in data and not isinstance(sizes, dict):
        problems.append(f"target_input_sizes must be a table of TARGET = SIZE, not {_shown(sizes)}")
    elif isinstance(sizes, dict):
        for target, size in sizes.items():
            if not _is_positive_int(size):
                problems.append(f"target_input_sizes.{target} must be a positive integer, not {_shown(size)}")
    return problems


def _spec_problems(data: dict) -> tuple[list[str], list[str]]:
    """(problems, hints) of one model's table: unknown and missing fields, wrong types and ranges,
    and fields that do not fit together."""
    known = sorted(set(ModelSpec.__dataclass_fields__) - {"name", "source"})
    problems, hints = [], []
    extra = sorted(set(data) - set(known) - {"override"})
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
        hints.append("fields: " + ", ".join(known) + ", override")
    missing = [f for f in REQUIRED if f not in data]
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    problems += _field_problems(data)
    if problems:  # the checks below assume well-typed fields
        return problems, hints

    role = data.get("role", "embedder")
    if role == "student" and "teacher" not in data:
        problems.append("a student names its teacher")
        hints.append('add teacher = "NAME", or drop role = "student" for a model that is not distilled')
    if role == "embedder" and "teacher" in data:
        problems.append(f"an embedder (the role when none is given) names no teacher, not {data['teacher']!r}")
        hints.append('set role = "student" on a model distilled from a teacher')
    head = data.get("head", ())
    if head and head[-1] != data["embedding_dim"]:
        problems.append(f"the projection head ends at {head[-1]} but embedding_dim is {data['embedding_dim']}")
    arch = data["architecture"]
    if data.get("architecture_args") and arch.endswith(".onnx"):
        problems.append(f"architecture_args are passed to timm or a factory; {arch} is an exported graph")
    return problems, hints


def _absolute(path: str, base: Path) -> Path:
    """`path` (with ~ expanded) against `base`, absolute, without resolving symlinks."""
    return Path(os.path.abspath(base / Path(path).expanduser()))


def spec_from_dict(name: str, data: dict, source: Path | str = "") -> ModelSpec:
    """Build a ModelSpec from one TOML table; every problem with it in one UsageError.

    Relative checkpoint and .onnx paths are relative to the registry file (`source`), else to the
    current directory; the spec holds them absolute, so it works from any directory.
    """
    where = f"model {name!r} in {source}" if source else f"model {name!r}"
    if not isinstance(data, dict):
        raise UsageError(f"{where}: must be a table of fields ([models.{name}]), not {_shown(data)}")
    # None (never in TOML), and "" for the optional paths and names: not set, as to_dict() writes them
    data = {k: v for k, v in data.items() if v is not None and not (k in OPTIONAL_TEXT and v == "")}
    problems, hints = _spec_problems(data)
    if not (isinstance(name, str) and NAME_CHARS.fullmatch(name)):
        problems.insert(0, f"the name {name!r} must be letters, digits, '_' and '-', starting with a letter or digit")
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems), hint="; ".join(hints) or None)

    base = Path(source).parent if source else Path()
    fields = {k: v for k, v in data.items() if k != "override"}
    if "checkpoint" in fields:
        ck = fields["checkpoint"]
        fields["checkpoint"] = Checkpoint(_absolute(ck["path"], base), ck["sha256"].lower())
    if fields["architecture"].endswith(".onnx"):
        fields["architecture"] = str(_absolute(fields["architecture"], base))
    if fields.get("eval_set"):
        fields["eval_set"] = str(_absolute(fields["eval_set"], base))
    for key in ("architecture_args", "target_input_sizes", "tags"):
        if key in fields:
            fields[key] = dict(fields[key])
    if "float_modules" in fields:
        fields["float_modules"] = {t: list(m) for t, m in fields["float_modules"].items()}
    return ModelSpec(
        name=name,
        role=fields.pop("role", "embedder"),
        head=tuple(fields.pop("head", ())),
        head_dropout=float(fields.pop("head_dropout", 0.0)),
        mean=tuple(float(v) for v in fields.pop("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in fields.pop("std", IMAGENET_STD)),
        source=str(source),
        **fields,
    )


class Registry:
    """Model specs by name, with where each came from."""

    def __init__(self, specs: Iterable[ModelSpec] = ()):
        self._specs: dict[str, ModelSpec] = {}
        self.files: list[Path] = []  # the registry files read besides the built-in ones (they may hold targets)
        for spec in specs:
            self.add(spec)

    def _clash(self, spec: ModelSpec) -> str | None:
        if spec.name in self._specs:
            return f"model {spec.name!r} from {spec.source} is already registered by {self._specs[spec.name].source}"
        return None

    def add(self, spec: ModelSpec, override: bool = False) -> None:
        clash = self._clash(spec)
        if clash and not override:
            raise UsageError(clash, hint=CLASH_HINT)
        self._specs[spec.name] = spec

    def add_file(self, path: Path) -> None:
        """Add every model of a registry file, or none: all of the file's problems in one UsageError."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"registry file {path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"registry file {path} is not valid TOML: {exc}") from None
        problems, hints = [], []
        unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
        if unknown:
            problems.append(f"registry file {path}: unknown top-level key(s) {', '.join(unknown)}")
            hints.append(
                "a registry file holds [models.NAME], [targets.NAME], [profiles.NAME] and [pipelines.NAME] tables"
            )
        models = data.get("models", {})
        if not isinstance(models, dict):
            problems.append(
                f"registry file {path}: models must be a table of [models.NAME] tables, not {_shown(models)}"
            )
            models = {}
        elif not data.keys() & set(TOP_LEVEL_KEYS):
            problems.append(f"registry file {path} has no [models.NAME] tables")
        specs = []
        for name, table in models.items():
            try:
                spec = spec_from_dict(name, table, path)
            except UsageError as exc:
                problems.append(str(exc))
                hints.append(exc.hint)
                continue
            override = table.get("override", False)
            clash = self._clash(spec)
            if clash and not override:
                problems.append(clash)
                hints.append(CLASH_HINT)
            specs.append((spec, override))
        if problems:
            raise UsageError("; ".join(problems), hint="; ".join(dict.fromkeys(h for h in hints if h)) or None)
        for spec, override in specs:
            self.add(spec, override=override)

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
        """Every named teacher is registered and has role "teacher"; all problems in one UsageError."""
        problems, hints = [], []
        for spec in self:
            if not spec.teacher:
                continue
            teacher = self._specs.get(spec.teacher)
            if teacher is None:
                problems.append(f"model {spec.name!r} names teacher {spec.teacher!r}, which is not registered")
                hints.append(unknown_name("model", spec.teacher, self._specs).hint)
            elif teacher.role != "teacher":
                problems.append(
                    f"model {spec.name!r} names teacher {teacher.name!r}, whose role is {teacher.role!r}, not 'teacher'"
                )
                hints.append(
                    f'set role = "teacher" on {teacher.name!r} ({teacher.source or "its registry"}) if it teaches'
                )
        if problems:
            raise UsageError("; ".join(problems), hint="; ".join(hints))


# paths a spec holds absolute; a manifest holds them relative to its own folder
_PATH_FIELDS = ("source", "architecture", "eval_set")


def spec_to_manifest(spec: ModelSpec, root: Path) -> dict:
    """The spec as a manifest records it: every path relative to the output folder `root`, so the
    manifest names no host path and still resolves from any working directory."""

    def relative(path: str) -> str:
        return os.path.relpath(path, os.path.abspath(root)) if path and os.path.isabs(path) else path

    d = spec.to_dict()
    for key in _PATH_FIELDS:
        if key in d and (key != "architecture" or str(d[key]).endswith(".onnx")):
            d[key] = relative(str(d[key]))
    if d.get("checkpoint"):
        d["checkpoint"]["path"] = relative(d["checkpoint"]["path"])
    return d


def spec_from_manifest(d: dict, root: Path) -> ModelSpec:
    """The spec back from `spec_to_manifest`, paths resolved against the manifest's folder."""
    fields = {k: v for k, v in d.items() if k not in ("name", "source") and v is not None}
    if fields.get("checkpoint"):
        fields["checkpoint"] = dict(fields["checkpoint"], path=str(_absolute(fields["checkpoint"]["path"], root)))
    if str(fields.get("architecture", "")).endswith(".onnx"):
        fields["architecture"] = str(_absolute(fields["architecture"], root))
    if fields.get("eval_set"):
        fields["eval_set"] = str(_absolute(fields["eval_set"], root))
    return spec_from_dict(d["name"], fields)


def builtin_registry_files() -> list[Path]:
    root = resources.files("zoo.reference_models")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def entry_point_files(group: str = ENTRY_POINT_GROUP) -> list[Path]:
    """The TOML files an entry-point group's callables (or plain paths) name."""
    files: list[Path] = []
    for ep in metadata.entry_points(group=group):
        obj = ep.load()
        result = obj() if callable(obj) else obj
        if isinstance(result, (str, Path)):
            result = [result]
        files.extend(Path(p) for p in result)
    return files


def registry_files(extra_paths: Sequence[Path | str] = ()) -> list[Path]:
    """The user's registry files: entry-point registries, then ZOO_REGISTRY, then explicit paths
    (a folder stands for the *.toml files in it)."""
    env_paths = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    files: list[Path] = []
    for path in [*entry_point_files(), *env_paths, *extra_paths]:
        path = Path(path)
        files += sorted(path.glob("*.toml")) if path.is_dir() else [path]
    return files


def load_registry(extra_paths: Sequence[Path | str] = ()) -> Registry:
    """The built-in specs, then entry-point registries, then ZOO_REGISTRY, then explicit paths."""
    registry = Registry()
    problems, hints = [], []
    user_files = registry_files(extra_paths)
    seen: set[Path] = set()
    for file in [*builtin_registry_files(), *user_files]:
        if Path(file).resolve() in seen:  # the same file named twice (e.g. a built-in one) is read once
            continue
        seen.add(Path(file).resolve())
        try:
            registry.add_file(file)
        except UsageError as exc:  # go on, to report every file's problems at once
            problems.append(str(exc))
            hints.append(exc.hint)
    registry.files = user_files
    if problems:
        raise UsageError("; ".join(problems), hint="; ".join(h for h in hints if h) or None)
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


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return path


def spec_to_toml(spec: ModelSpec, *, override: bool = False, relative_to: Path | None = None) -> str:
    """One `[models.NAME]` table; checkpoint and .onnx paths relative to `relative_to` when given
    (and when they lie under it)."""
    d = spec.to_dict()
    name = d.pop("name")
    d.pop("source")
    if relative_to is not None:
        if d.get("checkpoint"):
            d["checkpoint"]["path"] = _relative(d["checkpoint"]["path"], relative_to)
        if spec.architecture_kind == "onnx":
            d["architecture"] = _relative(d["architecture"], relative_to)
    lines = [f"[models.{name}]"]
    if override:
        lines.append("override = true")
    for key, value in d.items():
        if value is None or value == {} or value == "" or (key == "seed" and value == 0):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def upsert_registry_file(path: Path, spec: ModelSpec, *, override: bool = False) -> None:
    """Add (or replace) one model's table in a user registry file, atomically; its [targets.NAME]
    and [profiles.NAME] tables are kept (comments are not)."""
    path = Path(path)
    tables: dict[str, str] = {}
    targets: list[str] = []
    if path.exists():
        current = tomllib.loads(path.read_text())
        for name, table in current.get("models", {}).items():
            if name != spec.name:
                tables[name] = spec_to_toml(
                    spec_from_dict(name, table, path), override=bool(table.get("override")), relative_to=path.parent
                )
        for kind in ("targets", "profiles", "pipelines"):
            for name, table in current.get(kind, {}).items():
                if not isinstance(table, dict):
                    raise UsageError(f"registry file {path}: {kind}.{name} is not a [{kind}.{name}] table")
                targets.append(f"[{kind}.{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in table.items()))
    tables[spec.name] = spec_to_toml(spec, override=override, relative_to=path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(
        "# zoo model registry (written by zoo)\n\n" + "\n".join([*(tables[n] for n in sorted(tables)), *targets])
    )
    os.replace(tmp, path)
