"""The reference dog-line pipeline (ref_dogs: YOLO detector → YOLO-pose keypoints → ref_dog, 512-d):
converted, checked, packaged for Immich, verified on the consumer's path, and served over Immich's
ML protocol the way Immich's server calls it."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from zoo.detection import yolo
from zoo.detection.convert import convert_pipeline
from zoo.detection.scenes import CHECK_SEED, scene
from zoo.detection.spec import get_pipeline, pipeline_from_dict
from zoo.errors import UsageError
from zoo.fidelity import Fidelity, Status
from zoo.packaging.errors import IntegrityError
from zoo.packaging.package import build_package
from zoo.packaging.verify import verify_package

IMMICH_FACES = {
    "facial-recognition": {
        "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.5}},
        "recognition": {"modelName": "buffalo_l"},
    }
}


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def immich_multipart(entries: dict | str | None, image: bytes | None) -> tuple[bytes, str]:
    """The body Immich's server sends (Node FormData: `entries` as a string, `image` as a Blob)."""
    boundary = "----formdata-undici-0" + uuid.uuid4().hex[:24]
    parts = []
    if entries is not None:
        text = entries if isinstance(entries, str) else json.dumps(entries)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="entries"\r\n\r\n{text}\r\n'.encode())
    if image is not None:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="blob"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + image
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict | str]:
    request = urllib.request.Request(url + "/predict", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(package: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zoo", "serve", str(package), "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                if r.read() == b"pong":
                    return proc, url
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read().decode()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("zoo serve did not answer /ping")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline-out")


@pytest.fixture(scope="module")
def converted(outputs):
    return convert_pipeline("ref_dogs", "server", out_root=outputs, latency_runs=20)


@pytest.fixture(scope="module")
def package(converted, outputs, tmp_path_factory):
    return build_package(
        consumer="immich", version="1.0.0", outputs=outputs, pipeline="ref_dogs", out=tmp_path_factory.mktemp("dist")
    )


@pytest.fixture(scope="module")
def server(package):
    proc, url = start_server(package.directory, "--max-upload-mb", "2")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


# ------------------------------------------------------------------------------------ decoding


def test_letterbox_and_decode_recover_boxes_in_image_pixels():
    image = np.zeros((200, 400, 3), np.uint8)  # wide: padded top and bottom
    x, box = yolo.letterbox(image, 256)
    assert x.shape == (1, 3, 256, 256) and box.scale == pytest.approx(0.64) and box.pad_y == 64 and box.pad_x == 0
    assert x[0, :, 0, 0] == pytest.approx([114 / 255] * 3)
    out = np.zeros((1, 4 + 2, 5), np.float32)
    # anchor 0: class 1 at image box (100, 50)-(200, 150) → letterboxed centre (96, 128), size 64
    out[0, :, 0] = [96, 128, 64, 64, 0.1, 0.9]
    out[0, :, 1] = [97, 128, 64, 64, 0.1, 0.8]  # a duplicate: suppressed by NMS
    out[0, :, 2] = [40, 100, 20, 20, 0.7, 0.0]  # class 0
    out[0, :, 3] = [200, 100, 20, 20, 0.2, 0.1]  # below the threshold
    d = yolo.decode(out, classes=2, keypoints=0, box=box, image_size=(200, 400), score_threshold=0.5, iou_threshold=0.5)
    assert d.classes.tolist() == [1, 0] and d.scores.tolist() == pytest.approx([0.9, 0.7])
    assert d.boxes[0] == pytest.approx([100, 50, 200, 150], abs=1e-4)
    only = yolo.decode(
        out,
        classes=2,
        keypoints=0,
        box=box,
        image_size=(200, 400),
        score_threshold=0.5,
        iou_threshold=0.5,
        class_ids=(1,),
    )
    assert only.classes.tolist() == [1]
    with pytest.raises(yolo.OutputFormatError, match=r"not \(1, 6, anchors\)"):
        yolo.decode(
            out[:, :5], classes=2, keypoints=0, box=box, image_size=(200, 400), score_threshold=0.5, iou_threshold=0.5
        )


def test_pose_keypoints_come_back_in_image_pixels():
    out = np.zeros((1, 4 + 1 + 3 * 4, 2), np.float32)
    out[0, :5, 0] = [64, 64, 40, 40, 0.95]
    out[0, 5:, 0] = [44, 44, 0.9, 84, 44, 0.9, 84, 84, 0.9, 44, 84, 0.2]
    _, box = yolo.letterbox(np.zeros((64, 64, 3), np.uint8), 128)  # scale 2, no padding
    d = yolo.decode(out, classes=1, keypoints=4, box=box, image_size=(64, 64), score_threshold=0.5, iou_threshold=0.5)
    assert d.keypoints.shape == (1, 4, 3)
    assert d.keypoints[0, :, :2].tolist() == [[22, 22], [42, 22], [42, 42], [22, 42]]
    assert d.keypoints[0, :, 2].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.2])


def test_a_pipeline_spec_lists_every_problem_at_once(tmp_path):
    bad = {
        "embedder": "ref_dog",
        "colour": "x",
        "crop_margin": 3,
        "detector": {"onnx": {"path": "d.onnx", "sha256": "12"}, "classes": ["dog"], "keep": ["cat"]},
        "keypoints": {"onnx": {"path": "k.onnx", "sha256": "0" * 64}, "keypoints": 3, "chip": "warp"},
    }
    with pytest.raises(UsageError) as err:
        pipeline_from_dict("bad", bad, tmp_path / "r.toml")
    text = str(err.value)
    for expected in (
        "unknown key(s) colour",
        "crop_margin must be a number in [0, 1]",
        "detector.onnx must be",
        "keep names cat",
        "chip must be one of warp, box (warp needs 4 keypoints)",
    ):
        assert expected in text
    spec = get_pipeline("ref_dogs")
    assert spec.embedder == "ref_dog" and spec.keypoints.keypoints == 4 and spec.detector.onnx.path.is_file()
    with pytest.raises(UsageError, match="unknown pipeline 'ref_dog'") as err:
        get_pipeline("ref_dog")
    assert "did you mean 'ref_dogs'" in err.value.hint


# ------------------------------------------------------------------------------------ conversion and checks


def test_the_reference_pipeline_passes_its_stage_checks(converted):
    report = converted.report
    rows = {c.name: c for c in report.checks}
    assert not report.failed, report.to_terminal()
    assert all(c.status is Status.PASS and c.fidelity is Fidelity.MEASURED for c in report.checks)
    assert rows["detector: recall at IoU 0.5"].value >= 0.9
    assert rows["detector: precision at IoU 0.5"].value >= 0.9
    assert rows["keypoints: chip taken (enough keypoints found)"].value >= 0.8
    assert rows["pipeline: same card, p5 cosine"].value > 0.8
    assert rows["pipeline: different cards, p95 cosine"].value < 0.5
    manifest = json.loads((converted.out_dir / "pipeline.json").read_text())
    stages = manifest["stages"]
    assert stages["embedder"]["embedding"]["dim"] == 512 and stages["embedder"]["validation"]["verdict"].startswith(
        "pass"
    )
    assert stages["detector"]["input"]["size"] == 256 and "letterbox" in stages["detector"]["input"]["resize"]
    assert stages["keypoints"]["keypoints"] == 4 and stages["detector"]["opset"] == 17
    for cfg in stages.values():
        assert (converted.out_dir / cfg["file"]).is_file() and len(cfg["sha256"]) == 64


def _user_pipeline(tmp_path: Path, detector: Path) -> Path:
    from zoo.checkpoints import sha256_file

    spec = get_pipeline("ref_dogs")
    kp = spec.keypoints.onnx
    registry = tmp_path / "pipe.toml"
    registry.write_text(
        f"""[pipelines.fake_dogs]
embedder = "ref_dog"
[pipelines.fake_dogs.detector]
onnx = {{ path = "{detector}", sha256 = "{sha256_file(detector)}" }}
classes = ["card"]
[pipelines.fake_dogs.keypoints]
onnx = {{ path = "{kp.path}", sha256 = "{kp.sha256}" }}
keypoints = 4
"""
    )
    return registry


def _fake_detector(path: Path, row: list[float]) -> Path:
    """A YOLO-shaped detector that answers the same anchors whatever the image."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 256, 256])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 4])
    const = np.tile(np.asarray(row, np.float32)[:, None], (1, 4))[None]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "c"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake",
        [x],
        [y],
        initializer=[
            helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
            helper.make_tensor("c", TensorProto.FLOAT, const.shape, const.ravel().tolist()),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize(
    "row, failing",
    [
        ([0, 0, 0, 0, 0.0], "detector: recall at IoU 0.5"),  # finds nothing
        ([128, 128, 120, 120, 0.99], "detector: precision at IoU 0.5"),  # the same box on every photo
    ],
)
def test_a_detector_that_ignores_the_photo_fails(converted, outputs, tmp_path, row, failing):
    registry = _user_pipeline(tmp_path, _fake_detector(tmp_path / "fake.onnx", row))
    outcome = convert_pipeline("fake_dogs", "server", out_root=outputs, registry_paths=[registry], latency_runs=20)
    rows = {c.name: c for c in outcome.report.checks}
    assert outcome.report.failed and rows[failing].status is Status.FAIL
    assert rows["detector: ONNX contract (opset, input, output)"].status is Status.PASS
    with pytest.raises(Exception, match="pipeline checks FAILED"):
        build_package(consumer="immich", version="1.0.0", outputs=outputs, pipeline="fake_dogs", out=tmp_path / "d")


def test_a_changed_stage_file_is_refused_before_any_work(tmp_path, outputs):
    detector = tmp_path / "det.onnx"
    shutil.copyfile(get_pipeline("ref_dogs").detector.onnx.path, detector)
    registry = _user_pipeline(tmp_path, detector)
    detector.write_bytes(detector.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="detector ONNX .* has sha256"):
        convert_pipeline("fake_dogs", "server", out_root=tmp_path / "o", registry_paths=[registry])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ package and verify


def test_the_pipeline_package_holds_three_stages_and_verifies_on_the_consumer_path(package):
    pkg = package.directory
    base = pkg / "facial-recognition" / "ref_dogs"
    for rel in ("detection/model.onnx", "keypoints/model.onnx", "recognition/model.onnx", "pipeline.json", "README.md"):
        assert (base / rel).is_file(), rel
    assert not (base / "recognition" / "preprocess_cfg.json").exists()
    m = package.manifest
    assert m["pipeline"]["name"] == "ref_dogs" and not m["untrained_weights"]
    roles = [x["role"] for x in m["models"]]
    assert roles == ["detector", "keypoints", "embedder"] and m["models"][2]["embedding"]["dim"] == 512
    report = verify_package(pkg)
    assert not report.failed, report.to_terminal()
    row = next(c for c in report.checks if c.name.startswith("consumer path"))
    assert row.status is Status.PASS and row.fidelity is Fidelity.MEASURED and row.value >= 0.9999
    assert len(row.data["cosines"]) >= 6


def test_a_tampered_stage_fails_verify_and_the_service_will_not_start(package, tmp_path):
    from zoo.serve import open_runners

    copy = tmp_path / "pkg"
    shutil.copytree(package.directory, copy)
    stage = copy / "facial-recognition" / "ref_dogs" / "keypoints" / "model.onnx"
    data = bytearray(stage.read_bytes())
    data[len(data) // 2] ^= 1
    stage.write_bytes(bytes(data))
    report = verify_package(copy)
    assert report.failed
    assert next(c for c in report.checks if c.name.startswith("consumer path")).status is Status.NOT_RUN
    with pytest.raises(IntegrityError, match="does not match its pipeline manifest"):
        open_runners(copy)


# ------------------------------------------------------------------------------------ the service


def _faces(url: str, image: np.ndarray) -> list[dict]:
    status, body = post(url, *immich_multipart(IMMICH_FACES, png(image)))
    assert status == 200, body
    return body


def test_the_service_answers_immichs_face_request(server):
    with urllib.request.urlopen(server + "/", timeout=10) as r:
        root = json.loads(r.read())
    assert root["pipelines"]["ref_dogs"]["embedding_dim"] == 512
    same = [scene(CHECK_SEED + 500 + k, cards=1, identities=(3,)) for k in range(2)]
    other = scene(CHECK_SEED + 510, cards=2, identities=(11, 20))
    answers = [_faces(server, sc.image) for sc in (*same, other)]
    for sc, body in zip((*same, other), answers):
        assert set(body) == {"facial-recognition", "imageHeight", "imageWidth"}
        assert (body["imageHeight"], body["imageWidth"]) == sc.image.shape[:2]
        assert len(body["facial-recognition"]) == len(sc.boxes)
        for face in body["facial-recognition"]:
            box = face["boundingBox"]
            assert set(box) == {"x1", "y1", "x2", "y2"} and all(isinstance(v, int) for v in box.values())
            assert (
                0 <= box["x1"] < box["x2"] <= body["imageWidth"] and 0 <= box["y1"] < box["y2"] <= body["imageHeight"]
            )
            assert isinstance(face["embedding"], str) and 0.5 <= face["score"] <= 1
    emb = lambda body, k=0: np.asarray(json.loads(body["facial-recognition"][k]["embedding"]))  # noqa: E731
    a, b = emb(answers[0]), emb(answers[1])
    assert a.shape == (512,) and np.linalg.norm(a) == pytest.approx(1, abs=1e-4)
    assert a @ b > 0.8  # the same card in two photos
    assert max(a @ emb(answers[2], 0), a @ emb(answers[2], 1)) < 0.5  # two other cards


def test_parallel_requests_give_the_serial_answers(server):
    images = [scene(CHECK_SEED + 600 + k).image for k in range(6)]
    serial = [_faces(server, im) for im in images]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda im: _faces(server, im), images * 2))
    assert parallel == serial * 2


def test_bad_input_is_a_4xx_with_a_message(server):
    photo = png(scene(CHECK_SEED + 700).image)
    cases = [
        (immich_multipart(IMMICH_FACES, b"not an image at all"), 422, "not an image"),
        (immich_multipart(IMMICH_FACES, b""), 422, "empty"),
        (immich_multipart(IMMICH_FACES, photo[: len(photo) // 2]), 422, "truncated or corrupt"),
        (immich_multipart(IMMICH_FACES, b"\0" * (3 * 1024 * 1024)), 413, "over the limit"),
        (immich_multipart(None, photo), 422, "no 'entries'"),
        (immich_multipart("{not json", photo), 422, "not valid JSON"),
        (immich_multipart({"facial-recognition": {}}, photo), 422, "modelName"),
        (
            immich_multipart(
                {
                    "facial-recognition": {
                        **IMMICH_FACES["facial-recognition"],
                        "detection": {"options": {"minScore": 7}},
                    }
                },
                photo,
            ),
            422,
            "minScore",
        ),
        (immich_multipart(IMMICH_FACES, None), 422, "no 'image'"),
        (immich_multipart({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}, photo), 422, "--upstream"),
        ((b"garbage", "multipart/form-data; boundary=xyz"), 400, "could not be parsed"),
        ((b"{}", "application/json"), 415, "multipart/form-data"),
    ]
    for (body, kind), status, message in cases:
        got, answer = post(server, body, kind)
        assert got == status and message in answer["detail"], (message, got, answer)
    assert _faces(server, scene(CHECK_SEED + 700).image)  # the worker lives on


def test_other_tasks_go_upstream(package, tmp_path):
    upstream_script = tmp_path / "upstream.py"
    upstream_script.write_text(
        "import sys, uvicorn\n"
        "from starlette.applications import Starlette\nfrom starlette.responses import JSONResponse\n"
        "from starlette.routing import Route\n"
        "async def predict(request):\n"
        "    form = await request.form()\n"
        "    return JSONResponse({'clip': '[0.5]', 'seen': sorted(form.keys())})\n"
        "async def ping(request):\n    from starlette.responses import PlainTextResponse\n    return PlainTextResponse('pong')\n"
        "uvicorn.run(Starlette(routes=[Route('/predict', predict, methods=['POST']), Route('/ping', ping)]), "
        "host='127.0.0.1', port=int(sys.argv[1]), log_level='warning')\n"
    )
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(upstream_script), str(port)])
    proc = None
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        proc, url = start_server(package.directory, "--upstream", f"http://127.0.0.1:{port}")
        status, body = post(url, *immich_multipart({"clip": {"visual": {"modelName": "ViT-B-32__openai"}}}, b"x"))
        assert status == 200 and body == {"clip": "[0.5]", "seen": ["entries", "image"]}
        assert _faces(url, scene(CHECK_SEED + 800, cards=1).image)["facial-recognition"]
    finally:
        upstream.terminate()
        if proc:
            proc.terminate()


def test_zoo_pipeline_run_prints_the_matrix_and_writes_its_page(package, tmp_path, capsys):
    from zoo.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    for k, ident in enumerate((5, 5, 9)):
        (photos / f"p{k}.png").write_bytes(png(scene(CHECK_SEED + 900 + k, cards=1, identities=(ident,)).image))
    (photos / "broken.png").write_bytes(b"\x89PNG broken")
    assert main(["pipeline", "run", str(package.directory), str(photos), "-q"]) == 0
    out = capsys.readouterr().out
    assert "3 detection(s)" in out and "p0.png: 1 detection(s), 1 chip, 0 body crop" in out
    assert "skipped broken.png" in out and "nearest to p0.png#0: p1.png#0" in out
    page = (tmp_path / "photos-pipeline.html").read_text()
    assert page.count("<img") >= 7 and "Cosine similarity" in page


# ------------------------------------------------------------------------------------ Immich's own face input


def test_the_immich_target_folds_zoos_preprocessing_into_immichs_face_input(tmp_path):
    from PIL import Image

    from zoo.pipeline import convert
    from zoo.runtimes.immich_face import immich_face_blob
    from zoo.runtimes.onnxruntime import OrtSession
    from zoo.validators.inputs import preprocess, reference_photos, resize_center_crop
    from zoo.validators.metrics import cosine_rows

    outcome = convert("ref_dog", "immich", out_root=tmp_path, latency_runs=20)
    assert not outcome.report.failed, outcome.report.to_terminal()
    parity = next(
        c
        for c in outcome.report.checks
        if c.artifact == "model.immich-face.onnx" and c.name.startswith("parity vs source")
    )
    assert parity.status is Status.PASS and parity.value >= 0.99 and parity.data["samples"] == 12
    folded = onnx.load(str(outcome.out_dir / "model.immich-face.onnx"))
    dims = [d.dim_param or d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 112, 112] and len(folded.graph.output) == 1
    meta = {p.key: p.value for p in folded.metadata_props}
    assert meta["input_range"].startswith("-1-1") and "mean" not in meta and meta["folded_mean"]

    # Immich's path (a 112-px crop, (x − 127.5)/127.5) against zoo's, on the photos
    spec = outcome.out_dir
    photos = [p for _, p in reference_photos()]
    zoo_path = OrtSession(spec / "model.onnx").run(preprocess(photos, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    crops = np.stack([resize_center_crop(p, 112) for p in photos]).astype(np.float32)
    immich_path = OrtSession(spec / "model.immich-face.onnx").run(immich_face_blob(crops))
    assert cosine_rows(zoo_path, immich_path).min() >= 0.99
    # the plain model given Immich's scaling (what stock Immich would do with it) is far off
    small = np.stack(
        [np.asarray(Image.fromarray(c.astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)) for c in crops]
    )
    unfolded = OrtSession(spec / "model.onnx").run(
        np.ascontiguousarray(((small - 127.5) / 127.5).transpose(0, 3, 1, 2), np.float32)
    )
    assert cosine_rows(zoo_path, unfolded).min() < 0.8

    pkg = build_package(consumer="immich", version="1.0.0", outputs=tmp_path, models=["ref_dog"], out=tmp_path / "dist")
    recognition = pkg.directory / "facial-recognition" / "ref_dog" / "recognition" / "model.onnx"
    assert recognition.read_bytes() == (outcome.out_dir / "model.immich-face.onnx").read_bytes()
    assert "Immich's face blob: 112×112 RGB" in (recognition.parent.parent / "README.md").read_text()
    report = verify_package(pkg.directory)
    golden = next(c for c in report.checks if c.name.startswith("golden outputs vs expected"))
    assert not report.failed and golden.status is Status.PASS and golden.value >= 0.99
