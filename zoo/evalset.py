"""Evaluation sets: the images teacher parity and the product's rules are judged on.

A team's own set, in one of two forms (the default is the built-in reference identity task):

    EVAL/gallery/<identity>/<file>               one or more reference images per identity
    EVAL/queries/<condition>/<identity>/<file>   held-out views; <condition> is any name
    EVAL/unknown/<file>                          images that are none of the identities

or an index file, `EVAL.csv` (header `path,identity,condition`) or `EVAL.jsonl` (one object per line
with `path` or `file_path`, `identity` or `identity_label`, and `condition`), paths relative to the
file; the conditions `gallery` and `unknown` are reserved (an unknown image has no identity).

Everything is checked before any conversion starts, and every problem is listed at once (the first
20). The set's sha256 covers each image's relative path, bytes, identity and condition, so the
manifest and the report pin exactly what was judged.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from zoo.errors import UsageError
from zoo.validators.inputs import IMAGE_SUFFIXES, read_rgb

GALLERY, UNKNOWN = "gallery", "unknown"  # reserved condition names
BUILTIN_SOURCE = "built-in reference identity task (zoo.identity_task)"
MAX_PROBLEMS_SHOWN = 20


@dataclass(frozen=True)
class EvaluationSet:
    """Gallery images per identity, and query views (with -1 as the label of an unknown image)."""

    identities: tuple[str, ...]
    gallery: tuple[np.ndarray, ...]  # HxWx3 uint8 RGB, any size
    gallery_labels: np.ndarray  # identity index of each gallery image
    views: tuple[np.ndarray, ...]  # queries, then unknown images
    labels: np.ndarray  # identity index per view, -1 for an unknown image
    conditions: tuple[str, ...]  # condition per view; "unknown" for unknown images
    source: str  # a path, or BUILTIN_SOURCE
    sha256: str
    # photographs of cards that are in no gallery (the built-in task's unseen cards): reported, not gated
    unseen_views: tuple[np.ndarray, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.source == BUILTIN_SOURCE

    @property
    def counts(self) -> dict[str, int]:
        counts = {"identities": len(self.identities), GALLERY: len(self.gallery)}
        for condition in dict.fromkeys(self.conditions):
            counts[condition] = self.conditions.count(condition)
        return counts

    def query_conditions(self) -> tuple[str, ...]:
        return tuple(c for c in dict.fromkeys(self.conditions) if c != UNKNOWN)

    def record(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "counts": self.counts}

    def describe(self) -> str:
        parts = ", ".join(f"{n} {c}" for c, n in self.counts.items() if c != "identities")
        return f"{self.source}: {self.counts['identities']} identities ({parts}); sha256 {self.sha256[:16]}…"


@dataclass(frozen=True)
class _Entry:
    path: Path
    relative: str
    identity: str  # "" for an unknown image
    condition: str  # gallery | unknown | a query condition


def load_evaluation_set(path: Path | str) -> EvaluationSet:
    """Read and check a folder or index file; UsageError (exit 2) listing every problem."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UsageError(f"evaluation set {path} does not exist", hint=_LAYOUT_HINT)
    problems: list[str] = []
    if path.is_dir():
        entries = _folder_entries(path, problems)
        root = path
    elif path.suffix.lower() in (".csv", ".jsonl"):
        entries = _index_entries(path, problems)
        root = path.parent
    else:
        raise UsageError(f"evaluation set {path} is neither a folder nor a .csv/.jsonl index", hint=_LAYOUT_HINT)
    return _build(path, root, entries, problems)


_LAYOUT_HINT = (
    "layout: EVAL/gallery/<identity>/<file>, EVAL/queries/<condition>/<identity>/<file>, EVAL/unknown/<file>; "
    "or an EVAL.csv / EVAL.jsonl index with path, identity, condition (see docs/evaluation-sets.md)"
)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_entries(root: Path, problems: list[str]) -> list[_Entry]:
    entries: list[_Entry] = []

    def add(file: Path, identity: str, condition: str) -> None:
        entries.append(_Entry(file, file.relative_to(root).as_posix(), identity, condition))

    gallery = root / GALLERY
    if not gallery.is_dir():
        problems.append(f"{gallery}: missing (one folder per identity with its reference images)")
    else:
        stray = _images_in(gallery)
        if stray:
            problems.append(f"{gallery}: images must be in a folder per identity, not directly here ({stray[0].name})")
        for identity in sorted(p for p in gallery.iterdir() if p.is_dir()):
            files = _images_in(identity)
            if not files:
                problems.append(f"{identity}: no images")
            for file in files:
                add(file, identity.name, GALLERY)
    queries = root / "queries"
    if not queries.is_dir():
        problems.append(f"{queries}: missing (queries/<condition>/<identity>/<file>)")
    else:
        for condition in sorted(p for p in queries.iterdir() if p.is_dir()):
            if condition.name in (GALLERY, UNKNOWN):
                problems.append(f"{condition}: '{condition.name}' is reserved; unknown images go in {root / UNKNOWN}")
                continue
            count = 0
            for identity in sorted(p for p in condition.iterdir() if p.is_dir()):
                for file in _images_in(identity):
                    add(file, identity.name, condition.name)
                    count += 1
            if not count:
                problems.append(f"{condition}: empty condition (no queries/<condition>/<identity>/<image>)")
    unknown = root / UNKNOWN
    if unknown.is_dir():
        files = sorted(p for p in unknown.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            problems.append(f"{unknown}: no images (leave the folder out if there are none)")
        for file in files:
            add(file, "", UNKNOWN)
    return entries


def _index_rows(index: Path, problems: list[str]) -> list[tuple[int, dict]]:
    text = index.read_text(encoding="utf-8")
    if index.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            problems.append(f"{index}: the first line must be a header with path, identity, condition")
            return []
        return [(n, row) for n, row in enumerate(reader, start=2)]
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{index}:{n}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{index}:{n}: must be an object with path, identity, condition")
            continue
        rows.append((n, row))
    return rows


def _index_entries(index: Path, problems: list[str]) -> list[_Entry]:
    entries = []
    for n, row in _index_rows(index, problems):
        where = f"{index}:{n}"
        path = row.get("path", row.get("file_path"))
        identity = row.get("identity", row.get("identity_label"))
        identity = "" if identity is None else str(identity).strip()
        condition = str(row.get("condition") or "").strip()
        if not isinstance(path, str) or not path.strip():
            problems.append(f"{where}: no path")
            continue
        if not condition:
            problems.append(f"{where}: no condition (gallery, unknown, or a query condition such as clean)")
            continue
        if condition == UNKNOWN and identity:
            problems.append(f"{where}: an unknown image has no identity (got {identity!r})")
            continue
        if condition != UNKNOWN and not identity:
            problems.append(f"{where}: a {condition} image needs an identity")
            continue
        file = (index.parent / path).resolve()
        entries.append(_Entry(file, path, identity, condition))
    return entries


def _build(source: Path, root: Path, entries: list[_Entry], problems: list[str]) -> EvaluationSet:
    images: dict[Path, np.ndarray] = {}
    digests: dict[Path, str] = {}
    for entry in entries:
        if entry.path in images or entry.path in digests:
            continue
        try:
            data = entry.path.read_bytes()
            digests[entry.path] = hashlib.sha256(data).hexdigest()
            images[entry.path] = read_rgb(entry.path)
        except FileNotFoundError:
            problems.append(f"{entry.path}: does not exist")
        except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
            problems.append(f"{entry.path}: cannot be read as an image ({exc})")
    good = [e for e in entries if e.path in images]
    gallery_ids = sorted({e.identity for e in good if e.condition == GALLERY})
    if not gallery_ids and not any("gallery" in p for p in problems):
        problems.append(f"{source}: no gallery images")
    for identity, condition in sorted(
        {(e.identity, e.condition) for e in good if e.condition not in (GALLERY, UNKNOWN)}
    ):
        if identity not in gallery_ids:
            problems.append(f"{source}: query identity {identity!r} ({condition}) has no gallery image")
    if not any(e.condition not in (GALLERY, UNKNOWN) for e in good) and not any("queries" in p for p in problems):
        problems.append(f"{source}: no query images")
    by_digest: dict[str, list[_Entry]] = {}
    for entry in good:
        by_digest.setdefault(digests[entry.path], []).append(entry)
    for same in by_digest.values():
        roles = {e.condition == GALLERY for e in same}
        if len(same) > 1 and (len(roles) > 1 or len({e.condition for e in same}) > 1 or len(same) > len(set(same))):
            problems.append("the same image is listed more than once: " + ", ".join(e.relative for e in same))
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f" (+{len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise UsageError(
            f"evaluation set {source}: {len(problems)} problem(s): " + "; ".join(shown) + more, _LAYOUT_HINT
        )

    index = {name: i for i, name in enumerate(gallery_ids)}
    gallery = [e for e in good if e.condition == GALLERY]
    queries = [e for e in good if e.condition not in (GALLERY, UNKNOWN)]
    unknown = [e for e in good if e.condition == UNKNOWN]
    digest = hashlib.sha256()
    for entry in sorted(good, key=lambda e: (e.relative, e.condition, e.identity)):
        digest.update(f"{entry.relative}\0{digests[entry.path]}\0{entry.identity}\0{entry.condition}\n".encode())
    return EvaluationSet(
        identities=tuple(gallery_ids),
        gallery=tuple(images[e.path] for e in gallery),
        gallery_labels=np.asarray([index[e.identity] for e in gallery], dtype=np.int64),
        views=tuple(images[e.path] for e in [*queries, *unknown]),
        labels=np.asarray([index[e.identity] for e in queries] + [-1] * len(unknown), dtype=np.int64),
        conditions=tuple(e.condition for e in [*queries, *unknown]),
        source=str(source),
        sha256=digest.hexdigest(),
    )


@lru_cache(maxsize=1)
def reference_evaluation_set() -> EvaluationSet:
    """The built-in reference identity task as an evaluation set (one canonical gallery view each)."""
    from zoo.identity_task import eval_set, reference_task

    ev = eval_set()
    names = reference_task().names
    digest = hashlib.sha256(b"zoo reference identity task\n")
    for array in (ev.gallery, ev.views, ev.labels, ev.unseen_views):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update("\0".join(ev.conditions).encode())
    return EvaluationSet(
        identities=tuple(names),
        gallery=tuple(ev.gallery),
        gallery_labels=np.arange(len(names), dtype=np.int64),
        views=tuple(ev.views),
        labels=np.asarray(ev.labels, dtype=np.int64),
        conditions=tuple(ev.conditions),
        source=BUILTIN_SOURCE,
        sha256=digest.hexdigest(),
        unseen_views=tuple(ev.unseen_views),
    )


def export_reference_evaluation_set(directory: Path) -> dict[str, int]:
    """Write the built-in set in the folder layout (lossless PNG, so both paths judge the same pixels)."""
    from PIL import Image

    from zoo.identity_task import reference_task
    from zoo.outputs import staged_directory

    ev = reference_evaluation_set()
    unknown_names = reference_task().unknown_names
    per = max(1, ev.conditions.count(UNKNOWN) // max(1, len(unknown_names)))  # views per unknown image
    folder_name = {name: name.replace("/", "-") for name in ev.identities}  # "astronaut/0" → astronaut-0
    seen: dict[tuple[str, str], int] = {}
    with staged_directory(Path(directory)) as work:
        for label, image in zip(ev.gallery_labels, ev.gallery):
            folder = work / GALLERY / folder_name[ev.identities[label]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / "canonical.png")
        unknown_index = 0
        for image, label, condition in zip(ev.views, ev.labels, ev.conditions):
            if condition == UNKNOWN:
                folder = work / UNKNOWN
                n = unknown_index
                stem = unknown_names[n // per].replace("/", "-") if unknown_names else "unknown"
                name = f"{stem}_{n % per}.png"
                unknown_index += 1
            else:
                identity = folder_name[ev.identities[label]]
                folder = work / "queries" / condition / identity
                n = seen[(condition, identity)] = seen.get((condition, identity), -1) + 1
                name = f"{n:03d}.png"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / name)
    return ev.counts


def evaluation_path(explicit: Path | None, model, teacher) -> Path | None:
    """`--eval` first, then the model's `eval_set`, then its teacher's; None: the built-in task."""
    for path in (explicit, getattr(model, "eval_set", ""), getattr(teacher, "eval_set", "") if teacher else ""):
        if path:
            return Path(path)
    return None


def resolve_evaluation_set(explicit: Path | None, model, teacher) -> EvaluationSet:
    """The set `evaluation_path` names, loaded and checked, else the built-in task."""
    path = evaluation_path(explicit, model, teacher)
    return load_evaluation_set(path) if path else reference_evaluation_set()
