"""Output directories written atomically, and the manifest that lists what is in them.

A run that writes `<parent>/<T>` first takes an exclusive lock, `<parent>/.<T>.lock` (flock; the
file names the holder's pid and command line, and is removed on release). A second run on the same
output waits, and says once who holds it. Under the lock:

- leftovers of runs that were killed are dealt with: if `<T>` is missing and a `.<T>.old-<pid>` of
  a dead process exists (killed between the two renames below), it is renamed back; every other
  `.<T>.old-<pid>` and `.<T>.partial-<pid>` of a dead process is removed;
- the output is staged in `.<T>.partial-<pid>`; only once every file, the manifest and the report
  are written, an existing `<T>` is renamed to `.<T>.old-<pid>`, the staging directory to `<T>`,
  and the old one is removed. A failed or interrupted run never leaves a directory that looks
  complete under the final name, nor leaves the final name empty for longer than the next run.

`<T>` must be a directory zoo wrote (or absent): a file or a symlink there is refused, never moved
aside. Filesystem errors (read-only, full disk, permissions) propagate as OSError, with the staging
directory removed and the old output intact.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from zoo.checkpoints import sha256_file
from zoo.errors import UsageError


def _say_on_stderr(message: str) -> None:
    print(f"[zoo] {message}", file=sys.stderr, flush=True)


def _holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def _same_file(fd: int, path: Path) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)


@contextmanager
def file_lock(path: Path, *, waiting_for: object = None, say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if needed, removed on release). While another
    process holds it, wait, saying once (through `say`, else on stderr) who that is."""
    path = Path(path)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    (say or _say_on_stderr)(f"waiting for {waiting_for or path}: locked by {_holder(fd)}")
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            # the holder before us removes the file on release: a lock on that unlinked file guards nothing
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)[:300]}\n".encode(), 0)
        yield
    finally:
        with suppress(OSError):
            os.unlink(path)  # still holding the lock, so a waiter on this file sees it is gone and retries
        os.close(fd)


def _alive(pid: int) -> bool:
    # callers hold the lock for these names, so one with our own pid was left by an earlier process
    # that had the same pid (pid reuse is common in containers): stale, like any dead one
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def stale_entries(parent: Path, stem: str) -> list[Path]:
    """Entries `<stem><pid>` in `parent` whose process is gone. Call it only under the lock that
    guards those names: then no live zoo run is using them."""
    pattern = re.compile(re.escape(stem) + r"(\d+)")
    return [
        entry
        for entry in sorted(Path(parent).iterdir())
        if (m := pattern.fullmatch(entry.name)) and not _alive(int(m.group(1)))
    ]


def remove_path(path: Path) -> None:
    """Remove a leftover file or directory, as far as possible (what remains is retried next run)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def _recover(final: Path) -> None:
    """Undo what killed runs left beside `final` (under its lock)."""
    olds = sorted(stale_entries(final.parent, f".{final.name}.old-"), key=lambda p: p.lstat().st_mtime)
    if olds and not os.path.lexists(final):
        # killed between its two renames: the old output it had moved aside is the last complete one
        os.replace(olds.pop(), final)
    for path in olds + stale_entries(final.parent, f".{final.name}.partial-"):
        remove_path(path)


def _make_parent(final: Path) -> None:
    existing = next(p for p in (final.parent, *final.parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise UsageError(
            f"{existing} is a file, not a folder: cannot write {final} under it",
            hint=f"move or remove {existing}, or write the outputs elsewhere (--out)",
        )
    final.parent.mkdir(parents=True, exist_ok=True)


def _swap_in(staging: Path, final: Path) -> None:
    if not os.path.lexists(final):
        os.replace(staging, final)
        return
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    os.replace(final, old)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(old, final)
        raise
    remove_path(old)


def output_lock(final: Path, *, say: Callable[[str], None] | None = None):
    """The lock `staged_directory` holds on `final`, for a run that rewrites files inside it in place
    (zoo validate): it never interleaves with a conversion replacing the same output."""
    final = Path(final)
    return file_lock(final.parent / f".{final.name}.lock", waiting_for=final, say=say)


@contextmanager
def staged_directory(final: Path, *, say: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `final`, on any error it is removed.
    Another run on the same `final` waits for this one (`say` tells the user, else stderr)."""
    final = Path(final)
    _make_parent(final)
    with output_lock(final, say=say):
        _recover(final)
        if final.is_symlink() or (final.exists() and not final.is_dir()):
            raise UsageError(
                f"{final} exists and is not a directory: zoo replaces only output directories it wrote",
                hint=f"move or remove {final}, or write the outputs elsewhere (--out)",
            )
        staging = final.parent / f".{final.name}.partial-{os.getpid()}"
        staging.mkdir()
        try:
            yield staging
            _swap_in(staging, final)
        except BaseException:
            remove_path(staging)
            raise


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def tree_sha256(path: Path, hash_file: Callable[[Path], str] = sha256_file, skip: str = "") -> str:
    """A folder (e.g. an .mlpackage) hashed as the sha256 of its files' relative paths and hashes;
    files under a folder named `skip` are left out."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not (skip and skip in p.parts)):
        digest.update(f"{file.relative_to(path).as_posix()}\0{hash_file(file)}\n".encode())
    return digest.hexdigest()


def file_entry(root: Path, name: str) -> dict:
    path = root / name
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return {"path": name, "sha256": tree_sha256(path), "size": size, "kind": "directory"}
    return {"path": name, "sha256": sha256_file(path), "size": path.stat().st_size, "kind": "file"}


def tool_versions() -> dict[str, str]:
    """Versions of the toolchains that are installed (imported lazily; absent ones are left out)."""
    from importlib import metadata

    versions = {}
    for dist in (
        "zoo",
        "torch",
        "timm",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "onnxslim",
        "openvino",
        "nncf",
        "coremltools",
        "litert-torch",
        "ai-edge-litert",
        "numpy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    import platform

    versions["python"] = platform.python_version()
    return versions


def write_manifest(root: Path, manifest: dict) -> None:
    write_text_atomic(root / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path) -> dict:
    path = Path(root) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{root} has no manifest.json; it is not a zoo output directory") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
