"""Errors a user can act on. Each carries the exit code the CLI returns and an optional hint."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CONVERSION_FAILED = 3  # also a filesystem error (read-only, full disk, a file where a folder goes)
EXIT_UNEXPECTED = 4  # anything zoo did not foresee: one line, the traceback with --traceback


MAX_LINE = 3000  # an error is one line: a toolchain's multi-line message is folded and cut to this


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` folded onto one line (terminal colours dropped, whitespace runs made one space), cut to `limit`."""
    line = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(text)).split())  # toolchains colour their messages
    if len(line) > limit:
        kept = line[: limit - 40]
        line = f"{kept} … ({len(line) - len(kept)} more characters)"
    return line


class ZooError(Exception):
    exit_code = EXIT_CONVERSION_FAILED

    def __init__(self, message: str, hint: str | None = None):
        # toolchains' own messages (OpenVINO's C++ exceptions, MLIR diagnostics) span lines: fold them
        super().__init__(one_line(message))
        self.hint = one_line(hint) if hint else hint


class UsageError(ZooError):
    """The request itself is wrong: an unknown name, a bad option, an invalid registry entry."""

    exit_code = EXIT_USAGE


class ConversionError(ZooError):
    """A conversion step (including loading the model or its checkpoint) failed."""

    exit_code = EXIT_CONVERSION_FAILED


class CheckpointError(ConversionError):
    """A checkpoint is missing, corrupt, truncated, tampered with, or does not match the model."""


class MissingDependency(UsageError):
    """An optional toolchain is not installed; the message names the extra that brings it."""

    def __init__(self, what: str, extra: str):
        super().__init__(
            f"{what} is not installed",
            hint=f"install the '{extra}' extra: pip install 'zoo[{extra}]'",
        )
        self.extra = extra


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UsageError:
    """An 'unknown X' error with a did-you-mean hint from the known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if not close and known:  # always name the nearest one, however far
        close = [max(known, key=lambda k: difflib.SequenceMatcher(None, name, k).ratio())]
    hint = "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else f"no {kind}s are registered"
    if len(known) <= 30:
        hint += f" (known {kind}s: {', '.join(known)})"
    return UsageError(f"unknown {kind} {name!r}", hint=hint)


def require(module: str, extra: str):
    """Import an optional toolchain module, or raise MissingDependency naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} ({exc})", extra) from exc
