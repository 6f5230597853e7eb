"""Deterministic archives, SHA256SUMS, and unpacking that refuses anything unsafe.

- `write_archive`: a .tar.gz whose bytes depend only on the files: entries sorted, one top-level
  folder, fixed mtime (SOURCE_DATE_EPOCH or 1980-01-01), uid/gid 0 without names, modes 0644/0755,
  PAX format, gzip header with mtime 0 and no file name. The same package gives the same sha256.
- `SHA256SUMS`: coreutils format (`<hex>  <path>`), so `sha256sum -c SHA256SUMS` checks a package
  with nothing but coreutils.
- `safe_extract`: checks every member before writing anything (no absolute paths, no `..`, no
  links, no devices, one top-level folder, no duplicates) and writes plain files itself.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from zoo.checkpoints import sha256_file
from zoo.packaging.errors import IntegrityError

SUMS_NAME = "SHA256SUMS"
DEFAULT_MTIME = 315532800  # 1980-01-01T00:00:00Z: old enough to be obviously fixed, new enough for every tar
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"^[^\n\r\\]+$")


def fixed_mtime() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds convention), else 1980-01-01."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_MTIME


def package_files(root: Path) -> list[str]:
    """Every regular file under `root`, as sorted POSIX paths relative to it. Links are refused."""
    root = Path(root)
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise IntegrityError(f"{root}: {rel} is a symbolic link; packages hold plain files only")
        if path.is_file():
            if not _SAFE_NAME.match(rel):
                raise IntegrityError(f"{root}: the file name {rel!r} cannot be listed in SHA256SUMS")
            files.append(rel)
    return sorted(files)


def sha256sums_text(root: Path, exclude: tuple[str, ...] = (SUMS_NAME,)) -> str:
    lines = [f"{sha256_file(Path(root) / rel)}  {rel}" for rel in package_files(root) if rel not in exclude]
    return "\n".join(lines) + "\n"


def write_sha256sums(root: Path) -> Path:
    path = Path(root) / SUMS_NAME
    path.write_text(sha256sums_text(root))
    return path


def parse_sha256sums(text: str, where: str = SUMS_NAME) -> dict[str, str]:
    """{path: sha256} from coreutils format (text `  ` or binary ` *` mode); malformed lines are an error."""
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line[:64], line[64:66], line[66:]
        if not _HEX64.match(digest) or sep not in ("  ", " *") or not name:
            raise IntegrityError(f"{where} line {number} is not '<sha256>  <path>': {line[:100]!r}")
        if name in entries:
            raise IntegrityError(f"{where} lists {name} twice")
        entries[name] = digest
    return entries


def check_tree(root: Path) -> tuple[list[str], list[str], list[str], int]:
    """(mismatched, missing, unlisted, listed) of the files under `root` against its SHA256SUMS."""
    root = Path(root)
    sums_path = root / SUMS_NAME
    if not sums_path.is_file():
        raise IntegrityError(f"{root} has no {SUMS_NAME}; it is not a zoo package")
    listed = parse_sha256sums(sums_path.read_text(), str(sums_path))
    present = set(package_files(root)) - {SUMS_NAME}
    mismatched, missing = [], []
    for rel, digest in listed.items():
        if not _inside(root, rel):
            mismatched.append(f"{rel} (path escapes the package)")
        elif rel not in present:
            missing.append(rel)
        elif sha256_file(root / rel) != digest:
            mismatched.append(rel)
    unlisted = sorted(present - set(listed))
    return mismatched, missing, unlisted, len(listed)


def require_intact(root: Path) -> int:
    """Raise IntegrityError unless every file matches SHA256SUMS and nothing is unlisted; the file count."""
    mismatched, missing, unlisted, listed = check_tree(root)
    problems = []
    if mismatched:
        problems.append("sha256 differs: " + ", ".join(mismatched[:5]) + _more(mismatched))
    if missing:
        problems.append("missing: " + ", ".join(missing[:5]) + _more(missing))
    if unlisted:
        problems.append("not in SHA256SUMS: " + ", ".join(unlisted[:5]) + _more(unlisted))
    if problems:
        raise IntegrityError(
            f"package files do not match {SUMS_NAME}: " + "; ".join(problems),
            hint="the package was altered or damaged after it was built; fetch it again from its store",
        )
    return listed


def _more(items: list) -> str:
    return f" (+{len(items) - 5} more)" if len(items) > 5 else ""


def _inside(root: Path, rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and (Path(root) / rel).resolve().is_relative_to(root.resolve())


def write_archive(package_dir: Path, archive: Path, top: str | None = None) -> str:
    """Write `package_dir` as a deterministic .tar.gz with one top-level folder; return its sha256."""
    package_dir = Path(package_dir)
    top = top or package_dir.name
    mtime = fixed_mtime()
    files = package_files(package_dir)
    dirs = sorted({p.as_posix() for rel in files for p in PurePosixPath(rel).parents if p.as_posix() != "."})
    entries = sorted([(d, True) for d in dirs] + [(f, False) for f in files])
    tmp = archive.with_name(f".{archive.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_info(top, True, 0, mtime))
                for rel, is_dir in entries:
                    name = f"{top}/{rel}"
                    if is_dir:
                        tar.addfile(_info(name, True, 0, mtime))
                    else:
                        path = package_dir / rel
                        with open(path, "rb") as fh:
                            tar.addfile(_info(name, False, path.stat().st_size, mtime), fh)
    os.replace(tmp, archive)
    return sha256_file(archive)


def _info(name: str, is_dir: bool, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size = size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_sha256_sidecar(archive: Path, digest: str) -> Path:
    """`<archive>.sha256` in coreutils format: `sha256sum -c` accepts it in the archive's folder."""
    sidecar = archive.with_name(archive.name + ".sha256")
    sidecar.write_text(f"{digest}  {archive.name}\n")
    return sidecar


def read_sha256_sidecar(sidecar: Path) -> str:
    entries = parse_sha256sums(Path(sidecar).read_text(), str(sidecar))
    if len(entries) != 1:
        raise IntegrityError(f"{sidecar} should hold exactly one sha256 line")
    return next(iter(entries.values()))


def _member_problem(member: tarfile.TarInfo, top: str | None) -> str | None:
    name = member.name
    path = PurePosixPath(name)
    if not name or name.startswith("/") or re.match(r"^[A-Za-z]:", name) or path.is_absolute():
        return f"{name!r} is an absolute path"
    if "\\" in name:
        return f"{name!r} contains a backslash"
    if ".." in path.parts:
        return f"{name!r} climbs out of the destination ('..')"
    if member.issym() or member.islnk():
        return f"{name!r} is a link to {member.linkname!r}; packages hold plain files only"
    if not (member.isfile() or member.isdir()):
        return f"{name!r} is not a plain file or folder (type {member.type!r})"
    if top is not None and path.parts[0] != top:
        return f"{name!r} is outside the archive's top-level folder {top!r}"
    if len(path.parts) == 1 and not member.isdir():
        return f"{name!r} is a file where the archive's top-level folder should be"
    return None


def safe_extract(archive: Path, into: Path) -> Path:
    """Unpack `archive` into the empty folder `into` after checking every member; return the top folder.

    Nothing is written unless every member passes: absolute paths, `..`, links (symbolic or hard),
    devices, duplicates and members outside the single top-level folder are all refused.
    """
    archive, into = Path(archive), Path(into)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            if not members:
                raise IntegrityError(f"{archive.name} is empty")
            top = PurePosixPath(members[0].name).parts[0] if members[0].name else None
            problems, seen = [], set()
            for member in members:
                problem = _member_problem(member, top)
                norm = PurePosixPath(member.name).as_posix()
                if problem is None and norm in seen and not member.isdir():
                    problem = f"{member.name!r} appears twice"
                seen.add(norm)
                if problem is None and not (into / norm).resolve().is_relative_to(into.resolve()):
                    problem = f"{member.name!r} resolves outside the destination"
                if problem:
                    problems.append(problem)
            if problems:
                raise IntegrityError(
                    f"{archive.name} is unsafe to unpack, nothing was written: " + "; ".join(problems[:5]),
                    hint="zoo packages hold plain files under one folder; this archive was not made by zoo "
                    "or was tampered with",
                )
            into.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = into / PurePosixPath(member.name).as_posix()
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(target, 0o644)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise IntegrityError(f"{archive.name} is not a readable .tar.gz: {exc}") from None
    return into / top


def gzip_header_mtime(archive: Path) -> int:
    """The mtime field of the gzip header (0 in zoo archives)."""
    with open(archive, "rb") as fh:
        header = fh.read(10)
    return int.from_bytes(header[4:8], "little")


__all__ = [
    "SUMS_NAME",
    "check_tree",
    "fixed_mtime",
    "gzip_header_mtime",
    "package_files",
    "parse_sha256sums",
    "read_sha256_sidecar",
    "require_intact",
    "safe_extract",
    "sha256sums_text",
    "write_archive",
    "write_sha256_sidecar",
    "write_sha256sums",
]
