"""Packages for the apps: each consumer's layout and manifest, refusals, `zoo verify`, and pull from a
local store (tampered archives, escaping paths). One tiny_vit → android conversion serves them all."""

import json
import re
import shutil
import subprocess
import tarfile

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper
from packaging_helpers import (
    converted_outputs,
    copy_output,
    edit_json,
    edit_report,
    evil_archive,
    flip_byte,
    put_in_local_store,
)

from zoo.checkpoints import sha256_file
from zoo.cli import main
from zoo.errors import UsageError
from zoo.fidelity import Fidelity, Status
from zoo.outputs import file_entry
from zoo.packaging.archive import (
    DEFAULT_MTIME,
    gzip_header_mtime,
    package_files,
    write_archive,
    write_sha256sums,
)
from zoo.packaging.errors import IntegrityError, PackageRefused, StoreError
from zoo.packaging.package import build_package
from zoo.packaging.store import publish, pull
from zoo.packaging.verify import verify_package
from zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from zoo.runtimes import get_runtime
from zoo.targets import get_target

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return converted_outputs(tmp_path_factory)


@pytest.fixture(scope="module")
def android_pkg(outputs, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist-android")
    return build_package(consumer="android", version="1.0.0", outputs=outputs, out=dist, allow_untrained=True)


@pytest.fixture(scope="module")
def detector_onnx(tmp_path_factory):
    """A small stand-in detector (image → 1×5 box), as a team's own exporter would hand it over."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["boxes"], axes=[2, 3], keepdims=0)], "det", [x], [y]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path_factory.mktemp("detector") / "yolo_dog.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def immich_outputs(tmp_path_factory):
    return converted_outputs(tmp_path_factory, pairs=(("tiny_dog", "server"),))


@pytest.fixture(scope="module")
def immich_pkg(immich_outputs, detector_onnx, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist-immich")
    return build_package(
        consumer="immich",
        version="2.1.0",
        outputs=immich_outputs,
        models=["tiny_dog"],
        out=dist,
        detector=detector_onnx,
        allow_untrained=True,
    )


@pytest.fixture(scope="module")
def ios_outputs(outputs, tmp_path_factory):
    """An ios output directory: the Core ML step may not have landed here, so this stands one in from the
    real tiny_vit output (same model and report figures) with an .mlpackage folder as its artifact."""
    root = tmp_path_factory.mktemp("ios-outputs")
    out = copy_output(outputs / "tiny_vit" / "android", root / "tiny_vit" / "ios")
    for name in ("model.onnx", "model.ort", "required_operators.config"):
        (out / name).unlink()
    pkg = out / "model.mlpackage"
    (pkg / "Data" / "com.apple.CoreML" / "weights").mkdir(parents=True)
    (pkg / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
    (pkg / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(b"\x08\x09mlprogram stand-in")
    (pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").write_bytes(bytes(range(256)) * 8)
    entry = {
        **file_entry(out, "model.mlpackage"),
        "format": "mlpackage",
        "runnable": True,
        "description": "Core ML mlprogram (stand-in)",
        "runtime": "coreml",
        "host_l2_normalize": False,
    }

    def manifest(m):
        m["target"] = get_target("ios").to_dict()
        m["artifacts"] = [entry]

    def report(r):
        r["target"] = "ios"
        r["artifacts"] = ["model.mlpackage"]
        r["checks"] = [dict(c, artifact="model.mlpackage") for c in r["checks"] if c["artifact"] == "model.onnx"]

    edit_json(out / "manifest.json", manifest)
    edit_report(out, report)
    return root


@pytest.fixture(scope="module")
def ios_pkg(ios_outputs, tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist-ios")
    return build_package(consumer="ios", version="3.0.0", outputs=ios_outputs, out=dist, allow_untrained=True)


def _sha256sum_check(folder, listing):
    return subprocess.run(["sha256sum", "--strict", "-c", listing], cwd=folder, capture_output=True, text=True)


def _files(folder):
    return set(package_files(folder))


# ---------------------------------------------------------------- layouts and manifests


def test_android_layout_files_and_manifest(android_pkg, outputs):
    pkg = android_pkg.directory
    assert pkg.name == "tiny_vit-android-1.0.0"
    assert _files(pkg) == {
        "README.md",
        "SHA256SUMS",
        "manifest.json",
        "assets/tiny_vit/model.onnx",
        "assets/tiny_vit/model.ort",
        "assets/tiny_vit/required_operators.config",
        "assets/tiny_vit/model.json",
        "gradle/zoo-assets.gradle.kts",
        *(f"golden/tiny_vit/64px/{f}" for f in ("astronaut.png", "chelsea.png", "coffee.png")),
        "golden/tiny_vit/64px/inputs.npy",
        "golden/tiny_vit/64px/expected.npy",
        "golden/tiny_vit/64px/golden.json",
    }
    src = outputs / "tiny_vit" / "android"
    for name in ("model.onnx", "model.ort", "required_operators.config"):
        assert (pkg / "assets/tiny_vit" / name).read_bytes() == (src / name).read_bytes()

    m = json.loads((pkg / "manifest.json").read_text())
    assert (m["schema"], m["schema_version"], m["name"], m["version"], m["consumer"]) == (
        "zoo.package",
        1,
        "tiny_vit-android",
        "1.0.0",
        "android",
    )
    assert m["untrained_weights"] is True and any("UNTRAINED WEIGHTS" in w for w in m["warnings"])
    (model,) = m["models"]
    assert (model["name"], model["role"], model["registry_role"], model["teacher"]) == (
        "tiny_vit",
        "embedder",
        "student",
        "tiny_teacher",
    )
    assert model["depends_on"] == []
    assert model["embedding"] == {"dim": 32, "l2_normalized": True, "metric": "cosine", "space": "tiny-32"}
    assert model["input"]["size"] == 64 and model["input"]["layout"] == "NCHW" and model["input"]["color"] == "RGB"
    assert model["input"]["mean"] == list(IMAGENET_MEAN) and model["input"]["std"] == list(IMAGENET_STD)
    assert model["weights"] == "untrained" and model["untrained_weights"] is True
    assert model["checkpoint_sha256"] is None and model["calibration_sha256"] is None

    import onnxruntime

    by_path = {a["path"]: a for a in model["artifacts"]}
    assert set(by_path) == {f"assets/tiny_vit/{n}" for n in ("model.onnx", "model.ort", "required_operators.config")}
    for path, a in by_path.items():
        assert a["sha256"] == sha256_file(pkg / path) and a["size"] == (pkg / path).stat().st_size > 0
        assert a["target"] == "android" and a["precision"] == "fp32" and a["input_size"] == 64
        assert a["toolchain"]["onnxruntime"] == onnxruntime.__version__ and a["toolchain"]["torch"].startswith("2.")
        assert a["source"] == "tiny_vit/android/" + path.rsplit("/", 1)[1]
    assert by_path["assets/tiny_vit/model.onnx"]["format"] == "onnx"
    assert by_path["assets/tiny_vit/model.ort"]["format"] == "ort"
    assert by_path["assets/tiny_vit/required_operators.config"]["runnable"] is False

    (validation,) = model["validation"]
    source_report = json.loads((src / "report.json").read_text())
    assert validation["target"] == "android" and validation["verdict"] == source_report["verdict"]
    assert validation["verdict"].startswith("pass") and validation["counts"]["fail"] == 0
    assert validation["report_sha256"] == sha256_file(src / "report.json")
    assert len(validation["checks"]) == len(source_report["checks"])

    app = json.loads((pkg / "assets/tiny_vit/model.json").read_text())
    assert app["embedding"]["dim"] == 32 and app["untrained_weights"] is True
    assert {f["file"]: f["sha256"] for f in app["files"]} == {
        p.rsplit("/", 1)[1]: a["sha256"] for p, a in by_path.items()
    }


def test_golden_inputs_and_expected_outputs(android_pkg):
    import onnxruntime as ort

    folder = android_pkg.directory / "golden/tiny_vit/64px"
    record = json.loads((folder / "golden.json").read_text())
    x, expected = np.load(folder / "inputs.npy"), np.load(folder / "expected.npy")
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.float32
    assert expected.shape == (3, 32) and expected.dtype == np.float32
    assert np.allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
    assert [i["name"] for i in record["images"]] == ["astronaut", "chelsea", "coffee"]
    assert record["min_cosine"] == get_target("android").min_cosine_vs_source
    assert record["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    # the packaged ONNX reproduces the source model's expected outputs
    session = ort.InferenceSession(str(android_pkg.directory / "assets/tiny_vit/model.onnx"))
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])
    cos = np.sum(out * expected, axis=1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(expected, axis=1))
    assert cos.min() >= 0.9999


def test_sha256sums_and_archive_sidecar_pass_coreutils(android_pkg):
    pkg = android_pkg.directory
    result = _sha256sum_check(pkg, "SHA256SUMS")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": OK") == len(_files(pkg)) - 1  # every file but SHA256SUMS itself
    result = _sha256sum_check(android_pkg.archive.parent, android_pkg.sidecar.name)
    assert result.returncode == 0 and ": OK" in result.stdout
    assert HEX64.match(android_pkg.sha256) and android_pkg.sha256 == sha256_file(android_pkg.archive)


def test_archive_is_deterministic(android_pkg, tmp_path):
    again = write_archive(android_pkg.directory, tmp_path / "again.tar.gz", top=android_pkg.directory.name)
    assert again == android_pkg.sha256
    assert gzip_header_mtime(android_pkg.archive) == 0
    with tarfile.open(android_pkg.archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == "tiny_vit-android-1.0.0"
    assert all(m.mtime == DEFAULT_MTIME and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    assert all(m.mode == (0o755 if m.isdir() else 0o644) for m in members)
    assert {n.split("/", 1)[1] for n in names if "/" in n and not n.endswith("/")} >= _files(android_pkg.directory)


def test_android_gradle_snippets(android_pkg):
    (pinned,) = android_pkg.extras
    text = pinned.read_text()
    assert f'val zooPackageSha256: String = "{android_pkg.sha256}"' in text
    assert 'MessageDigest.getInstance("SHA-256")' in text and "throw GradleException" in text
    assert 'include("$zooPackage/assets/**")' in text and 'val zooPackage = "tiny_vit-android-1.0.0"' in text
    template = (android_pkg.directory / "gradle/zoo-assets.gradle.kts").read_text()
    assert 'findProperty("zooPackageSha256")' in template and not re.search(r"[0-9a-f]{64}", template)


def test_immich_layout(immich_pkg, immich_outputs, detector_onnx):
    pkg = immich_pkg.directory
    base = "facial-recognition/tiny_dog"
    assert {f for f in _files(pkg) if f.startswith("facial-recognition/")} == {
        f"{base}/README.md",
        f"{base}/detection/model.onnx",
        f"{base}/recognition/model.onnx",
    }  # no preprocess_cfg.json: Immich never reads one for faces, so the card states the contract instead
    assert (pkg / base / "recognition/model.onnx").read_bytes() == (
        immich_outputs / "tiny_dog/server/model.onnx"
    ).read_bytes()
    assert (pkg / base / "detection/model.onnx").read_bytes() == detector_onnx.read_bytes()

    text = (pkg / base / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert {"immich", "facial-recognition", "untrained-weights"} <= set(front["tags"])
    assert front["model_types"] == ["recognition", "detection"]
    assert (front["embedding_dim"], front["embedding_space"], front["l2_normalized"]) == (512, "tiny-dogs-512", True)
    assert (front["input_mean"], front["input_std"]) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert "UNTRAINED WEIGHTS" in text and "127.5" in text and "buffalo_l" in text

    m = json.loads((pkg / "manifest.json").read_text())
    detector, embedder = m["models"]
    assert (detector["name"], detector["role"]) == ("tiny_dog-detector", "detector")
    assert detector["artifacts"][0]["path"] == f"{base}/detection/model.onnx"
    assert detector["artifacts"][0]["sha256"] == sha256_file(detector_onnx)
    assert detector["validation"]["verdict"] == "not validated by zoo"
    assert embedder["role"] == "embedder" and embedder["depends_on"] == ["tiny_dog-detector"]
    assert [a["path"] for a in embedder["artifacts"]] == [f"{base}/recognition/model.onnx"]
    assert m["layout"]["immich_task"] == "facial-recognition"
    assert _sha256sum_check(pkg, "SHA256SUMS").returncode == 0

    report = verify_package(pkg)
    assert not report.failed, report.to_terminal()
    det = [c for c in report.checks if c.artifact.endswith("detection/model.onnx") and c.name == "golden outputs"]
    assert det and det[0].status is Status.NOT_APPLICABLE  # a supplied detector is hashed, never "passed"


def test_ios_layout(ios_pkg, ios_outputs):
    pkg = ios_pkg.directory
    res = "Sources/TinyVitIos/Resources"
    files = _files(pkg)
    assert {"Package.swift", "Sources/TinyVitIos/TinyVitIos.swift", f"{res}/tiny_vit.json"} <= files
    assert {f"{res}/tiny_vit.mlpackage/{p}" for p in ("Manifest.json", "Data/com.apple.CoreML/model.mlmodel")} <= files
    assert not any(f.endswith((".onnx", ".ort")) for f in files)
    src = ios_outputs / "tiny_vit/ios/model.mlpackage"
    assert (pkg / res / "tiny_vit.mlpackage/Data/com.apple.CoreML/weights/weight.bin").read_bytes() == (
        src / "Data/com.apple.CoreML/weights/weight.bin"
    ).read_bytes()

    swift_pkg = (pkg / "Package.swift").read_text()
    assert 'name: "TinyVitIos"' in swift_pkg and '.copy("Resources")' in swift_pkg
    m = json.loads((pkg / "manifest.json").read_text())
    (a,) = m["models"][0]["artifacts"]
    assert (a["path"], a["kind"], a["format"], a["target"]) == (
        f"{res}/tiny_vit.mlpackage",
        "directory",
        "mlpackage",
        "ios",
    )
    assert a["sha256"] == file_entry(ios_outputs / "tiny_vit/ios", "model.mlpackage")["sha256"]
    swift = (pkg / "Sources/TinyVitIos/TinyVitIos.swift").read_text()
    assert "embeddingDim: 32" in swift and a["sha256"] in swift and 'resourceExtension: "mlpackage"' in swift
    meta = json.loads((pkg / res / "tiny_vit.json").read_text())
    assert meta["files"] == [
        {"file": "tiny_vit.mlpackage", "format": "mlpackage", "sha256": a["sha256"], "target": "ios"}
    ]
    assert _sha256sum_check(pkg, "SHA256SUMS").returncode == 0

    # without a Core ML runtime here the golden run is "not run", never a pass; with one, the stand-in
    # (not a real Core ML program) must fail
    report = verify_package(pkg)
    (golden,) = [c for c in report.checks if c.name.startswith("golden outputs")]
    try:
        runtime = get_runtime("coreml")
        available = runtime.unavailable_reason() is None and "mlpackage" in runtime.formats
    except UsageError:
        available = False
    if available:
        assert golden.status is Status.FAIL and report.failed
    else:
        assert golden.status is Status.NOT_RUN and golden.fidelity is Fidelity.NOT_RUN and golden.detail
        assert not report.failed


# ---------------------------------------------------------------- refusals


def test_untrained_refused_without_flag(outputs, tmp_path):
    with pytest.raises(UsageError, match="UNTRAINED WEIGHTS") as info:
        build_package(consumer="android", version="1.0.0", outputs=outputs, out=tmp_path / "dist")
    assert info.value.exit_code == 2 and "--allow-untrained" in info.value.hint
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


@pytest.mark.parametrize("verdict", ["fail", "not validated"])
def test_failing_or_unvalidated_output_refused(outputs, tmp_path, verdict):
    out = copy_output(outputs / "tiny_vit" / "android", tmp_path / "out" / "tiny_vit" / "android")

    def report(r):
        r["verdict"] = verdict
        if verdict == "fail":
            parity = next(c for c in r["checks"] if c["name"].startswith("parity vs source"))
            parity.update(status="fail", value=0.93)
        else:
            r["checks"] = []

    edit_report(out, report)
    edit_json(out / "manifest.json", lambda m: m.update(verdict=verdict))
    with pytest.raises(PackageRefused) as info:
        build_package(
            consumer="android", version="1.0.0", outputs=tmp_path / "out", out=tmp_path / "dist", allow_untrained=True
        )
    assert info.value.exit_code == 1
    if verdict == "fail":
        assert "FAILED" in str(info.value) and "parity vs source" in str(info.value) and "0.93" in str(info.value)
    else:
        assert "--no-validate" in str(info.value)
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())
    argv = ["package", "--consumer", "android", "--version", "1.0.0", "--outputs", str(tmp_path / "out")]
    assert main([*argv, "--out", str(tmp_path / "dist"), "--allow-untrained", "-q"]) == 1


def test_revalidated_output_is_accepted(outputs, tmp_path):
    """`zoo validate DIR` rewrites report.json, not the manifest: the report's verdict is the one that counts."""
    out = copy_output(outputs / "tiny_vit" / "android", tmp_path / "out" / "tiny_vit" / "android")
    edit_json(out / "manifest.json", lambda m: m.update(verdict="not validated"))
    outcome = build_package(
        consumer="android", version="1.0.0", outputs=tmp_path / "out", out=tmp_path / "dist", allow_untrained=True
    )
    assert outcome.manifest["models"][0]["validation"][0]["verdict"].startswith("pass")


def test_output_changed_after_validation_refused(outputs, tmp_path):
    out = copy_output(outputs / "tiny_vit" / "android", tmp_path / "out" / "tiny_vit" / "android")
    flip_byte(out / "model.ort")
    with pytest.raises(IntegrityError, match="model.ort sha256 differs"):
        build_package(
            consumer="android", version="1.0.0", outputs=tmp_path / "out", out=tmp_path / "dist", allow_untrained=True
        )


def test_consumer_without_usable_artifacts(outputs, tmp_path):
    with pytest.raises(UsageError, match="no output directories for target"):
        build_package(consumer="ios", version="1.0.0", outputs=outputs, out=tmp_path, allow_untrained=True)
    with pytest.raises(UsageError, match="'tiny_vit' has no output directory for this consumer"):
        build_package(
            consumer="ios", version="1", models=["tiny_vit"], outputs=outputs, out=tmp_path, allow_untrained=True
        )
    with pytest.raises(
        UsageError, match=r"no artifact the ios consumer can use .*\(formats there: config, onnx, ort\)"
    ):
        build_package(
            consumer="ios", version="1", targets=["android"], outputs=outputs, out=tmp_path, allow_untrained=True
        )
    with pytest.raises(UsageError, match="not usable as a store tag"):
        build_package(consumer="android", version="1.0+x", outputs=outputs, out=tmp_path, allow_untrained=True)


# ---------------------------------------------------------------- verify


def test_verify_passes_with_measured_golden_numbers(android_pkg):
    report = verify_package(android_pkg.directory)
    assert not report.failed, report.to_terminal()
    sums = next(c for c in report.checks if c.name == "files match SHA256SUMS")
    assert (
        sums.status is Status.PASS
        and sums.value == f"{len(_files(android_pkg.directory)) - 1}/{len(_files(android_pkg.directory)) - 1}"
    )
    golden = [c for c in report.checks if c.name.startswith("golden outputs")]
    assert {c.artifact for c in golden} == {"assets/tiny_vit/model.onnx", "assets/tiny_vit/model.ort"}
    for check in golden:
        assert check.status is Status.PASS and check.fidelity is Fidelity.MEASURED
        assert check.value >= 0.9999 and len(check.data["per_sample_cosine"]) == 3
        assert check.data["norm_error_max"] < 1e-3
    prep = next(c for c in report.checks if c.name.startswith("golden preprocessing"))
    assert prep.status is Status.PASS and prep.value <= 1e-5
    assert any(c.name == "weights" and c.value == "UNTRAINED" for c in report.checks)
    assert main(["verify", str(android_pkg.archive), "-q"]) == 0


def test_verify_catches_one_flipped_byte(android_pkg, tmp_path):
    pkg = shutil.copytree(android_pkg.directory, tmp_path / "pkg")
    flip_byte(pkg / "assets/tiny_vit/model.onnx")
    report = verify_package(pkg)
    assert report.failed
    sums = next(c for c in report.checks if c.name == "files match SHA256SUMS")
    assert sums.status is Status.FAIL and sums.data["mismatched"] == ["assets/tiny_vit/model.onnx"]
    artifact = next(
        c for c in report.checks if c.name.startswith("artifact sha256") and c.artifact.endswith("model.onnx")
    )
    assert artifact.status is Status.FAIL
    golden = next(c for c in report.checks if c.name.startswith("golden outputs") and c.artifact.endswith("model.onnx"))
    assert golden.status is Status.NOT_RUN  # a tampered artifact is never run, let alone passed
    assert main(["verify", str(pkg), "-q"]) == 1

    pkg2 = shutil.copytree(android_pkg.directory, tmp_path / "pkg2")
    flip_byte(pkg2 / "golden/tiny_vit/64px/expected.npy", offset=-1)
    (pkg2 / "extra.txt").write_text("not listed")
    report = verify_package(pkg2)
    sums = next(c for c in report.checks if c.name == "files match SHA256SUMS")
    assert sums.data["mismatched"] == ["golden/tiny_vit/64px/expected.npy"] and sums.data["unlisted"] == ["extra.txt"]
    assert main(["verify", str(pkg2), "-q"]) == 1


# ---------------------------------------------------------------- local store: publish and pull


def test_publish_pull_round_trip_local(android_pkg, tmp_path):
    store = tmp_path / "store"
    published = publish(android_pkg.directory, str(store))
    assert not published.already_there and published.sha256 == android_pkg.sha256
    assert publish(android_pkg.archive, str(store)).already_there
    pulled = pull("tiny_vit-android:1.0.0", str(store), tmp_path / "app" / "models")
    dest = pulled.destination
    assert pulled.sha256 == android_pkg.sha256 and pulled.files == len(_files(dest)) - 1
    assert _files(dest) == _files(android_pkg.directory)
    for rel in _files(dest):
        assert sha256_file(dest / rel) == sha256_file(android_pkg.directory / rel), rel
    assert _sha256sum_check(dest, "SHA256SUMS").returncode == 0
    assert main(["pull", "tiny_vit-android:1.0.0", "--store", str(store), "--dest", str(dest), "-q"]) == 2  # not empty
    assert main(["pull", "tiny_vit-android:1.0.0", "--store", str(store), "--dest", str(dest), "--force", "-q"]) == 0

    # a published version is immutable
    other = shutil.copytree(android_pkg.directory, tmp_path / "other" / "tiny_vit-android-1.0.0")
    (other / "README.md").write_text("changed\n")
    write_sha256sums(other)
    write_archive(other, tmp_path / "other" / "tiny_vit-android-1.0.0.tar.gz")
    with pytest.raises(StoreError, match="already published"):
        publish(other, str(store))


def _no_leftovers(parent, name):
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_pull_rejects_tampered_archive(android_pkg, tmp_path):
    store = tmp_path / "store"
    publish(android_pkg.directory, str(store))
    stored = store / "tiny_vit-android/1.0.0/tiny_vit-android-1.0.0.tar.gz"
    flip_byte(stored)
    (tmp_path / "app").mkdir()
    with pytest.raises(IntegrityError, match="nothing was written"):
        pull("tiny_vit-android:1.0.0", str(store), tmp_path / "app" / "models")
    assert _no_leftovers(tmp_path / "app", "models")
    assert main(["pull", "tiny_vit-android:1.0.0", "--store", str(store), "--dest", str(tmp_path / "app/models")]) == 1

    # tampered inside, with a .sha256 that matches the tampered archive: SHA256SUMS catches it
    evil = shutil.copytree(android_pkg.directory, tmp_path / "evil" / "tiny_vit-android-1.0.0")
    flip_byte(evil / "assets/tiny_vit/model.onnx")
    archive = tmp_path / "evil" / "x.tar.gz"
    write_archive(evil, archive)
    store2 = tmp_path / "store2"
    put_in_local_store(store2, "tiny_vit-android", "1.0.0", archive)
    with pytest.raises(IntegrityError, match=r"SHA256SUMS.*assets/tiny_vit/model.onnx"):
        pull("tiny_vit-android:1.0.0", str(store2), tmp_path / "app" / "models")
    assert _no_leftovers(tmp_path / "app", "models")

    # a pinned sha256 that differs
    with pytest.raises(IntegrityError, match="pins"):
        pull("tiny_vit-android:1.0.0", str(store2), tmp_path / "app" / "models", expected_sha256="0" * 64)
    assert _no_leftovers(tmp_path / "app", "models")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_pull_rejects_escaping_paths(tmp_path, kind):
    escape_target = tmp_path / "escaped.txt"
    archive = evil_archive(tmp_path / "evil.tar.gz", kind, escape_target)
    store = tmp_path / "store"
    put_in_local_store(store, "evil", "1.0.0", archive)
    (tmp_path / "app").mkdir()
    with pytest.raises(IntegrityError, match="unsafe to unpack") as info:
        pull("evil:1.0.0", str(store), tmp_path / "app" / "models")
    assert {"dotdot": "'..'", "absolute": "absolute", "symlink": "link", "hardlink": "link"}[kind] in str(info.value)
    assert not escape_target.exists() and not (tmp_path / "escaped.txt").exists()
    assert _no_leftovers(tmp_path / "app", "models")
    assert main(["pull", "evil:1.0.0", "--store", str(store), "--dest", str(tmp_path / "app/models"), "-q"]) == 1
    assert _no_leftovers(tmp_path / "app", "models")


def test_pull_unknown_version_names_the_known_ones(android_pkg, tmp_path):
    store = tmp_path / "store"
    publish(android_pkg.directory, str(store))
    with pytest.raises(StoreError, match="not in the store") as info:
        pull("tiny_vit-android:9.9.9", str(store), tmp_path / "dest")
    assert "1.0.0" in info.value.hint and not (tmp_path / "dest").exists()


def test_immich_refuses_a_model_immich_would_break(outputs, tmp_path):
    """tiny_vit on android: 32-d and a static batch axis; Immich's column is vector(512) and it rewrites
    any model whose batch axis is not named `batch`."""
    with pytest.raises(UsageError) as err:
        build_package(
            consumer="immich", version="1.0.0", outputs=outputs, models=["tiny_vit"], out=tmp_path, allow_untrained=True
        )
    text = str(err.value)
    assert "breaks Immich's rule(s)" in text and "512-d embedding" in text and "gives 32-d" in text
    assert "batch axis named 'batch'" in text and "one output" not in text
    assert not list(tmp_path.iterdir())
