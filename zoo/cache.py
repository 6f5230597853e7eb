"""A small content-addressed cache on disk: arrays keyed by the hash of everything they depend on.

The teacher's embeddings of an evaluation set are computed once per (teacher checkpoint, evaluation
set, input size, preprocessing, zoo version) and read back by every later target. `$ZOO_CACHE` names
the folder (default `~/.cache/zoo`); `ZOO_CACHE=off` turns it off. Entries are written to a temporary
file and renamed into place, so two runs at once both succeed (the second rename wins, with the same
bytes) and a kill never leaves half an entry; an unreadable entry is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "ZOO_CACHE"


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


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def cached_arrays(kind: str, fields: dict, compute: Callable[[], dict[str, np.ndarray]]) -> Cached:
    """`compute()`'s arrays, from the cache when an entry for `fields` exists."""
    root = cache_root()
    path = None if root is None else root / kind / f"{cache_key(fields)}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files if not k.startswith("__")}
                seconds, made = float(data["__seconds"]), str(data["__made"])
            return Cached(
                arrays, f"read from the cache ({path.name[:12]}…, computed in {seconds:.1f} s on {made})", True, seconds
            )
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry: compute it again and replace it
    start = time.perf_counter()
    arrays = compute()
    seconds = time.perf_counter() - start
    if path is not None:
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            np.savez(tmp, **arrays, __seconds=np.float64(seconds), __made=np.str_(made))
            os.replace(tmp, path)
        except OSError:  # a cache that cannot be written only costs time
            tmp.unlink(missing_ok=True)
    return Cached(arrays, f"computed in {seconds:.1f} s", False, seconds)
