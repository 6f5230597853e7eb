"""Errors of packaging, verification and the stores; each is a ZooError with an exit code and a hint."""

from __future__ import annotations

from zoo.errors import EXIT_CHECK_FAILED, UsageError, ZooError


class IntegrityError(ZooError):
    """A file does not match its recorded sha256, or an archive is unsafe to unpack: nothing was written."""

    exit_code = EXIT_CHECK_FAILED


class PackageRefused(ZooError):
    """An output directory cannot go into a package: its validation failed, or it was never validated."""

    exit_code = EXIT_CHECK_FAILED


class StoreError(UsageError):
    """A store cannot be reached, or has no such package, or refuses to overwrite a published version."""
