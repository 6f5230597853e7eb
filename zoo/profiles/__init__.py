"""Acceptance profiles: the product's rules and thresholds as data, one TOML file per profile here.

A model names its profile with `acceptance = "NAME"` (or inherits its teacher's; the default is
`reference`). A team adds or replaces profiles with `[profiles.NAME]` tables in its registry files
(`override = true` to replace a shipped one). A profile has:

- `[teacher_parity] min`: per-sample cosine vs the teacher on every query view;
- `[[guard]]` rules the teacher itself must meet (the vacuity guard) before teacher parity counts;
- `[[rule]]` rules every artifact must meet. Kinds (zoo.validators.acceptance evaluates them):
  `same_identity` (percentile of the cosine to the own identity ≥ min, over `conditions`),
  `different_identity` (percentile of the cosine to other identities < max),
  `retrieval` (top-k rate ≥ min over `condition`, or over every query view when none is named),
  `verification` (true-accept rate at a false-accept rate `far` ≥ `min_tar`),
  `unknown_rejection` (share of unknown images whose nearest distance > `distance` ≥ min).
A rule whose condition (or the unknown images) is not in the evaluation set is "not run", never a pass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from zoo.errors import UsageError, unknown_name

DEFAULT_PROFILE = "reference"
KINDS = {  # kind: (required keys, optional keys)
    "same_identity": (("min",), ("conditions", "percentile")),
    "different_identity": (("max",), ("conditions", "percentile")),
    "retrieval": (("k", "min"), ("condition",)),
    "verification": (("far", "min_tar"), ("conditions",)),
    "unknown_rejection": (("distance", "min"), ()),
}


@dataclass(frozen=True)
class Rule:
    kind: str
    params: dict = field(default_factory=dict)

    def get(self, key: str, default=None):
        return self.params.get(key, default)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    source: str  # where the numbers come from, in words
    file: str  # the TOML file it was read from
    teacher_parity_min: float
    guard: tuple[Rule, ...]
    rules: tuple[Rule, ...]

    def record(self) -> dict:
        """The whole profile, as the manifest keeps it (zoo validate judges by the same rules)."""
        return {
            "name": self.name,
            "file": Path(self.file).name,
            "description": self.description,
            "source": self.source,
            "teacher_parity": {"min": self.teacher_parity_min},
            "guard": [{"kind": r.kind, **r.params} for r in self.guard],
            "rule": [{"kind": r.kind, **r.params} for r in self.rules],
        }

    @classmethod
    def from_record(cls, record: dict) -> Profile:
        data = {k: v for k, v in record.items() if k not in ("name", "file")}
        return profile_from_dict(record["name"], data, record.get("file", "manifest.json"))


def _rules(where: str, entries, problems: list[str]) -> tuple[Rule, ...]:
    rules = []
    if not isinstance(entries, list):
        problems.append(f"{where} must be a list of [[...]] tables")
        return ()
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]"
        if not isinstance(entry, dict) or entry.get("kind") not in KINDS:
            problems.append(f"{at}: kind must be one of {', '.join(KINDS)}")
            continue
        params = {k: v for k, v in entry.items() if k != "kind"}
        required, optional = KINDS[entry["kind"]]
        missing = [k for k in required if k not in params]
        extra = sorted(set(params) - set(required) - set(optional))
        if missing:
            problems.append(f"{at} ({entry['kind']}): missing {', '.join(missing)}")
        if extra:
            problems.append(f"{at} ({entry['kind']}): unknown key(s) {', '.join(extra)}")
        for key in ("min", "max", "far", "min_tar", "distance"):
            if key in params and not (isinstance(params[key], (int, float)) and not isinstance(params[key], bool)):
                problems.append(f"{at}: {key} must be a number, not {params[key]!r}")
        if "k" in params and not (isinstance(params["k"], int) and params["k"] > 0):
            problems.append(f"{at}: k must be a positive integer, not {params['k']!r}")
        if "percentile" in params and not (
            isinstance(params["percentile"], (int, float)) and 0 <= params["percentile"] <= 100
        ):
            problems.append(f"{at}: percentile must be between 0 and 100")
        if "conditions" in params and not (
            isinstance(params["conditions"], list) and all(isinstance(c, str) for c in params["conditions"])
        ):
            problems.append(f"{at}: conditions must be a list of condition names")
        if "condition" in params and not isinstance(params["condition"], str):
            problems.append(f"{at}: condition must be a condition name")
        rules.append(Rule(entry["kind"], params))
    return tuple(rules)


def profile_from_dict(name: str, data: dict, file: str) -> Profile:
    where = f"acceptance profile {name!r} in {file}"
    problems: list[str] = []
    if not isinstance(data, dict):
        raise UsageError(f"{where}: must be a table")
    extra = sorted(set(data) - {"description", "source", "teacher_parity", "guard", "rule", "override"})
    if extra:
        problems.append(f"unknown key(s) {', '.join(extra)}")
    parity = data.get("teacher_parity", {})
    minimum = parity.get("min") if isinstance(parity, dict) else None
    if not (isinstance(minimum, (int, float)) and not isinstance(minimum, bool) and -1 <= minimum <= 1):
        problems.append("[teacher_parity] min must be a cosine between -1 and 1")
    guard = _rules("[[guard]]", data.get("guard", []), problems)
    rules = _rules("[[rule]]", data.get("rule", []), problems)
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems), hint="see zoo/profiles/cards.toml for the format")
    return Profile(
        name=name,
        description=str(data.get("description", "")),
        source=str(data.get("source", file)),
        file=file,
        teacher_parity_min=float(minimum),
        guard=guard,
        rules=rules,
    )


def builtin_profiles() -> dict[str, Profile]:
    profiles = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            name = entry.name.removesuffix(".toml")
            profiles[name] = profile_from_dict(name, tomllib.loads(entry.read_text()), entry.name)
    return profiles


def load_profiles(registry_files: Sequence[Path] = ()) -> dict[str, Profile]:
    """The shipped profiles, then `[profiles.NAME]` tables of the user's registry files."""
    profiles = builtin_profiles()
    for file in registry_files:
        try:
            tables = tomllib.loads(Path(file).read_text()).get("profiles", {})
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue  # the registry reports an unreadable file itself
        for name, table in tables.items():
            if name in profiles and not (isinstance(table, dict) and table.get("override") is True):
                raise UsageError(f"acceptance profile {name!r} in {file} is already defined; set `override = true`")
            profiles[name] = profile_from_dict(name, table, str(file))
    return profiles


def get_profile(name: str, registry_files: Sequence[Path] = ()) -> Profile:
    profiles = load_profiles(registry_files)
    try:
        return profiles[name]
    except KeyError:
        raise unknown_name("acceptance profile", name, profiles) from None


def profile_for(model, teacher, registry_files: Sequence[Path] = ()) -> Profile:
    """The model's `acceptance`, else its teacher's, else the reference profile."""
    name = getattr(model, "acceptance", "") or (getattr(teacher, "acceptance", "") if teacher else "")
    return get_profile(name or DEFAULT_PROFILE, registry_files)
