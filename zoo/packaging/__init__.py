"""Packages for the apps: build (`zoo package`), check (`zoo verify`), and move them through stores
(`zoo publish`, `zoo pull`). See zoo.packaging.package, .layouts, .verify, .store and .archive.

Nothing here imports a heavy toolchain at import time: the source model (for golden outputs) and
the runtimes (for `zoo verify`) are imported when used, ORAS only for an OCI store.
"""
