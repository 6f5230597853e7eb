"""Output directories written atomically, and the manifest that lists what is in them.

A conversion is staged in a hidden sibling directory (`.<target>.partial-<pid>`) and renamed into
place only once every file, the manifest and the report are written. An interrupted or failed run
never leaves a directory that looks complete under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zoo.checkpoints import sha256_file


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `final`, on any error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tree_sha256(path: Path) -> str:
    """A folder artifact (e.g. .mlpackage) hashed as the sha256 of its files' relative paths and hashes."""
    import hashlib

    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def file_entry(root: Path, name: str) -> dict:
    path = root / name
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return {"path": name, "sha256": _tree_sha256(path), "size": size, "kind": "directory"}
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
    from zoo.errors import UsageError

    path = Path(root) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{root} has no manifest.json; it is not a zoo output directory") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
