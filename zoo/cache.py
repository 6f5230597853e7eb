"""A content-addressed cache on disk: work keyed by the hash of everything it depends on.

Three kinds of entries live under `$ZOO_CACHE` (default `~/.cache/zoo`; `ZOO_CACHE=off` or `--no-cache`
turns it off):

- `teacher-embeddings/<key>.npz`: arrays (`cached_arrays`), e.g. a teacher's embeddings of an
  evaluation set, computed once and read back by every later target;
- `steps/<key>/`: the files one converter step wrote, keyed by the step, the model, the target, the
  upstream artifacts' sha256 and the toolchain (zoo.pipeline);
- `conversions/<key>/`: a whole output directory, conversion and validation, keyed by everything the
  report depends on (zoo.pipeline).

Every entry is written into a temporary name and renamed into place, so two runs at once both
succeed (the first rename wins, the second discards its copy) and a kill never leaves half an entry.
A folder entry lists each file's sha256; a reader re-hashes what it copies out and treats any
mismatch as a miss (the entry is removed). `prune` evicts least recently used entries down to a size;
an entry is renamed away before it is deleted, so a reader sees it whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ENV_VAR = "ZOO_CACHE"
ENTRY_FILE = "entry.json"
STALE_TMP_SECONDS = 3600  # a temporary entry older than this belongs to a killed run


@dataclass(frozen=True)
class Cached:
    arrays: dict[str, np.ndarray]
    status: str  # "computed in 1.2 s" | "read from the cache (computed in 1.2 s on 2026-…)"
    hit: bool
    seconds: float  # what computing took (now, or when the entry was made)


def cache_root() -> Path | None:
    value = os.environ.get(ENV_VAR, "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "zoo"


def disable() -> None:
    """`--no-cache`: nothing is read from the cache or written to it in this process (and its children)."""
    os.environ[ENV_VAR] = "off"


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def cached_arrays(kind: str, fields: dict, compute: Callable[[], dict[str, np.ndarray]]) -> Cached:
    """`compute()`'s arrays, from the cache when an entry for `fields` exists."""
    root = cache_root()
    path = None if root is None else root / kind / f"{cache_key(fields)}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if not k.startswith("__")}
                seconds, made = float(data["__seconds"]), str(data["__made"])
            _touch(path)
            return Cached(
                arrays, f"read from the cache ({path.name[:12]}…, computed in {seconds:.1f} s on {made})", True, seconds
            )
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry: compute it again and replace it
    start = time.perf_counter()
    arrays = compute()
    seconds = time.perf_counter() - start
    if path is not None:
        tmp = path.with_name(f".tmp-{path.stem}-{os.getpid()}.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, **arrays, __seconds=np.float64(seconds), __made=np.str_(_now()))
            os.replace(tmp, path)
        except OSError:  # a cache that cannot be written only costs time
            tmp.unlink(missing_ok=True)
    return Cached(arrays, f"computed in {seconds:.1f} s", False, seconds)


# ---- fingerprints: what a key is made of ----


@lru_cache(maxsize=1)
def zoo_fingerprint() -> str:
    """sha256 of zoo's own files (code, registries, shipped weights): any change to zoo is a new key."""
    from zoo.outputs import tree_sha256

    return tree_sha256(Path(__file__).resolve().parent, file_fingerprint, skip="__pycache__")


_FILE_HASHES: dict[tuple, str] = {}


def file_fingerprint(path: Path) -> str:
    """A file's sha256, remembered for this process while its size and mtime stay the same."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_HASHES:
        from zoo.checkpoints import sha256_file

        _FILE_HASHES[memo] = sha256_file(Path(path))
    return _FILE_HASHES[memo]


def tree_fingerprint(path: Path) -> str:
    """A file's sha256, or a folder's: the sha256 of its files' relative paths and hashes."""
    from zoo.outputs import tree_sha256

    path = Path(path)
    return tree_sha256(path, file_fingerprint) if path.is_dir() else file_fingerprint(path)


# ---- folder entries: files a piece of work wrote ----


@dataclass(frozen=True)
class Entry:
    kind: str
    key: str
    path: Path
    meta: dict  # "made", "seconds", "files" {relative path: sha256}, and what the writer kept

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.key[:12]}…, made {self.meta.get('made', '?')} in {self.meta.get('seconds', 0):.1f} s"


def lookup(kind: str, key: str) -> Entry | None:
    root = cache_root()
    if root is None:
        return None
    path = root / kind / key
    try:
        meta = json.loads((path / ENTRY_FILE).read_text())
        if not isinstance(meta.get("files"), dict):
            raise ValueError("no file list")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _evict(path)  # damaged: make way for a fresh entry
        return None
    _touch(path / ENTRY_FILE)
    return Entry(kind, key, path, meta)


def restore(entry: Entry, dest: Path) -> bool:
    """Copy the entry's files into `dest`, re-hashing each copy against the entry's list. False (and
    the entry removed) when a file is missing or differs: the caller computes the work again."""
    try:
        for name, sha256 in entry.meta["files"].items():
            source, target = entry.path / "files" / name, Path(dest) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            if file_fingerprint(target) != sha256:
                raise ValueError(f"{name} differs from its recorded sha256")
    except (OSError, ValueError):
        _evict(entry.path)
        return False
    return True


def store(kind: str, key: str, root_dir: Path, names: list[str], meta: dict) -> Entry | None:
    """Keep the files `names` (relative to `root_dir`; folders taken whole) as the entry `kind/key`.
    None when the cache is off or cannot be written (a full disk only costs time)."""
    root = cache_root()
    if root is None:
        return None
    final = root / kind / key
    tmp = root / kind / f".tmp-{key[:16]}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        files = {}
        for name in names:
            source = Path(root_dir) / name
            members = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
            for member in members:
                relative = member.relative_to(root_dir).as_posix()
                target = tmp / "files" / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(member, target)
                files[relative] = file_fingerprint(target)
        meta = {"made": _now(), **meta, "files": files}
        (tmp / ENTRY_FILE).write_text(json.dumps(meta, indent=1, default=str))
        try:
            os.rename(tmp, final)
        except OSError:  # another run stored the same key first: its entry has the same content
            shutil.rmtree(tmp, ignore_errors=True)
            return lookup(kind, key)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return Entry(kind, key, final, meta)


# ---- size, eviction ----


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _evict(path: Path) -> None:
    """Rename an entry away, then delete it: readers see it whole or not at all."""
    gone = path.with_name(f".tmp-evicted-{path.name[:16]}-{os.getpid()}-{time.monotonic_ns()}")
    from zoo.outputs import remove_path

    try:
        os.rename(path, gone)
    except OSError:
        return
    remove_path(gone)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class Usage:
    kind: str
    entries: int
    bytes: int


def _entries(root: Path) -> list[tuple[Path, float]]:
    """(entry, last used) of every entry; stale temporaries of killed runs are removed on the way."""
    found = []
    for kind in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for path in kind.iterdir():
            try:
                marker = path / ENTRY_FILE if (path / ENTRY_FILE).exists() else path
                used = marker.stat().st_mtime
            except OSError:
                used = 0.0
            if path.name.startswith(".tmp-"):
                if time.time() - used > STALE_TMP_SECONDS:
                    from zoo.outputs import remove_path

                    remove_path(path)
                continue
            found.append((path, used))
    return found


def usage() -> list[Usage]:
    root = cache_root()
    if root is None:
        return []
    by_kind: dict[str, list[int]] = {}
    for path, _ in _entries(root):
        counts = by_kind.setdefault(path.parent.name, [0, 0])
        counts[0] += 1
        counts[1] += _size(path)
    return [Usage(kind, n, size) for kind, (n, size) in sorted(by_kind.items())]


def prune(max_bytes: int) -> tuple[int, int]:
    """Evict least recently used entries until the cache holds at most `max_bytes`. (entries, bytes) freed."""
    root = cache_root()
    if root is None:
        return 0, 0
    entries = sorted(((used, path, _size(path)) for path, used in _entries(root)), key=lambda e: e[0])
    total = sum(size for _, _, size in entries)
    removed = freed = 0
    for _, path, size in entries:
        if total <= max_bytes:
            break
        _evict(path)
        total -= size
        removed += 1
        freed += size
    return removed, freed


def parse_size(text: str) -> int:
    """'500M', '20G', '1.5GB', '1024' → bytes."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        return int(float(number) * factor)
    except ValueError:
        from zoo.errors import UsageError

        raise UsageError(f"not a size: {text!r}", hint="e.g. 500M, 20G or a number of bytes") from None
