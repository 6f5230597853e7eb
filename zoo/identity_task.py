"""A reference identity task built from the real photos bundled with scikit-image.

Each identity (a "card") is a quadrant of a photo or a whole photo; augmented views of it are its
conditions.
Held-out evaluation views (clean, 20 % occluded, glare) use seeds never used in training, and
"unknown" images come from photos that are never identities. Everything is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from zoo import augment

# Identities: each quadrant of a detailed colour photo, and each of the other photos whole. No two
# identities share pixels; textures whose parts look alike are kept out (they are the unknowns).
QUADRANT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "colorwheel", "logo")
WHOLE_PHOTOS = ("camera", "coins", "clock", "hubble_deep_field", "page", "retina", "text")
UNKNOWN_PHOTOS = ("moon", "gravel", "grass", "brick", "cell", "microaneurysms")
# Training-only negatives ("not a card"), disjoint from the identities and the unknown test images;
# with them: synthetic patterns and textures, and faces (see reference_task).
NEGATIVE_PHOTOS = ("binary_blobs", "checkerboard", "shepp_logan_phantom", "horse")
BASE_PX = 128  # identities are stored at this size; views are rendered at any model size
EVAL_SEED = 1_000_003  # evaluation views never share a seed with training (seeds < 1e6)


def _load(name: str) -> np.ndarray:
    import skimage.data

    # binary_blobs is drawn at random unless seeded: unseeded, no two trainings saw the same negatives
    image = np.asarray(skimage.data.binary_blobs(rng=0) if name == "binary_blobs" else getattr(skimage.data, name)())
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


@dataclass(frozen=True)
class IdentityTask:
    identities: tuple[np.ndarray, ...]  # BASE_PX×BASE_PX×3 uint8, one per identity
    names: tuple[str, ...]
    unknowns: tuple[np.ndarray, ...]  # images that are no identity at all (evaluation only)
    negatives: tuple[np.ndarray, ...]  # other non-identity images, for training only
    unknown_names: tuple[str, ...] = ()


def _synthetic_negatives(count: int, seed: int = 7) -> list[np.ndarray]:
    """Seeded images that are nothing: block noise, gradients, stripes, and grey multi-scale noise
    textures (so that grey natural textures are not mistaken for the grey identities)."""
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
            octaves = [
                augment.resize(rng.integers(0, 256, (n, n, 1), dtype=np.uint8).repeat(3, 2), BASE_PX)
                for n in (4, 16, 64)
            ]
            weights = rng.dirichlet(np.ones(3))
            img = sum(w * o.astype(np.float64) for w, o in zip(weights, octaves))
            lo, hi = np.percentile(img, [2, 98])
            img = ((img - lo) / max(hi - lo, 1) * rng.uniform(120, 255)).clip(0, 255).astype(np.uint8)
        out.append(np.ascontiguousarray(img))
    return out


def _faces(count: int) -> list[np.ndarray]:
    """Small grey face photos from scikit-image's LFW subset (no identity uses them)."""
    import skimage.data

    faces = skimage.data.lfw_subset()[:count]
    return [augment.resize(np.repeat((f * 255).astype(np.uint8)[..., None], 3, 2), BASE_PX) for f in faces]


@lru_cache(maxsize=1)
def reference_task() -> IdentityTask:
    identities, names = [], []
    for photo in QUADRANT_PHOTOS:
        for i, quadrant in enumerate(_quadrants(_load(photo))):
            identities.append(quadrant)
            names.append(f"{photo}/{i}")
    for photo in WHOLE_PHOTOS:
        identities.append(augment.resize(_square(_load(photo)), BASE_PX))
        names.append(photo)
    unknowns = [q for photo in UNKNOWN_PHOTOS for q in _quadrants(_load(photo))[:2]]
    unknown_names = [f"{photo}/{i}" for photo in UNKNOWN_PHOTOS for i in range(2)]
    negatives = [q for photo in NEGATIVE_PHOTOS for q in _quadrants(_load(photo))]
    negatives += _synthetic_negatives(24) + _faces(16)
    return IdentityTask(tuple(identities), tuple(names), tuple(unknowns), tuple(negatives), tuple(unknown_names))


@dataclass(frozen=True)
class EvalSet:
    """Held-out views at BASE_PX: `labels` is the identity index, -1 for unknown images."""

    gallery: np.ndarray  # (I, H, W, 3) canonical view per identity
    views: np.ndarray  # (V, H, W, 3)
    labels: np.ndarray  # (V,)
    conditions: tuple[str, ...]  # clean | occluded | glare | unknown


def _mild_view(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    view = augment.random_resized_crop(image, BASE_PX, rng, scale=(0.8, 1.0))
    return augment.color_jitter(view, rng, 0.15)


@lru_cache(maxsize=2)
def eval_set(views_per_identity: int = 2, seed: int = EVAL_SEED) -> EvalSet:
    task = reference_task()
    rng = np.random.default_rng(seed)
    views, labels, conditions = [], [], []
    for label, identity in enumerate(task.identities):
        for _ in range(views_per_identity):
            clean = _mild_view(identity, rng)
            views += [clean, augment.coarse_dropout(clean, rng, area=0.2), augment.glare(clean, rng)]
            labels += [label] * 3
            conditions += ["clean", "occluded", "glare"]
    for unknown in task.unknowns:
        for _ in range(views_per_identity):
            views.append(_mild_view(unknown, rng))
            labels.append(-1)
            conditions.append("unknown")
    return EvalSet(np.stack(task.identities), np.stack(views), np.asarray(labels), tuple(conditions))


def training_pool(
    images: tuple[np.ndarray, ...],
    count_per_image: int,
    size: int,
    seed: int,
    cutmix: float = 0.1,
    occlude: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(views, labels): augmented training views of each image at `size` px, labelled with the image's
    index; a `cutmix` share pastes in a box of another image (the label stays the base image's)."""
    rng = np.random.default_rng(seed)
    views, labels = [], []
    for label, image in enumerate(images):
        for _ in range(count_per_image):
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
) -> tuple[np.ndarray, np.ndarray]:
    """training_pool of `images` (labelled by index) followed by one of `negatives` (labelled -1),
    each drawn from its own seed (seed, seed + 500) so either count can change without moving the other."""
    views_, labels = training_pool(images, views, size, seed, occlude=occlude)
    if not negatives:
        return views_, labels
    more, _ = training_pool(negatives, negative_views, size, seed + 500, occlude=occlude if occlude_negatives else 0.0)
    return np.concatenate([views_, more]), np.concatenate([labels, np.full(len(more), -1)])
