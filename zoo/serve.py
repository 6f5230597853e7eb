"""`zoo serve PACKAGE`: Immich's machine-learning protocol in front of a zoo pipeline package.

Immich's server sends `POST /predict` with multipart fields `entries` (JSON) and `image` (the file's
bytes); for faces `entries` is `{"facial-recognition": {"detection": {"modelName": M, "options":
{"minScore": s}}, "recognition": {"modelName": M}}}` and the answer is `{"facial-recognition":
[{"boundingBox": {"x1", "y1", "x2", "y2"}, "embedding": "<JSON array>", "score": s}, …],
"imageHeight": h, "imageWidth": w}`. Here any face model name runs the package's pipeline (a name
equal to one of its pipelines picks that one), `minScore` is the detector's score threshold, and
other tasks (CLIP search) go to `--upstream` (Immich's own ML service) or get a 422.

Built on Starlette + uvicorn, as Immich's service is. Each stage's ONNX Runtime session opens once
at start-up, after its sha256 is checked against the pipeline manifest; requests run in a thread
pool and share the sessions (ONNX Runtime's `run` is thread-safe). Uploads are bounded; bad input is
a 4xx with a message, never a 500 with a traceback.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from zoo.checkpoints import sha256_file
from zoo.detection.runner import PIPELINE_JSON, PipelineRunner, read_pipeline_manifest
from zoo.errors import UsageError
from zoo.packaging.errors import IntegrityError

FACES = "facial-recognition"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
DRAIN_FACTOR = 4  # an oversized upload is read (and dropped) up to this many times the limit
MAX_PIXELS = 64_000_000  # a larger image is refused (413) before it is decoded


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def find_pipelines(package: Path) -> dict[str, Path]:
    """{pipeline name: its folder} in a package (`facial-recognition/<name>/pipeline.json`) or in one
    pipeline output directory (`pipeline.json` at its top)."""
    package = Path(package)
    if (package / PIPELINE_JSON).is_file():
        return {read_pipeline_manifest(package)["name"]: package}
    found = {p.parent.name: p.parent for p in sorted((package / FACES).glob(f"*/{PIPELINE_JSON}"))}
    if not found:
        raise UsageError(
            f"{package} holds no pipeline (no {PIPELINE_JSON}, nor {FACES}/<name>/{PIPELINE_JSON})",
            hint="serve a package from `zoo package --consumer immich --pipeline NAME`, or a `zoo convert --pipeline` output",
        )
    return found


def open_runners(package: Path, threads: int = 1) -> dict[str, PipelineRunner]:
    """One runner per pipeline, each stage file checked against the manifest's sha256 first."""
    runners = {}
    for name, folder in find_pipelines(package).items():
        manifest = read_pipeline_manifest(folder)
        for stage, cfg in manifest["stages"].items():
            path = folder / cfg["file"]
            if not path.is_file():
                raise IntegrityError(f"{folder}: the {stage} stage's {cfg['file']} is missing")
            if sha256_file(path) != cfg["sha256"]:
                raise IntegrityError(
                    f"{path} does not match its pipeline manifest (sha256): refusing to serve it",
                    hint="pull or rebuild the package; `zoo verify PACKAGE` shows every file that changed",
                )
        runners[name] = PipelineRunner(folder, manifest, threads=threads)
    return runners


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadRequest(422, "the image field is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadRequest(413, f"image is {im.width}×{im.height} px; the limit is {MAX_PIXELS:,} pixels")
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except BadRequest:
        raise
    except Image.DecompressionBombError as exc:
        raise BadRequest(413, f"image refused: {exc}") from None
    except UnidentifiedImageError:
        raise BadRequest(
            422, "the image field is not an image this service can decode (JPEG, PNG, WebP, TIFF, BMP …)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadRequest(422, f"the image could not be decoded (truncated or corrupt): {exc}") from None
    return np.asarray(rgb)


def _entries(text) -> dict:
    if not isinstance(text, str) or not text:
        raise BadRequest(422, "the form has no 'entries' field (JSON naming the tasks, as Immich's server sends)")
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(422, f"'entries' is not valid JSON: {exc}") from None
    if not isinstance(entries, dict) or not entries:
        raise BadRequest(422, "'entries' must be a JSON object of tasks, e.g. {\"facial-recognition\": {…}}")
    return entries


def _face_request(entry) -> tuple[str, float | None]:
    """(recognition model name, detection minScore) from a facial-recognition entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("recognition"), dict):
        raise BadRequest(422, "facial-recognition needs 'detection' and 'recognition' entries with a modelName")
    name = entry["recognition"].get("modelName")
    if not isinstance(name, str) or not name:
        raise BadRequest(422, "facial-recognition.recognition.modelName must be a model name")
    options = entry.get("detection", {}).get("options", {}) if isinstance(entry.get("detection"), dict) else {}
    score = options.get("minScore") if isinstance(options, dict) else None
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= 1):
        raise BadRequest(
            422, f"facial-recognition.detection.options.minScore must be a number in [0, 1], not {score!r}"
        )
    return name, None if score is None else float(score)


def faces_response(found, height: int, width: int) -> dict:
    faces = []
    for f in found:
        x1, y1, x2, y2 = (int(round(float(v))) for v in f.box)
        faces.append(
            {
                "boundingBox": {"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                "embedding": json.dumps([round(float(v), 7) for v in f.embedding]),
                "score": round(float(f.score), 6),
            }
        )
    return {FACES: faces, "imageHeight": int(height), "imageWidth": int(width)}


def _forward(upstream: str, body: bytes, content_type: str) -> tuple[int, bytes, str]:
    request = urllib.request.Request(
        upstream.rstrip("/") + "/predict", data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "application/json")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "application/json")
    except (urllib.error.URLError, OSError) as exc:
        raise BadRequest(
            502, f"the upstream ML service {upstream} did not answer: {getattr(exc, 'reason', exc)}"
        ) from None


async def _read_body(request, limit: int) -> bytes:
    """The body, at most `limit` bytes. A larger one is read to its end (up to DRAIN_FACTOR × limit,
    discarding it) before the 413, so the client gets the answer instead of a broken pipe mid-upload."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:
            break
    if size > limit:
        declared = request.headers.get("content-length", "")
        shown = f"{int(declared):,}" if declared.isdigit() else f"over {size:,}"
        raise BadRequest(413, f"upload of {shown} bytes is over the limit of {limit:,}")
    return b"".join(chunks)


def create_app(
    package: Path, *, upstream: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES, threads: int = 1
):
    import asyncio
    import os

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from zoo import __version__

    runners = open_runners(package, threads=threads)
    default = next(iter(runners))
    # decoding and inference run in worker threads; at most this many at once, so a burst of large
    # photos cannot exhaust memory (the others wait their turn)
    busy = asyncio.Semaphore(2 * (os.cpu_count() or 1))

    def faces_of(data: bytes, runner: PipelineRunner, min_score: float | None) -> dict:
        image = decode_image(data)
        return faces_response(runner.run(image, min_score), image.shape[0], image.shape[1])

    async def root(request: Request):
        return JSONResponse(
            {
                "message": "zoo serve: Immich machine-learning protocol",
                "zoo_version": __version__,
                "tasks": {FACES: sorted(runners), "other": f"forwarded to {upstream}" if upstream else "422"},
                "pipelines": {
                    name: {
                        "embedding_dim": r.embedding_dim,
                        "embedding_space": r.embedder_cfg["embedding"]["space"],
                        "stages": sorted(r.manifest["stages"]),
                    }
                    for name, r in runners.items()
                },
                "model_names": f"any facial-recognition modelName runs {default!r} unless it names another pipeline",
            }
        )

    async def ping(request: Request):
        return PlainTextResponse("pong")

    async def predict(request: Request):
        try:
            body = await _read_body(request, max_upload_bytes)
            content_type = request.headers.get("content-type", "")
            if "multipart/form-data" not in content_type:
                raise BadRequest(
                    415, "send multipart/form-data with 'entries' and 'image' fields, as Immich's server does"
                )
            request._body = body  # Starlette's form parser reads the cached body
            try:
                form = await request.form(max_files=2, max_fields=8)
            except Exception as exc:  # a malformed multipart body
                raise BadRequest(400, f"the multipart body could not be parsed: {exc}") from None
            entries = _entries(form.get("entries"))
            others = sorted(set(entries) - {FACES})
            if others:
                if not upstream:
                    raise BadRequest(
                        422,
                        f"task(s) {', '.join(others)} are not served here (only {FACES}); start zoo serve with --upstream URL of Immich's ML service",
                    )
                status, content, kind = await run_in_threadpool(_forward, upstream, body, content_type)
                return Response(content, status_code=status, media_type=kind)
            name, min_score = _face_request(entries[FACES])
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise BadRequest(422, "the form has no 'image' file field")
            data = await upload.read()
            async with busy:
                answer = await run_in_threadpool(faces_of, data, runners.get(name, runners[default]), min_score)
            return JSONResponse(answer)
        except BadRequest as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    async def unexpected(request: Request, exc: Exception):
        # never a traceback to the client, and the worker lives on
        message = " ".join(str(exc).split())[:300]
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {message}"}, status_code=500)

    routes = [Route("/", root), Route("/ping", ping), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, exception_handlers={Exception: unexpected})


def serve(package: Path, *, host: str, port: int, upstream: str | None, max_upload_mb: int, say=print) -> None:
    import importlib
    import importlib.util
    import socket

    try:
        import starlette  # noqa: F401
        import uvicorn

        importlib.import_module("python_multipart" if importlib.util.find_spec("python_multipart") else "multipart")
    except ImportError as exc:
        raise UsageError(
            f"zoo serve needs Starlette, uvicorn and python-multipart ({exc})", hint="pip install 'zoo[serve]'"
        ) from None
    if max_upload_mb < 1:
        raise UsageError(f"--max-upload-mb must be at least 1, not {max_upload_mb}")
    app = create_app(package, upstream=upstream, max_upload_bytes=max_upload_mb * 1024 * 1024)
    try:  # a port in use is a one-line error here, not uvicorn's log and exit
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="choose another --port"
        ) from None
    say(f"zoo serve: {package} on http://{host}:{port} (Immich ML protocol: POST /predict, GET /ping)")
    uvicorn.run(app, host=host, port=port, log_level="warning")
