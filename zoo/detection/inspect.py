"""`zoo pipeline run PACKAGE IMAGES_DIR`: the product's full-pipeline check on a folder of photos.

Every photo goes through detect → keypoints → crop → embed; the command prints the detections per
photo and the crop path each took (chip or body), the cosine matrix between all detections, and the
nearest detections of a few queries; the HTML page shows each photo with its boxes, every crop the
embedder saw, and the matrix as a heat map.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.errors import UsageError
from zoo.outputs import write_text_atomic
from zoo.progress import QUIET, Progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class PipelineRun:
    text: str
    page: Path
    labels: list[str]  # one per detection: "<photo>#<k>"
    similarity: np.ndarray
    crop_paths: list[str]


def _png(image: np.ndarray, width: int | None = None) -> str:
    from PIL import Image

    im = Image.fromarray(image)
    if width and im.width != width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _boxes_drawn(image: np.ndarray, found) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for k, f in enumerate(found):
        colour = (40, 200, 90) if f.crop_path == "chip" else (240, 160, 30)
        draw.rectangle([float(v) for v in f.box], outline=colour, width=max(2, image.shape[1] // 200))
        draw.text((float(f.box[0]) + 3, float(f.box[1]) + 2), f"#{k} {f.score:.2f}", fill=colour)
        if f.keypoints is not None:
            for x, y, _ in f.keypoints:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(230, 40, 40))
    return np.asarray(im)


def _heatmap(sim: np.ndarray, cell: int = 18) -> np.ndarray:
    """Cosine −1…1 → blue…white…red, one cell per pair."""
    t = (sim.clip(-1, 1) + 1) / 2
    red = np.stack([np.ones_like(t), 1 - (t - 0.5).clip(0) * 2, 1 - (t - 0.5).clip(0) * 2], -1)
    blue = np.stack([t * 2, t * 2, np.ones_like(t)], -1)
    rgb = np.where((t >= 0.5)[..., None], red, blue)
    return np.kron((rgb * 255).astype(np.uint8), np.ones((cell, cell, 1), np.uint8))


def run_on_folder(
    package: Path, images: Path, *, html: Path | None = None, queries: int = 3, progress: Progress = QUIET
) -> PipelineRun:
    from zoo.serve import BadRequest, decode_image, open_runners

    images = Path(images)
    if not images.is_dir():
        raise UsageError(f"{images} is not a folder of photos")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{images} has no photos ({', '.join(sorted(IMAGE_SUFFIXES))})")
    runners = open_runners(package, threads=0)
    name, runner = next(iter(runners.items()))
    lines, rows, labels, embeddings, paths, crops, skipped = [], [], [], [], [], [], []
    with progress.step(f"{name}: detect → keypoints → crop → embed on {len(files)} photo(s)"):
        for file in files:
            try:
                image = decode_image(file.read_bytes())
            except BadRequest as exc:
                skipped.append(f"{file.name}: {exc}")
                continue
            found = runner.run(image)
            chips = sum(f.crop_path == "chip" for f in found)
            lines.append(f"{file.name}: {len(found)} detection(s), {chips} chip, {len(found) - chips} body crop")
            rows.append((file.name, image, found))
            for k, f in enumerate(found):
                labels.append(f"{file.name}#{k}")
                embeddings.append(f.embedding)
                paths.append(f.crop_path)
                crops.append(f.crop)
    sim = np.stack(embeddings) @ np.stack(embeddings).T if embeddings else np.zeros((0, 0), np.float32)
    text = [f"pipeline {name}: {len(rows)} photo(s), {len(labels)} detection(s)", *lines]
    text += [f"skipped {s}" for s in skipped]
    if len(labels):
        width = max(len(label) for label in labels)
        text.append("")
        text.append("cosine".ljust(width) + "  " + " ".join(f"{i:>5}" for i in range(len(labels))))
        for i, label in enumerate(labels):
            text.append(f"{label.ljust(width)}  " + " ".join(f"{v:5.2f}" for v in sim[i]))
        text.append("")
        for q in range(min(queries, len(labels))):
            order = [j for j in np.argsort(-sim[q]) if j != q][:3]
            text.append(f"nearest to {labels[q]}: " + ", ".join(f"{labels[j]} ({sim[q, j]:.3f})" for j in order))
    page = Path(html) if html else images.parent / f"{images.name}-pipeline.html"
    write_text_atomic(page, _page(name, rows, labels, sim, paths, crops, skipped))
    return PipelineRun("\n".join(text), page, labels, sim, paths)


def _page(name, rows, labels, sim, paths, crops, skipped) -> str:
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>zoo pipeline run: {e(name)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:24px}figure{display:inline-block;margin:6px;"
        "vertical-align:top;text-align:center}img{image-rendering:pixelated}table{border-collapse:collapse}"
        "td,th{padding:2px 6px;font-size:12px;text-align:right}.chip{color:#1a8f4a}.body{color:#c77a00}</style>",
        f"<h1>Pipeline {e(name)}</h1>",
        f"<p>{len(rows)} photo(s), {len(labels)} detection(s). Green boxes took the keypoint chip, orange the "
        "body crop; red dots are keypoints. Measured on ONNX Runtime.</p><h2>Photos</h2>",
    ]
    for file, image, found in rows:
        parts.append(
            f"<figure><img src='{_png(_boxes_drawn(image, found), 320)}' width=320><figcaption>{e(file)}: "
            f"{len(found)} detection(s)</figcaption></figure>"
        )
    parts.append("<h2>What the embedder saw</h2>")
    for label, path, crop in zip(labels, paths, crops):
        parts.append(
            f"<figure><img src='{_png(crop, 96)}' width=96><figcaption>{e(label)}<br>"
            f"<span class='{path}'>{path}</span></figcaption></figure>"
        )
    if len(labels):
        parts.append("<h2>Cosine similarity</h2><p>Blue −1, white 0, red 1; rows and columns in the order below.</p>")
        parts.append(f"<img src='{_png(_heatmap(sim))}'>")
        parts.append("<table><tr><th></th>" + "".join(f"<th>{i}</th>" for i in range(len(labels))) + "</tr>")
        for i, label in enumerate(labels):
            parts.append(f"<tr><th>{i} {e(label)}</th>" + "".join(f"<td>{v:.2f}</td>" for v in sim[i]) + "</tr>")
        parts.append("</table>")
    if skipped:
        parts.append("<h2>Skipped</h2><ul>" + "".join(f"<li>{e(s)}</li>" for s in skipped) + "</ul>")
    return "\n".join(parts) + "\n"
