"""Publish and pull through a real OCI registry (Debian's docker-registry, the distribution API) started on
loopback by this file. The session fixture installs the package with apt-get when it is missing and it
can (root); the tests skip, saying why, only when the registry cannot be installed or started."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from packaging_helpers import converted_outputs, flip_byte

from zoo.checkpoints import sha256_file
from zoo.cli import main
from zoo.packaging.archive import package_files, write_archive, write_sha256_sidecar, write_sha256sums
from zoo.packaging.errors import IntegrityError, StoreError
from zoo.packaging.package import build_package
from zoo.packaging.store import CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, publish, pull

pytest.importorskip("oras", reason="the ORAS SDK is not installed (pip install 'zoo[publish]')")
requests = pytest.importorskip("requests")


def _install_registry() -> tuple[str | None, str]:
    found = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
    if found:
        return found, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return (
            None,
            "docker-registry is not installed, and installing it needs root and apt-get (apt-get install docker-registry)",
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=180", "install", "-y", "-q", "docker-registry"]
    log = ""
    for attempt in range(2):
        if attempt:
            update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=300)
            log += update.stdout[-500:] + update.stderr[-500:]
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        log += result.stdout[-500:] + result.stderr[-500:]
        if result.returncode == 0 and shutil.which("docker-registry"):
            return shutil.which("docker-registry"), ""
    return None, f"apt-get could not install docker-registry: {log.strip()[-400:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(binary: str, root: Path, extra_config: str = ""):
    """docker-registry serving `root`/data on 127.0.0.1:<free port>; yields the port (or skips, saying why)."""
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + extra_config
    )
    log = open(root / "registry.log", "w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.skip(f"docker-registry exited at start: {(root / 'registry.log').read_text()[-400:]}")
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"docker-registry did not answer on 127.0.0.1:{port} within 30 s")
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def registry_binary():
    binary, why = _install_registry()
    if binary is None:
        pytest.skip(f"no OCI registry to test against: {why}")
    return binary


@pytest.fixture(scope="session")
def registry(registry_binary, tmp_path_factory):
    """(store URI, storage root, port) of an open docker-registry on loopback."""
    root = tmp_path_factory.mktemp("registry")
    with _serving(registry_binary, root) as port:
        yield f"oci+http://127.0.0.1:{port}/zoo", root / "data", port


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    outputs = converted_outputs(tmp_path_factory)
    dist = tmp_path_factory.mktemp("dist-oci")
    return build_package(consumer="android", version="1.0.0", outputs=outputs, out=dist, allow_untrained=True)


def _as_version(package, version: str, where: Path) -> Path:
    """The same package under another version (a new archive, a new digest)."""
    folder = shutil.copytree(package.directory, where / f"tiny_vit-android-{version}")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = version
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    write_sha256sums(folder)
    archive = where / f"tiny_vit-android-{version}.tar.gz"
    write_sha256_sidecar(archive, write_archive(folder, archive))
    return folder


def _registry_manifest(port: int, repo: str, tag: str) -> dict:
    response = requests.get(
        f"http://127.0.0.1:{port}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_publish_pull_round_trip_through_registry(registry, package, tmp_path):
    uri, _, port = registry
    published = publish(package.directory, uri)
    assert not published.already_there
    assert published.location == f"127.0.0.1:{port}/zoo/tiny_vit-android:1.0.0"
    assert published.sha256 == package.sha256

    manifest = _registry_manifest(port, "zoo/tiny_vit-android", "1.0.0")
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == LAYER_MEDIA_TYPE
    assert layer["digest"] == f"sha256:{package.sha256}"  # the OCI digest is the archive's sha256
    assert layer["size"] == package.archive.stat().st_size
    assert manifest["annotations"]["io.zoo.package.sha256"] == package.sha256
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    config = requests.get(
        f"http://127.0.0.1:{port}/v2/zoo/tiny_vit-android/blobs/{manifest['config']['digest']}", timeout=10
    )
    assert config.json() == json.loads((package.directory / "manifest.json").read_text())

    pulled = pull("tiny_vit-android:1.0.0", uri, tmp_path / "app" / "models")
    assert pulled.sha256 == package.sha256 and pulled.location == published.location
    files = package_files(package.directory)
    assert package_files(pulled.destination) == files and pulled.files == len(files) - 1
    for rel in files:
        assert sha256_file(pulled.destination / rel) == sha256_file(package.directory / rel), rel


def test_republish_is_idempotent_and_versions_are_immutable(registry, package, tmp_path):
    uri, _, _ = registry
    publish(package.directory, uri)
    assert publish(package.archive, uri).already_there
    # same name and version as the published one, different bytes
    folder = shutil.copytree(package.directory, tmp_path / "changed" / "tiny_vit-android-1.0.0")
    (folder / "README.md").write_text("changed\n")
    write_sha256sums(folder)
    write_archive(folder, tmp_path / "changed" / "tiny_vit-android-1.0.0.tar.gz")
    with pytest.raises(StoreError, match="already published with other content"):
        publish(folder, uri)


def test_pull_rejects_a_blob_tampered_in_the_registry(registry, package, tmp_path):
    uri, storage, _ = registry
    folder = _as_version(package, "1.0.1-tampered", tmp_path)
    published = publish(folder, uri)
    blob = storage / "docker/registry/v2/blobs/sha256" / published.sha256[:2] / published.sha256 / "data"
    assert blob.is_file()
    flip_byte(blob)
    (tmp_path / "app").mkdir()
    with pytest.raises(IntegrityError, match="nothing was written"):
        pull("tiny_vit-android:1.0.1-tampered", uri, tmp_path / "app" / "models")
    assert list((tmp_path / "app").iterdir()) == []
    with pytest.raises(IntegrityError, match="pins"):
        pull("tiny_vit-android:1.0.0", uri, tmp_path / "app" / "models", expected_sha256="f" * 64)
    assert list((tmp_path / "app").iterdir()) == []


def test_unknown_tag_and_unreachable_registry(registry, tmp_path):
    uri, _, _ = registry
    with pytest.raises(StoreError, match="not in the registry"):
        pull("tiny_vit-android:0.0.0-none", uri, tmp_path / "d")
    start = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach the registry"):
        pull("tiny_vit-android:1.0.0", f"oci+http://127.0.0.1:{_free_port()}/zoo", tmp_path / "d")
    assert time.monotonic() - start < 15 and not (tmp_path / "d").exists()


def test_cli_publish_and_pull(registry, package, tmp_path):
    uri, _, _ = registry
    assert main(["publish", str(package.archive), "--store", uri, "-q"]) == 0
    dest = tmp_path / "pulled"
    argv = ["pull", "tiny_vit-android:1.0.0", "--store", uri, "--dest", str(dest), "--sha256", package.sha256, "-q"]
    assert main(argv) == 0
    assert sha256_file(dest / "assets/tiny_vit/model.onnx") == sha256_file(
        package.directory / "assets/tiny_vit/model.onnx"
    )


def test_registry_with_credentials(registry_binary, package, tmp_path, monkeypatch):
    """A team registry behind htpasswd (Basic) auth: refused without credentials, round trip with them."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip("htpasswd (apache2-utils) is not installed: cannot write the registry's bcrypt password file")
    users = tmp_path / "htpasswd"
    users.write_text(
        subprocess.run([htpasswd, "-Bbn", "ci", "s3cret"], capture_output=True, text=True, check=True).stdout
    )
    extra = f"auth:\n  htpasswd:\n    realm: zoo\n    path: {users}\n"
    with _serving(registry_binary, tmp_path, extra) as port:
        uri = f"oci+http://127.0.0.1:{port}/team"
        monkeypatch.delenv("ZOO_OCI_USERNAME", raising=False)
        monkeypatch.delenv("ZOO_OCI_PASSWORD", raising=False)
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
        with pytest.raises(StoreError, match="credentials"):
            publish(package.directory, uri)
        monkeypatch.setenv("ZOO_OCI_USERNAME", "ci")
        monkeypatch.setenv("ZOO_OCI_PASSWORD", "wrong")
        with pytest.raises(StoreError, match="credentials"):
            publish(package.directory, uri)
        monkeypatch.setenv("ZOO_OCI_PASSWORD", "s3cret")
        assert publish(package.directory, uri).sha256 == package.sha256
        pulled = pull("tiny_vit-android:1.0.0", uri, tmp_path / "dest")
        assert pulled.sha256 == package.sha256
        assert sha256_file(pulled.destination / "manifest.json") == sha256_file(package.directory / "manifest.json")
