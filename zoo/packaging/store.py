"""Stores for packages: a local directory (the default) and OCI registries through ORAS.

Store URIs:

- `PATH`, `file://PATH` or `dir:PATH`: a folder: `<root>/<name>/<version>/<name>-<version>.tar.gz`,
  its `.sha256`, and a copy of the package's manifest.json for browsing;
- `oci://HOST[:PORT]/NAMESPACE` (HTTPS) or `oci+http://HOST[:PORT]/NAMESPACE` (plain HTTP, for a
  registry on loopback): the package is `HOST[:PORT]/NAMESPACE/<name>:<version>`, one layer (the
  archive; its OCI digest is the archive's sha256) and the package manifest as the config blob.
  Credentials come from ZOO_OCI_USERNAME / ZOO_OCI_PASSWORD, or ORAS's docker config.

A published version is immutable: publishing it again with the same archive is a no-op, with a
different archive an error. `pull` downloads into a scratch folder, checks the archive's sha256
(against the store's record, and `expected_sha256` when given), unpacks it with member checks into
a staging folder beside the destination, checks every file against SHA256SUMS and the manifest's
name and version, and only then renames the staging folder to the destination.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from zoo.checkpoints import sha256_file
from zoo.errors import UsageError, require
from zoo.outputs import file_lock, remove_path, stale_entries
from zoo.packaging.archive import read_sha256_sidecar, require_intact, safe_extract, write_sha256_sidecar
from zoo.packaging.errors import IntegrityError, StoreError
from zoo.packaging.package import check_name_version, read_package_manifest
from zoo.progress import QUIET, Progress

STORE_ENV = "ZOO_STORE"
DEFAULT_STORE = "zoo-store"
LAYER_MEDIA_TYPE = "application/vnd.zoo.package.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.zoo.package.config.v1+json"
ANNOTATION_SHA256 = "io.zoo.package.sha256"
_CREDENTIALS_HINT = "set ZOO_OCI_USERNAME and ZOO_OCI_PASSWORD, or log in with docker or oras"


@dataclass(frozen=True)
class Fetched:
    archive: Path
    recorded_sha256: str  # what the store says the archive's sha256 is
    location: str


@dataclass(frozen=True)
class Published:
    location: str
    sha256: str
    already_there: bool


@dataclass(frozen=True)
class Pulled:
    destination: Path
    name: str
    version: str
    sha256: str
    files: int
    location: str


class Store(Protocol):
    uri: str

    def publish(self, archive: Path, sha256: str, name: str, version: str, manifest_path: Path) -> Published: ...

    def fetch(self, name: str, version: str, scratch: Path) -> Fetched: ...


def default_store_uri() -> str:
    return os.environ.get(STORE_ENV) or DEFAULT_STORE


def open_store(uri: str) -> Store:
    if uri.startswith(("oci://", "oci+http://", "oci+https://")):
        return OciStore(uri)
    if uri.startswith("file://"):
        return LocalStore(Path(urlparse(uri).path))
    if uri.startswith("dir:"):
        return LocalStore(Path(uri[4:]))
    if "://" in uri:
        raise UsageError(
            f"unknown store {uri!r}", hint="use a folder path, file://PATH, oci://HOST/NAMESPACE or oci+http://…"
        )
    return LocalStore(Path(uri))


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def _dir(self, name: str, version: str) -> Path:
        return self.root / name / version

    def _published(self, final: Path, sha256: str, name: str, version: str) -> Published | None:
        """None if `final` is not there; the same archive: already published; another: refused."""
        if not os.path.lexists(final):
            return None
        existing = final / f"{name}-{version}.tar.gz.sha256"
        recorded = read_sha256_sidecar(existing) if existing.is_file() else None
        if recorded == sha256:
            return Published(str(final), sha256, True)
        raise StoreError(
            f"{name}:{version} is already published in {self.root} with sha256 {recorded}, not {sha256}",
            hint="published versions are immutable: publish under a new --version",
        )

    def publish(self, archive: Path, sha256: str, name: str, version: str, manifest_path: Path) -> Published:
        final = self._dir(name, version)
        final.parent.mkdir(parents=True, exist_ok=True)
        # jobs publishing the same version take turns: the later one finds the earlier's and compares
        with file_lock(final.parent / f".{version}.lock", waiting_for=f"{name}:{version} in {self.root}"):
            for stale in stale_entries(final.parent, f".{version}.publish-"):
                remove_path(stale)  # left by a publish that was killed
            done = self._published(final, sha256, name, version)
            if done is not None:
                return done
            staging = final.parent / f".{version}.publish-{os.getpid()}"
            staging.mkdir()
            try:
                target = staging / f"{name}-{version}.tar.gz"
                shutil.copyfile(archive, target)
                if sha256_file(target) != sha256:
                    raise IntegrityError(f"{archive} changed while it was being published")
                write_sha256_sidecar(target, sha256)
                shutil.copyfile(manifest_path, staging / "manifest.json")
                os.replace(staging, final)
            except OSError as exc:
                remove_path(staging)
                # a writer that takes no lock (an older zoo, another host) got there first
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    done = self._published(final, sha256, name, version)
                    if done is not None:
                        return done
                raise
            except BaseException:
                remove_path(staging)
                raise
        return Published(str(final), sha256, False)

    def fetch(self, name: str, version: str, scratch: Path) -> Fetched:
        folder = self._dir(name, version)
        archive = folder / f"{name}-{version}.tar.gz"
        sidecar = folder / f"{name}-{version}.tar.gz.sha256"
        if not archive.is_file() or not sidecar.is_file():
            known = sorted(p.name for p in (self.root / name).iterdir()) if (self.root / name).is_dir() else []
            raise StoreError(
                f"{name}:{version} is not in the store {self.root}",
                hint=f"versions of {name} there: {', '.join(known)}" if known else f"no versions of {name} there",
            )
        local = scratch / archive.name
        shutil.copyfile(archive, local)
        return Fetched(local, read_sha256_sidecar(sidecar), str(folder))


class OciStore:
    """An OCI registry (distribution API) through the ORAS Python SDK (the `publish` extra)."""

    def __init__(self, uri: str):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise UsageError(f"store {uri!r} names no registry host", hint="oci://HOST[:PORT]/NAMESPACE")
        self.uri = uri
        self.insecure = parsed.scheme == "oci+http"
        self.host = parsed.netloc
        self.namespace = parsed.path.strip("/")

    def reference(self, name: str, version: str) -> str:
        repo = f"{self.namespace}/{name}" if self.namespace else name
        return f"{self.host}/{repo}:{version}"

    def _client(self):
        oras_client = require("oras.client", "publish")
        challenge = self._challenge()
        # a registry that asks for Basic credentials (htpasswd) takes them on every request; others
        # (Docker Hub, GHCR, Harbor …) hand out bearer tokens, which ORAS's token backend fetches
        backend = "basic" if challenge == "basic" else "token"
        client = oras_client.OrasClient(hostname=self.host, insecure=self.insecure, auth_backend=backend)
        user, password = os.environ.get("ZOO_OCI_USERNAME"), os.environ.get("ZOO_OCI_PASSWORD")
        if user and password:  # kept in memory for this client, written nowhere
            client.auth.set_basic_auth(user, password)
        return client

    def _challenge(self) -> str:
        """Reach the registry's /v2/ endpoint; the auth scheme it asks for ('' when none)."""
        import requests

        url = f"{'http' if self.insecure else 'https'}://{self.host}/v2/"
        try:
            response = requests.get(url, timeout=10)
        except requests.RequestException as exc:
            raise StoreError(
                f"cannot reach the registry {self.host}: {type(exc).__name__}",
                hint="check the address; a registry without TLS needs oci+http://",
            ) from None
        if response.status_code == 401:
            return response.headers.get("WWW-Authenticate", "").split(" ", 1)[0].lower()
        return ""

    def _manifest(self, client, ref: str) -> dict | None:
        """The OCI manifest of `ref`, or None when the registry has no such tag."""
        container = client.get_container(ref)
        client.auth.load_configs(container)  # credentials from the docker config, as `oras` itself does
        url = f"{client.prefix}://{container.manifest_url()}"
        headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
        # ORAS's do_request retries any error with sleeps of up to 83 s (about 2 minutes in all); an
        # authentication problem should fail at once, so this first request goes around the retries
        once = getattr(type(client).do_request, "__wrapped__", None)
        try:
            response = (
                once(client, url, "GET", headers=headers) if once else client.do_request(url, "GET", headers=headers)
            )
        except Exception as exc:  # ORAS raises when it has no credentials to answer the registry's challenge
            raise StoreError(
                f"registry {self.host} asks for credentials for {ref} and none worked ({type(exc).__name__})",
                hint=_CREDENTIALS_HINT,
            ) from None
        if response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise StoreError(f"registry {self.host} refused the credentials for {ref}", hint=_CREDENTIALS_HINT)
        if response.status_code != 200:
            raise StoreError(f"registry {self.host} answered {response.status_code} for {ref}: {response.text[:200]}")
        return response.json()

    def publish(self, archive: Path, sha256: str, name: str, version: str, manifest_path: Path) -> Published:
        client = self._client()
        ref = self.reference(name, version)
        existing = self._manifest(client, ref)
        if existing is not None:
            digests = [layer.get("digest") for layer in existing.get("layers", [])]
            if f"sha256:{sha256}" in digests:
                return Published(ref, sha256, True)
            raise StoreError(
                f"{ref} is already published with other content ({', '.join(digests)})",
                hint="published versions are immutable: publish under a new --version",
            )
        with tempfile.TemporaryDirectory(prefix="zoo-oci-") as tmp:
            # ORAS names the layer after the file; push a copy named <name>-<version>.tar.gz
            layer = Path(tmp) / f"{name}-{version}.tar.gz"
            shutil.copyfile(archive, layer)
            config = Path(tmp) / "manifest.json"
            shutil.copyfile(manifest_path, config)
            try:
                client.push(
                    target=ref,
                    files=[f"{layer}:{LAYER_MEDIA_TYPE}"],
                    manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                    manifest_annotations={
                        ANNOTATION_SHA256: sha256,
                        "org.opencontainers.image.title": f"{name}-{version}.tar.gz",
                        "org.opencontainers.image.version": version,
                    },
                    disable_path_validation=True,
                    quiet=True,
                )
            except Exception as exc:
                raise StoreError(f"pushing {ref} failed: {type(exc).__name__}: {exc}") from None
        return Published(ref, sha256, False)

    def fetch(self, name: str, version: str, scratch: Path) -> Fetched:
        client = self._client()
        ref = self.reference(name, version)
        manifest = self._manifest(client, ref)
        if manifest is None:
            raise StoreError(
                f"{ref} is not in the registry", hint=f"publish it first: zoo publish … --store {self.uri}"
            )
        layers = [layer for layer in manifest.get("layers", []) if layer.get("mediaType") == LAYER_MEDIA_TYPE]
        if len(layers) != 1:
            raise IntegrityError(f"{ref} is not a zoo package (expected one {LAYER_MEDIA_TYPE} layer)")
        digest = layers[0]["digest"]
        if not digest.startswith("sha256:"):
            raise IntegrityError(f"{ref}: layer digest {digest} is not sha256")
        recorded = manifest.get("annotations", {}).get(ANNOTATION_SHA256)
        if recorded and recorded != digest.removeprefix("sha256:"):
            raise IntegrityError(f"{ref}: the manifest's annotation says sha256 {recorded}, its layer {digest}")
        local = scratch / f"{name}-{version}.tar.gz"
        try:
            client.download_blob(client.get_container(ref), digest, str(local))
        except Exception as exc:
            raise StoreError(f"downloading {ref} failed: {type(exc).__name__}: {exc}") from None
        return Fetched(local, digest.removeprefix("sha256:"), ref)


def parse_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version:
        raise UsageError(f"{ref!r} is not NAME:VERSION", hint="e.g. zoo pull tiny_vit-android:1.0.0 --dest DIR")
    check_name_version(name, version)
    return name, version


def archive_for(package: Path) -> tuple[Path, str, Path]:
    """(archive, its sha256, the package manifest) for a package folder or its .tar.gz."""
    package = Path(package)
    if package.is_dir():
        archive = package.with_name(package.name + ".tar.gz")
        if not archive.is_file():
            raise UsageError(f"{package} has no archive beside it ({archive.name})", hint="run `zoo package` again")
    elif package.name.endswith(".tar.gz") and package.is_file():
        archive = package
    else:
        raise UsageError(f"{package} is neither a package folder nor its .tar.gz")
    digest = sha256_file(archive)
    sidecar = archive.with_name(archive.name + ".sha256")
    if sidecar.is_file() and read_sha256_sidecar(sidecar) != digest:
        raise IntegrityError(f"{archive} does not match {sidecar.name}: it changed after it was built")
    return archive, digest, sidecar


def publish(package: Path, store_uri: str, *, progress: Progress = QUIET) -> Published:
    """Check the package (unpack into scratch, SHA256SUMS), then put its archive into the store."""
    archive, digest, _ = archive_for(package)
    store = open_store(store_uri)
    with tempfile.TemporaryDirectory(prefix="zoo-publish-") as tmp:
        root = safe_extract(archive, Path(tmp) / "x")
        require_intact(root)
        manifest = read_package_manifest(root)
        name, version = manifest["name"], manifest["version"]
        check_name_version(name, version)
        if root.name != f"{name}-{version}":
            raise IntegrityError(f"{archive.name}: top folder {root.name!r} is not {name}-{version}")
        with progress.step(f"publishing {name}:{version} to {store.uri}"):
            return store.publish(archive, digest, name, version, root / "manifest.json")


def pull(
    ref: str,
    store_uri: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    force: bool = False,
    progress: Progress = QUIET,
) -> Pulled:
    """Fetch NAME:VERSION, verify everything, and only then move it to `dest` (atomically)."""
    name, version = parse_ref(ref)
    dest = Path(dest)
    if dest.exists() and not force and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(
            f"{dest} already exists and is not empty", hint="pass --force to replace it, or another --dest"
        )
    store = open_store(store_uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-pull-") as scratch:
        with progress.step(f"fetching {name}:{version} from {store.uri}"):
            fetched = store.fetch(name, version, Path(scratch))
        actual = sha256_file(fetched.archive)
        if actual != fetched.recorded_sha256:
            raise IntegrityError(
                f"{name}:{version} from {fetched.location}: archive sha256 {actual}, the store records "
                f"{fetched.recorded_sha256}; nothing was written to {dest}",
                hint="the stored archive was altered or damaged; publish it again",
            )
        if expected_sha256 and actual != expected_sha256.lower():
            raise IntegrityError(
                f"{name}:{version}: archive sha256 {actual}, --sha256 pins {expected_sha256}; nothing was written to {dest}"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.pull-", dir=dest.parent))
        try:
            root = safe_extract(fetched.archive, staging / "unpacked")
            files = require_intact(root)
            manifest = read_package_manifest(root)
            if (manifest.get("name"), manifest.get("version")) != (name, version) or root.name != f"{name}-{version}":
                raise IntegrityError(
                    f"{fetched.location} holds {manifest.get('name')}:{manifest.get('version')} "
                    f"(folder {root.name}), not {name}:{version}"
                )
            _replace(root, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Pulled(dest, name, version, actual, files, fetched.location)


def _replace(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`; an existing `dest` (with --force) is swapped out and removed after."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    try:
        os.replace(source, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
