"""Seeded scenes for the reference pipeline: photographs of reference cards lying on surfaces.

Each scene has one to three cards, each scaled, rotated and put in perspective on a table, cloth,
tiles or photo background, under uneven light and sensor noise; sometimes a hand, or no card at
all. A scene knows each card's identity, box and four corners (the card's own top-left, top-right,
bottom-right, bottom-left), which train the reference detector (boxes) and keypoint model (corners),
and check them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zoo import augment
from zoo.identity_task import BACKGROUND_KINDS, _perspective_coeffs, background, hand, reference_task

SCENE_PX = 320
TRAIN_SEED = 21_000  # scenes for training the stages; checks use CHECK_SEED (never trained on)
CHECK_SEED = 2_000_003


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (SCENE_PX, SCENE_PX, 3) uint8 RGB
    identities: tuple[int, ...]  # card index per card (into reference_task().identities)
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in pixels
    corners: np.ndarray  # (n, 4, 2) x, y of the card's TL, TR, BR, BL


def _overlaps(box, boxes) -> bool:
    for other in boxes:
        ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
        if ix * iy > 0.05 * min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1])):
            return True
    return False


def scene(seed: int, cards: int | None = None, identities: tuple[int, ...] | None = None) -> Scene:
    """One seeded scene; `cards` (0–3) and `identities` pick what lies on it, else the seed does."""
    from PIL import Image

    task = reference_task()
    rng = np.random.default_rng(seed)
    s = SCENE_PX
    surface = background(rng, BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))], task.backgrounds)
    out = augment.resize(surface, s).astype(np.float32)
    if rng.uniform() < 0.2:
        out = augment.resize(hand(augment.resize(out.astype(np.uint8), 128), rng), s).astype(np.float32)
    n = int(rng.choice([0, 1, 1, 2, 2, 3])) if cards is None else cards
    chosen = identities or tuple(int(i) for i in rng.choice(len(task.identities), size=n, replace=False))
    placed_ids, boxes, all_corners = [], [], []
    for identity in chosen:
        card = task.identities[identity]
        for _ in range(30):  # a spot where it does not cover another card
            side = rng.uniform(0.28, 0.55) * s
            angle = np.deg2rad(rng.uniform(-35, 35))
            half = side / 2
            reach = half * (abs(np.cos(angle)) + abs(np.sin(angle))) * 1.08
            cx, cy = rng.uniform(reach, s - reach), rng.uniform(reach, s - reach)
            corners = []
            for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                x, y = dx * half, dy * half
                jitter = rng.uniform(-0.06, 0.06, 2) * side
                corners.append(
                    (
                        cx + x * np.cos(angle) - y * np.sin(angle) + jitter[0],
                        cy + x * np.sin(angle) + y * np.cos(angle) + jitter[1],
                    )
                )
            c = np.asarray(corners)
            box = (c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max())
            if not _overlaps(box, boxes):
                break
        else:
            continue
        k = card.shape[0]
        coeffs = _perspective_coeffs(corners, [(0, 0), (k, 0), (k, k), (0, k)])
        warped = np.asarray(
            Image.fromarray(card).transform((s, s), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR),
            np.float32,
        )
        alpha = np.asarray(
            Image.new("L", (k, k), 255).transform(
                (s, s), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR
            ),
            np.float32,
        )[..., None] / np.float32(255)
        shadow = np.roll(alpha, (int(rng.integers(2, 6)), int(rng.integers(2, 6))), axis=(0, 1))
        out = out * (1 - 0.35 * shadow)
        out = out * (1 - alpha) + warped * alpha
        placed_ids.append(identity)
        boxes.append(box)
        all_corners.append(c)
    yy, xx = (g.astype(np.float32) for g in np.mgrid[0:s, 0:s] / s)
    light = 1 + np.float32(rng.uniform(-0.25, 0.25)) * (xx - 0.5) + np.float32(rng.uniform(-0.25, 0.25)) * (yy - 0.5)
    gain = (rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)).astype(np.float32)
    out = out * light[..., None] * gain + rng.standard_normal(out.shape, dtype=np.float32) * 3
    return Scene(
        np.ascontiguousarray(out.clip(0, 255).astype(np.uint8)),
        tuple(placed_ids),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(all_corners, np.float32).reshape(-1, 4, 2),
    )


def scenes(count: int, seed: int = CHECK_SEED) -> list[Scene]:
    return [scene(seed + i) for i in range(count)]


def export_scenes(directory, count: int = 12, seed: int = CHECK_SEED + 10_000) -> int:
    """Write `count` seeded scenes as PNGs and `labels.json` (per photo: card names and boxes)."""
    import json
    from pathlib import Path

    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = reference_task().names
    labels = {}
    for k in range(count):
        sc = scene(seed + k, cards=None if k % 4 else 2, identities=None if k % 3 else (k % 35, (k + 7) % 35))
        Image.fromarray(sc.image).save(directory / f"scene_{k:02d}.png")
        labels[f"scene_{k:02d}.png"] = [
            {"card": names[i], "box": [round(float(v), 1) for v in box]} for i, box in zip(sc.identities, sc.boxes)
        ]
    (directory / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    return count
