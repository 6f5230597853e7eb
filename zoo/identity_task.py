"""A reference card-recognition task: a faithful miniature of the product's main job.

Each identity is a *card*: a distinct artwork (a crop of a photo bundled with scikit-image) inside
a card frame of one family — a coloured border, a title bar with a per-card colour and pattern, a
"cost" gem, a text box with per-card glyphs. The gallery holds each card's flat scan. Held-out views
are *photographs* of a card: smaller than the frame, rotated and in perspective, on a table, cloth or
photo background, under uneven lighting and a colour cast; conditions `clean`, `occluded` (a thumb
or a sleeve edge over ~20 % of the card) and `glare` (a specular highlight on the card).
Unknown images are scenes with no card in them: bare tables and textures, photos without a frame,
hands. Training negatives are card-free scenes of the same kinds drawn from other seeds and other
photos, so no unknown test image is ever trained on. A separate set of *unseen cards* (same family,
artworks never in the gallery or in training) is reported, not gated. Everything is seeded.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from zoo import augment

# Artworks: each quadrant of a detailed colour photo, and each of the other photos whole. No two
# cards share pixels.
QUADRANT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel", "logo")
WHOLE_PHOTOS = ("camera", "coins", "clock", "hubble_deep_field", "page", "retina", "text")
# Photos that are never artworks: unknown test scenes (shown without a card frame) and backgrounds
# of the held-out photographs.
UNKNOWN_PHOTOS = ("moon", "gravel", "grass", "brick", "cell", "microaneurysms")
# Training-only negatives and training backgrounds ("not a card"), disjoint from the unknown images.
NEGATIVE_PHOTOS = ("binary_blobs", "checkerboard", "shepp_logan_phantom", "horse")
UNSEEN_FACES = 4  # unseen cards: the motorcycle's quadrants and LFW faces framed as cards
BASE_PX = 128  # cards and scenes are stored at this size; views are rendered at any model size
EVAL_SEED = 1_000_003  # evaluation views never share a seed with training (seeds < 1e6)
BACKGROUND_KINDS = ("wood", "cloth", "tiles", "desk", "photo")
SKIN = np.array([205.0, 160.0, 130.0])
_YY, _XX = (g.astype(np.float32) for g in np.mgrid[0:BASE_PX, 0:BASE_PX] / BASE_PX)  # frame coordinates in [0, 1)


def _load(name: str) -> np.ndarray:
    import skimage.data

    # binary_blobs is drawn at random unless seeded: unseeded, no two trainings saw the same negatives
    if name == "binary_blobs":
        image = np.asarray(skimage.data.binary_blobs(rng=0))
    elif name == "stereo_motorcycle":
        image = np.asarray(skimage.data.stereo_motorcycle()[0])
    else:
        image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(1e-9, float(image.max())))).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _square(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    return image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def _quadrants(image: np.ndarray) -> list[np.ndarray]:
    sq = _square(image)
    half = sq.shape[0] // 2
    return [augment.resize(sq[y : y + half, x : x + half], BASE_PX) for y in (0, half) for x in (0, half)]


def _faces(start: int, count: int) -> list[np.ndarray]:
    """Small grey face photos from scikit-image's LFW subset."""
    import skimage.data

    faces = skimage.data.lfw_subset()[start : start + count]
    return [augment.resize(np.repeat((f * 255).astype(np.uint8)[..., None], 3, 2), BASE_PX) for f in faces]


# ------------------------------------------------------------------------------------------ cards


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return 255.0 * np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _glyphs(rng: np.random.Generator, h: int, w: int, ink: np.ndarray, paper: np.ndarray, rows: int) -> np.ndarray:
    """A strip of 'text': per-card blocks of ink on paper, like letters at this size."""
    strip = np.broadcast_to(paper, (h, w, 3)).copy()
    line_h = h // rows
    for r in range(rows):
        x = 2
        while x < w - 4:
            g = int(rng.integers(2, 6))
            top = r * line_h + 1 + int(rng.integers(0, 2))
            strip[top : top + max(1, line_h - 3), x : x + g] = ink
            x += g + int(rng.integers(1, 4 if rng.random() > 0.2 else 7))
    return strip


def render_card(artwork: np.ndarray, index: int) -> np.ndarray:
    """A BASE_PX square trading card of the family, seeded by `index`: border, title bar, art, text."""
    rng = np.random.default_rng(10_000 + index)
    s = BASE_PX
    hue = (index * 0.618034) % 1.0
    card = np.empty((s, s, 3), np.float64)
    card[:] = _hsv(hue, rng.uniform(0.55, 0.9), rng.uniform(0.45, 0.85))  # the border
    yy, xx = np.mgrid[0:s, 0:s]
    card *= (0.9 + 0.2 * (xx + yy) / (2 * s))[..., None]  # a foil sheen across the border
    b = 7
    # title bar: a second colour with a per-card pattern (stripes, dots, checks, chevrons)
    t0, t1 = b, b + 17
    title_a, title_b = _hsv(hue + rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.8), 0.9), _hsv(hue, 0.4, 0.65)
    ty, tx = yy[t0:t1, b : s - b], xx[t0:t1, b : s - b]
    period = int(rng.integers(4, 9))
    kind = index % 4
    if kind == 0:
        on = ((tx + ty) // period) % 2 == 0
    elif kind == 1:
        on = ((tx % period - period / 2) ** 2 + (ty % period - period / 2) ** 2) < (period / 3) ** 2
    elif kind == 2:
        on = ((tx // period) + (ty // period)) % 2 == 0
    else:
        on = ((tx + np.abs(ty - (t0 + t1) / 2) * 2) // period) % 2 == 0
    card[t0:t1, b : s - b] = np.where(on[..., None], title_a, 0.6 * title_a + 0.4 * title_b)
    ink = np.array([30.0, 25.0, 20.0]) if title_a.mean() > 110 else np.array([245.0, 240.0, 230.0])
    name = _glyphs(rng, 9, 70, ink, card[t0 + 4, b + 4], 1)
    mask = np.any(name != card[t0 + 4, b + 4], axis=-1)
    card[t0 + 4 : t0 + 13, b + 4 : b + 74][mask] = ink
    # the cost gem at the title bar's right
    gem = ((xx - (s - b - 9)) ** 2 + (yy - (t0 + t1) / 2) ** 2) < 36
    card[gem] = _hsv(hue + 0.5, 0.9, 1.0)
    # the artwork window, with a thin dark line around it
    a0, a1, l0, l1 = t1 + 2, s - 30, b + 2, s - b - 2
    card[a0 - 1 : a1 + 1, l0 - 1 : l1 + 1] = 20.0
    art = augment.resize(artwork, 128)
    from PIL import Image

    art = np.asarray(Image.fromarray(art).resize((l1 - l0, a1 - a0), Image.Resampling.BILINEAR))
    card[a0:a1, l0:l1] = art
    # the text box: parchment of a per-card tint with two lines of glyphs
    paper = 0.75 * np.array([235.0, 228.0, 205.0]) + 0.25 * _hsv(hue, 0.5, 0.9)
    card[s - 27 : s - b, b + 2 : s - b - 2] = _glyphs(
        rng, s - b - (s - 27), s - 2 * b - 4, np.array([40.0] * 3), paper, 2
    )
    return np.ascontiguousarray(card.clip(0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------- scenes and photographs


def _noise(rng: np.random.Generator, octaves=(4, 16, 64)) -> np.ndarray:
    """Grey multi-scale noise in [0, 1] at BASE_PX."""
    layers = [augment.resize(rng.integers(0, 256, (n, n, 3), dtype=np.uint8), BASE_PX)[..., 0] for n in octaves]
    w = rng.dirichlet(np.ones(len(octaves)))
    x = sum(wi * layer.astype(np.float64) for wi, layer in zip(w, layers))
    lo, hi = x.min(), x.max()
    return (x - lo) / max(hi - lo, 1e-9)


def background(rng: np.random.Generator, kind: str, photos: tuple[np.ndarray, ...]) -> np.ndarray:
    """A card-free surface at BASE_PX: wood, cloth (a playmat), tiles, a plain desk, or a photo crop."""
    s = BASE_PX
    yy, xx = _YY, _XX
    if kind == "wood":
        n = _noise(rng, (4, 16))
        angle = rng.uniform(0, np.pi)
        u = np.cos(angle) * xx + np.sin(angle) * yy
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(6, 20) * u + 3 * n))
        base = _hsv(rng.uniform(0.05, 0.11), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.8))
        img = base * (0.7 + 0.45 * grain)[..., None]
    elif kind == "cloth":
        n = _noise(rng, (8, 32, 128))
        img = _hsv(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.7)) * (0.75 + 0.5 * n)[..., None]
    elif kind == "tiles":
        period = rng.uniform(0.15, 0.4)
        grout = ((xx % period) < 0.02) | ((yy % period) < 0.02)
        cells = (xx // period) * 7 + (yy // period) * 3
        tone = 0.85 + 0.15 * np.sin(cells)
        img = _hsv(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.5, 0.95)) * tone[..., None]
        img[grout] = _hsv(0, 0, rng.uniform(0.3, 0.7))
    elif kind == "desk":
        a, c = _hsv(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.95)), rng.uniform(-0.3, 0.3, 3) * 255
        t = (np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy)[..., None]
        img = a + c * t + 6 * rng.standard_normal((s, s, 1))
    else:
        photo = photos[int(rng.integers(len(photos)))]
        img = augment.random_resized_crop(photo, s, rng, scale=(0.3, 1.0)).astype(np.float64)
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8))


def hand(scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand-like blob (palm and fingers, skin-toned and shaded) reaching in from an edge."""
    from PIL import Image, ImageDraw

    s = BASE_PX
    mask = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(mask)
    side = int(rng.integers(4))
    palm = rng.uniform(0.2, 0.35) * s
    along = rng.uniform(0.2, 0.8) * s
    cx, cy = [(along, s), (along, 0), (0, along), (s, along)][side]
    draw.ellipse([cx - palm, cy - palm, cx + palm, cy + palm], fill=255)
    inward = [(0, -1), (0, 1), (1, 0), (-1, 0)][side]
    for k in range(int(rng.integers(2, 5))):
        offset = (k - 1.5) * palm * 0.45
        base = (cx + inward[1] * offset + inward[0] * palm * 0.6, cy + inward[0] * offset + inward[1] * palm * 0.6)
        length, width = rng.uniform(0.8, 1.4) * palm, palm * 0.18
        end = (base[0] + inward[0] * length, base[1] + inward[1] * length)
        draw.line([base, end], fill=255, width=int(2 * width))
        draw.ellipse([end[0] - width, end[1] - width, end[0] + width, end[1] + width], fill=255)
    return _skin_over(scene, np.asarray(mask, np.float64) / 255, rng)


def _skin_over(scene: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _YY, _XX
    tone = SKIN * rng.uniform(0.55, 1.15) + rng.uniform(-15, 15, 3)
    shade = 0.8 + 0.35 * (np.cos(rng.uniform(0, 2 * np.pi)) * xx + np.sin(rng.uniform(0, 2 * np.pi)) * yy)
    skin = tone * shade[..., None]
    return np.clip(scene * (1 - alpha[..., None]) + skin * alpha[..., None], 0, 255).astype(np.uint8)


def _perspective_coeffs(dst, src) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output points `dst` to input points `src`."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    return list(np.linalg.solve(np.asarray(rows, np.float64), np.asarray(rhs, np.float64)))


def _sleeve(card: np.ndarray, rng: np.random.Generator, area: float) -> np.ndarray:
    """The opaque top of a card sleeve (or a deck box's edge) over one side of the card."""
    out = card.astype(np.float64)
    s = card.shape[0]
    depth = max(2, int(area * s))
    tint = _hsv(rng.uniform(), rng.uniform(0, 0.6), rng.uniform(0.05, 0.35))
    region = [np.s_[:depth], np.s_[s - depth :], np.s_[:, :depth], np.s_[:, s - depth :]][int(rng.integers(4))]
    out[region] = 0.15 * out[region] + 0.85 * tint
    return out.clip(0, 255).astype(np.uint8)


def photograph(
    card: np.ndarray,
    scene: np.ndarray,
    rng: np.random.Generator,
    *,
    scale=(0.7, 0.92),
    tilt: float = 15.0,
    occlusion: str = "",
    area: float = 0.2,
    glare: bool = False,
) -> np.ndarray:
    """A photo of `card` lying on `scene`: scaled, rotated and in perspective, lit unevenly with a
    colour cast; `occlusion` is "thumb" or "sleeve" (≈ `area` of the card), `glare` a highlight on it."""
    from PIL import Image

    s = BASE_PX
    # occluders and glare draw from their own generator (one draw from `rng` whatever the options), so
    # the same `rng` state photographs the same placement and light with or without them
    extra = np.random.default_rng(int(rng.integers(2**63)))
    if occlusion == "sleeve":
        card = _sleeve(card, extra, area)
    side = rng.uniform(*scale) * s
    angle = np.deg2rad(rng.uniform(-tilt, tilt))
    # the whole card in the frame (its rotated half-diagonal), as far as its size allows
    margin = min(s / 2, side * 0.5 * (abs(np.cos(angle)) + abs(np.sin(angle))) + 0.05 * side)
    cx, cy = rng.uniform(margin, s - margin), rng.uniform(margin, s - margin)
    half = side / 2
    corners = []
    for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = dx * half, dy * half
        jitter = rng.uniform(-0.05, 0.05, 2) * side  # perspective: each corner moves a little
        corners.append(
            (
                cx + x * np.cos(angle) - y * np.sin(angle) + jitter[0],
                cy + x * np.sin(angle) + y * np.cos(angle) + jitter[1],
            )
        )
    coeffs = _perspective_coeffs(corners, [(0, 0), (s, 0), (s, s), (0, s)])
    warped = np.asarray(
        Image.fromarray(card).transform((s, s), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    )
    alpha = np.asarray(
        Image.new("L", (s, s), 255).transform((s, s), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR),
        np.float32,
    )[..., None] / np.float32(255)
    # a soft shadow under the card, then the card
    shadow = np.roll(alpha, (int(rng.integers(1, 4)), int(rng.integers(1, 4))), axis=(0, 1)).astype(np.float32)
    out = scene.astype(np.float32) * (1 - 0.35 * shadow)
    out = out * (1 - alpha) + warped * alpha
    if occlusion == "thumb":  # a thumb over a card edge, reaching in by about `area` of the card
        from PIL import ImageDraw

        k = int(extra.integers(4))
        (x0, y0), (x1, y1) = corners[k], corners[(k + 1) % 4]
        t = extra.uniform(0.25, 0.75)
        ex, ey = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        nx, ny = cx - ex, cy - ey
        norm = np.hypot(nx, ny)
        nx, ny = nx / norm, ny / norm
        reach = side * np.sqrt(area) * 0.8  # a thumb 0.34 of the card wide, 0.36 in: ~20 % of it
        width = side * np.sqrt(area) * 0.38
        mask = Image.new("L", (s, s), 0)
        draw = ImageDraw.Draw(mask)
        tip = (ex + nx * reach, ey + ny * reach)
        back = (ex - nx * reach, ey - ny * reach)
        draw.line([back, tip], fill=255, width=int(2 * width))
        draw.ellipse([tip[0] - width, tip[1] - width, tip[0] + width, tip[1] + width], fill=255)
        out = _skin_over(out, np.asarray(mask, np.float32) / 255, extra).astype(np.float32)
    # lighting: a brightness gradient across the frame, a colour cast, sensor noise
    light = 1 + np.float32(rng.uniform(-0.25, 0.25)) * (_XX - 0.5) + np.float32(rng.uniform(-0.25, 0.25)) * (_YY - 0.5)
    gain = (rng.uniform(0.85, 1.15, 3) * rng.uniform(0.8, 1.15)).astype(np.float32)
    out = out * light[..., None] * gain
    out = out + rng.standard_normal(out.shape, dtype=np.float32) * 3
    out = out.clip(0, 255).astype(np.uint8)
    if glare:  # a specular highlight on the card (not on the table)
        gy, gx = cy + extra.uniform(-0.25, 0.25) * side, cx + extra.uniform(-0.25, 0.25) * side
        ry, rx = extra.uniform(0.15, 0.3) * side, extra.uniform(0.15, 0.3) * side
        d = ((np.arange(s)[:, None] - gy) / ry) ** 2 + ((np.arange(s)[None, :] - gx) / rx) ** 2
        a = (np.exp(-d * 2.0) * extra.uniform(0.6, 0.9))[..., None]
        out = np.clip(out * (1 - a) + 255.0 * a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


# ------------------------------------------------------------------------------------------ the task


@dataclass(frozen=True)
class IdentityTask:
    identities: tuple[np.ndarray, ...]  # BASE_PX×BASE_PX×3 uint8: each card's flat scan
    names: tuple[str, ...]
    unknowns: tuple[np.ndarray, ...]  # scenes with no card in them (evaluation only)
    negatives: tuple[np.ndarray, ...]  # other card-free scenes, for training only
    unknown_names: tuple[str, ...] = ()
    unseen: tuple[np.ndarray, ...] = ()  # cards of the family never in the gallery or in training
    unseen_names: tuple[str, ...] = ()
    backgrounds: tuple[np.ndarray, ...] = ()  # training-only photos for the training scenes' surfaces


def _synthetic_negatives(count: int, seed: int = 7) -> list[np.ndarray]:
    """Seeded images that are nothing: block noise, gradients, stripes and grey noise textures."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:BASE_PX, 0:BASE_PX] / BASE_PX
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            img = augment.resize(rng.integers(0, 256, (BASE_PX // 8, BASE_PX // 8, 3), dtype=np.uint8), BASE_PX)
        elif kind == 1:
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy)[..., None]
            img = (a * (1 - t) + b * t).clip(0, 255).astype(np.uint8)
        elif kind == 2:
            f = rng.uniform(3, 12)
            stripes = (np.sin(2 * np.pi * f * (xx + rng.uniform() * yy)) > 0)[..., None]
            img = np.where(stripes, rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)).astype(np.uint8)
        else:
            img = (_noise(rng)[..., None].repeat(3, 2) * rng.uniform(120, 255)).astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return out


def _scenes(rng: np.random.Generator, photos, count: int, hands: bool) -> list[np.ndarray]:
    out = []
    for i in range(count):
        scene = background(rng, BACKGROUND_KINDS[i % len(BACKGROUND_KINDS)], photos)
        out.append(hand(scene, rng) if hands else scene)
    return out


@lru_cache(maxsize=1)
def reference_task() -> IdentityTask:
    artworks, names = [], []
    for photo in QUADRANT_PHOTOS:
        for i, quadrant in enumerate(_quadrants(_load(photo))):
            artworks.append(quadrant)
            names.append(f"{photo}/{i}")
    for photo in WHOLE_PHOTOS:
        artworks.append(augment.resize(_square(_load(photo)), BASE_PX))
        names.append(photo)
    cards = [render_card(art, i) for i, art in enumerate(artworks)]
    unseen_art = _quadrants(_load("stereo_motorcycle")) + _faces(100, UNSEEN_FACES)
    unseen_names = [f"stereo_motorcycle/{i}" for i in range(4)] + [f"lfw/{100 + i}" for i in range(UNSEEN_FACES)]
    unseen = [render_card(art, len(cards) + k) for k, art in enumerate(unseen_art)]

    # unknown test images: the unknown photos without a frame, bare surfaces, hands over surfaces
    unknown_photos = [augment.resize(_square(_load(p)), BASE_PX) for p in UNKNOWN_PHOTOS]
    rng = np.random.default_rng(EVAL_SEED + 1)
    tables = _scenes(rng, tuple(unknown_photos), 10, hands=False)
    hands = _scenes(rng, tuple(unknown_photos), 8, hands=True)
    unknowns = unknown_photos + tables + hands
    unknown_names = (
        [f"photo/{p}" for p in UNKNOWN_PHOTOS]
        + [f"table/{BACKGROUND_KINDS[i % 5]}-{i}" for i in range(10)]
        + [f"hand/{BACKGROUND_KINDS[i % 5]}-{i}" for i in range(8)]
    )
    # training negatives: other photos, other surfaces and hands (their own seeds), faces, patterns
    negative_photos = [q for photo in NEGATIVE_PHOTOS for q in _quadrants(_load(photo))]
    rng = np.random.default_rng(11)
    negatives = negative_photos + _scenes(rng, tuple(negative_photos), 30, hands=False)
    negatives += _scenes(rng, tuple(negative_photos), 20, hands=True) + _synthetic_negatives(12) + _faces(0, 12)
    return IdentityTask(
        tuple(cards),
        tuple(names),
        tuple(unknowns),
        tuple(negatives),
        tuple(unknown_names),
        tuple(unseen),
        tuple(unseen_names),
        tuple(negative_photos),
    )


@dataclass(frozen=True)
class EvalSet:
    """Held-out views at BASE_PX: `labels` is the identity index, -1 for unknown images."""

    gallery: np.ndarray  # (I, H, W, 3) each card's flat scan
    views: np.ndarray  # (V, H, W, 3) photographs of the cards, then the unknown scenes
    labels: np.ndarray  # (V,)
    conditions: tuple[str, ...]  # clean | occluded | glare | unknown
    # photographs (clean conditions) of the unseen cards: reported, never gated
    unseen_views: np.ndarray = field(default_factory=lambda: np.zeros((0, BASE_PX, BASE_PX, 3), np.uint8))


def _mild_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    view = augment.random_resized_crop(image, BASE_PX, rng, scale=(0.8, 1.0))
    return augment.color_jitter(view, rng, 0.15)


@lru_cache(maxsize=2)
def eval_set(views_per_identity: int = 2, seed: int = EVAL_SEED) -> EvalSet:
    """Per card and view: a clean photograph, the same photograph with a thumb or sleeve over ~20 %
    of the card, and one with glare; then `views_per_identity` mild views of each unknown scene."""
    task = reference_task()
    rng = np.random.default_rng(seed)
    surfaces = tuple(augment.resize(_square(_load(p)), BASE_PX) for p in UNKNOWN_PHOTOS)
    views, labels, conditions = [], [], []
    for label, card in enumerate(task.identities):
        for _ in range(views_per_identity):
            scene = background(rng, BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))], surfaces)
            # the occluded and glare views photograph the same placement and light as the clean one
            shot = int(rng.integers(2**63))
            clean = photograph(card, scene, np.random.default_rng(shot))
            occluder = ("thumb", "sleeve")[len(views) // 3 % 2]
            occluded = photograph(card, scene, np.random.default_rng(shot), occlusion=occluder)
            glared = photograph(card, scene, np.random.default_rng(shot), glare=True)
            views += [clean, occluded, glared]
            labels += [label] * 3
            conditions += ["clean", "occluded", "glare"]
    for unknown in task.unknowns:
        for _ in range(views_per_identity):
            views.append(_mild_view(unknown, rng))
            labels.append(-1)
            conditions.append("unknown")
    unseen = []
    for card in task.unseen:
        for _ in range(views_per_identity):
            scene = background(rng, BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))], surfaces)
            unseen.append(photograph(card, scene, rng))
    return EvalSet(np.stack(task.identities), np.stack(views), np.asarray(labels), tuple(conditions), np.stack(unseen))


def card_view(card: np.ndarray, size: int, rng: np.random.Generator, surfaces, occlude: float = 0.0) -> np.ndarray:
    """One training photograph of a card (scale up to the full frame, so flat scans are covered too),
    then the product's augmentations (colour jitter, rotate-90, coarse dropout, grid mask, glare)."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    scene = background(rng, kind, surfaces)
    occlusion = ""
    if occlude and rng.random() < occlude:
        occlusion = ("thumb", "sleeve", "block")[int(rng.integers(3))]
    area = rng.uniform(0.1, 0.3)
    view = photograph(
        card,
        scene,
        rng,
        scale=(0.7, 1.0),
        tilt=18.0,
        occlusion=occlusion if occlusion != "block" else "",
        area=area,
        glare=rng.random() < 0.25,
    )
    if occlusion == "block":
        view = augment.coarse_dropout(view, rng, area=area * 0.6)
    view = augment.color_jitter(view, rng, 0.3)
    if rng.random() < 0.1:
        view = augment.rotate90(view, rng)
    r = rng.random()
    if r < 0.15:
        view = augment.coarse_dropout(view, rng)
    elif r < 0.2:
        view = augment.grid_mask(view, rng)
    if size != BASE_PX:
        view = augment.resize(np.ascontiguousarray(view), size)
    return np.ascontiguousarray(view)


def training_pool(
    images: tuple[np.ndarray, ...],
    count_per_image: int,
    size: int,
    seed: int,
    cutmix: float = 0.1,
    occlude: float = 0.0,
    cards: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(views, labels): augmented training views of each image at `size` px, labelled with the image's
    index; a `cutmix` share pastes in a box of another image (the label stays the base image's).
    With `cards`, each image is a card and each view a photograph of it on a training surface."""
    rng = np.random.default_rng(seed)
    surfaces = reference_task().backgrounds if cards else ()
    views, labels = [], []
    for label, image in enumerate(images):
        for _ in range(count_per_image):
            if cards:
                views.append(card_view(image, size, rng, surfaces, occlude))
                labels.append(label)
                continue
            view = augment.training_view(image, size, rng)
            if rng.random() < cutmix:
                other = augment.training_view(images[int(rng.integers(len(images)))], size, rng)
                view = augment.cutmix(view, other, rng)
            if occlude and rng.random() < occlude:  # a card partly hidden: one large block, 10–30 %
                view = augment.coarse_dropout(view, rng, area=rng.uniform(0.1, 0.3))
            views.append(view)
            labels.append(label)
    return np.stack(views), np.asarray(labels)


def pool_with_negatives(
    images: tuple[np.ndarray, ...],
    negatives: tuple[np.ndarray, ...],
    views: int,
    negative_views: int,
    size: int,
    seed: int,
    occlude: float = 0.0,
    occlude_negatives: bool = False,
    cards: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """training_pool of `images` (labelled by index) followed by one of `negatives` (labelled -1),
    each drawn from its own seed (seed, seed + 500) so either count can change without moving the other."""
    views_, labels = training_pool(images, views, size, seed, occlude=occlude, cards=cards)
    if not negatives:
        return views_, labels
    more, _ = training_pool(negatives, negative_views, size, seed + 500, occlude=occlude if occlude_negatives else 0.0)
    return np.concatenate([views_, more]), np.concatenate([labels, np.full(len(more), -1)])
