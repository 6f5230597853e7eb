"""Shared by the packaging, store and matrix tests: one conversion per model × target per test session.

Output directories live under the session's base temp folder, so test files that need the same
conversion share it; tests that alter an output directory copy it first.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

from zoo.checkpoints import sha256_file
from zoo.packaging.archive import write_sha256_sidecar


def converted_outputs(tmp_path_factory, pairs=(("tiny_vit", "android"),)) -> Path:
    from zoo.pipeline import convert

    root = tmp_path_factory.getbasetemp() / "zoo-shared-outputs"
    for model, target in pairs:
        if not (root / model / target / "report.json").is_file():
            convert(model, target, out_root=root, latency_runs=20)
    return root


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def copy_output(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def edit_report(out: Path, change) -> None:
    """Edit an output's report.json as a zoo run would write it: verdict and counts follow the rows,
    and the manifest pins the new sha256."""
    from zoo.report import Report

    def consistent(data):
        change(data)
        report = Report.from_dict(data)
        data.update(verdict=report.verdict, counts=report.counts)

    edit_json(out / "report.json", consistent)
    edit_json(out / "manifest.json", lambda m: m.update(report_sha256=sha256_file(out / "report.json")))


def put_in_local_store(store: Path, name: str, version: str, archive: Path) -> Path:
    """Place an archive in a local store by hand (with a correct .sha256), as a tampering store would."""
    folder = store / name / version
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{version}.tar.gz"
    shutil.copyfile(archive, target)
    write_sha256_sidecar(target, sha256_file(target))
    return target


def evil_archive(path: Path, kind: str, escape_target: Path, top: str = "evil-1.0.0") -> Path:
    """A .tar.gz with one member that tries to land outside the destination."""
    import io

    payload = b"escaped\n"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo(f"{top}/manifest.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        if kind == "dotdot":
            info = tarfile.TarInfo(f"{top}/../../{escape_target.name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        elif kind == "absolute":
            info = tarfile.TarInfo(str(escape_target))
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        elif kind == "symlink":
            info = tarfile.TarInfo(f"{top}/link")
            info.type = tarfile.SYMTYPE
            info.linkname = str(escape_target.parent)
            tar.addfile(info)
            inner = tarfile.TarInfo(f"{top}/link/{escape_target.name}")
            inner.size = len(payload)
            tar.addfile(inner, io.BytesIO(payload))
        elif kind == "hardlink":
            info = tarfile.TarInfo(f"{top}/hard")
            info.type = tarfile.LNKTYPE
            info.linkname = str(escape_target)
            tar.addfile(info)
        else:
            raise ValueError(kind)
    return path
