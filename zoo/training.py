"""Training on CPU: the ArcFace teacher and students distilled from it, deterministic under a seed."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from zoo.identity_task import BASE_PX, eval_set, pool_with_negatives, reference_task
from zoo.registry import ModelSpec
from zoo.validators.inputs import normalize, preprocess
from zoo.validators.metrics import cosine_rows

ARCFACE_MARGIN = 0.5
ARCFACE_SCALE = 64.0
NEGATIVE_VIEWS = 4  # training views per negative ("not a card") image per epoch
OUTLIER_WEIGHT = 4.0
TEACHER_OCCLUSION = 0.3  # share of the teacher's identity views with a large occluding block
DISTILL_OCCLUSION = 0.5  # the same for distillation: students must follow the teacher on occluded cards
OUTLIER_MAX_COSINE = 0.2
# ArcFace stops pulling a view in once its margin logit wins, so a teacher's occluded and glare views
# can sit at cosine ~0.8 to their card; students then cannot follow those one-off directions. A centre
# term (1 - cos to the class weight) keeps each card compact. On the card task (60 epochs): weight 4 →
# same-card p5 0.842, different-card p95 0.369; 16 → 0.874 / 0.417 (a distilled ConvNeXt's worst
# held-out view 0.896 → 0.911); 40 → 0.897 / 0.493, too near the 0.5 different-card rule.
COMPACTNESS_WEIGHT = 16.0
MARGIN_START, MARGIN_WARMUP = 40, 16  # percent of the epochs: plain softmax until then, then the margin ramps in
HARD_SHARE, HARD_WEIGHT = 0.25, 1.0  # distillation: the batch's hardest quarter of views counts twice


@dataclass
class TrainingLog:
    epochs: int = 0
    batch: int = 0
    lr: float = 0.0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    heldout: dict = field(default_factory=dict)  # final held-out figures


def _to_input(views_uint8: np.ndarray, spec: ModelSpec):
    """uint8 NHWC views (any size) → the model's normalized NCHW tensor at its input size, with the
    same resampling the validators use (so teacher and artifact always see identical pixels)."""
    import torch

    if views_uint8.shape[1] != spec.input_size:
        return torch.from_numpy(preprocess(list(views_uint8), spec.input_size, spec.mean, spec.std))
    return torch.from_numpy(normalize(views_uint8, spec.mean, spec.std))


def embed(model, views_uint8: np.ndarray, spec: ModelSpec, batch: int = 64) -> np.ndarray:
    """Embeddings of uint8 views, preprocessed for `spec` (eval mode, no gradients)."""
    from zoo.pipeline import embed_torch

    model.eval()
    return embed_torch(model, _to_input(views_uint8, spec).numpy(), batch=batch)


def _arcface_head(dim: int, classes: int):
    import torch
    from torch import nn

    class ArcFace(nn.Module):
        """Additive angular margin: logits s·cos(θ + m) for the true class, s·cos θ for the others."""

        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)

        margin = ARCFACE_MARGIN  # the trainer ramps it up from 0 during warm-up

        def forward(self, embedding, labels=None):
            cos = embedding @ nn.functional.normalize(self.weight, dim=1).T
            cos = cos.clamp(-1 + 1e-7, 1 - 1e-7)
            if labels is None:  # no margin for images that belong to no identity
                return ARCFACE_SCALE * cos
            sin = torch.sqrt(1 - cos**2)
            m = self.margin
            with_margin = cos * math.cos(m) - sin * math.sin(m)
            # past θ = π - m, cos(θ + m) is no longer decreasing: use the usual linear fallback
            with_margin = torch.where(cos > math.cos(math.pi - m), with_margin, cos - math.sin(math.pi - m) * m)
            onehot = nn.functional.one_hot(labels, classes).to(cos.dtype)
            return ARCFACE_SCALE * (onehot * with_margin + (1 - onehot) * cos)

    return ArcFace()


def _seed_all(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _schedule(optimizer, total_steps: int, warmup: int):
    import torch

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _step(optimizer, scheduler, loss) -> float:
    """One optimisation step; returns the loss value."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.item()


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="epoch", leave=True, dynamic_ncols=True)


def train_arcface(
    spec: ModelSpec,
    *,
    epochs: int = 40,
    views_per_identity: int = 24,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    occlude: float = TEACHER_OCCLUSION,
    compactness: float = COMPACTNESS_WEIGHT,
    workers: int | None = None,
    show_progress: bool = True,
):
    """Train `spec`'s embedding model with ArcFace on the reference identity task. Returns (model, log).
    Occluded views in training keep an occluded card near its identity: a teacher that jumps away
    under occlusion hands its students a target they cannot follow."""
    import torch

    from zoo.models import build_model

    _seed_all(seed)
    task = reference_task()
    model = build_model(spec, load_checkpoint=False)
    head = _arcface_head(spec.embedding_dim, len(task.identities))
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    steps_per_epoch = (len(task.identities) * views_per_identity + len(task.negatives) * NEGATIVE_VIEWS) // batch
    scheduler = _schedule(optimizer, epochs * steps_per_epoch, warmup=steps_per_epoch)
    log = TrainingLog()
    start = time.perf_counter()
    bar = _progress_bar(epochs, f"ArcFace {spec.name}", show_progress)
    # Photographs of cards on cluttered surfaces take a small net a while to tell apart: the first
    # MARGIN_START % is plain (normalized) softmax, then the margin ramps in over MARGIN_WARMUP %, then
    # the centre term.
    # With the margin in from the start (over the first quarter) the classes never separate and the
    # embedding collapses to one point (every view at cosine > 0.99 to every card).
    margin_start, margin_warmup = epochs * MARGIN_START // 100, max(1, epochs * MARGIN_WARMUP // 100)
    # a fresh augmented pool each epoch, seeded by (seed, epoch), each card photographed on a training surface
    jobs = [
        (task.identities, task.negatives, views_per_identity, NEGATIVE_VIEWS, spec.input_size, seed * 1000 + epoch)
        + (occlude, False, True)
        for epoch in range(epochs)
    ]
    pools = prefetched_pools(jobs, workers)
    for epoch, (views, labels) in enumerate(pools):
        ramp = min(1.0, max(0.0, (epoch + 1 - margin_start) / margin_warmup))
        head.margin = ARCFACE_MARGIN * ramp
        centre_weight = compactness * min(1.0, max(0.0, (epoch + 1 - margin_start - margin_warmup) / margin_warmup))
        x_all = _to_input(views, spec)
        y_all = torch.from_numpy(labels)
        order = torch.randperm(len(views))
        model.train()
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            y = y_all[idx]
            embedding = model(x_all[idx])
            known = y >= 0
            loss = torch.nn.functional.cross_entropy(head(embedding[known], y[known]), y[known])
            if centre_weight:
                centre = torch.nn.functional.normalize(head.weight[y[known]], dim=1)
                loss = loss + centre_weight * (1 - (embedding[known] * centre).sum(1)).mean()
            if (~known).any():
                # outlier exposure: a "not a card" image must not lie near any identity's centre
                nearest = head(embedding[~known]).max(dim=1).values / ARCFACE_SCALE
                loss = loss + OUTLIER_WEIGHT * torch.relu(nearest - OUTLIER_MAX_COSINE).mean()
            losses.append(_step(optimizer, scheduler, loss))
        log.losses.append(float(np.mean(losses)))
        bar.set_postfix(loss=f"{log.losses[-1]:.3f}")
        bar.update()
    bar.close()
    log.epochs = epochs
    log.seconds = time.perf_counter() - start
    model.eval()
    from zoo.validators.acceptance import identity_metrics

    ev = eval_set()
    log.heldout = identity_metrics(
        embed(model, ev.gallery, spec), embed(model, ev.views, spec), ev.labels, ev.conditions
    )
    return model, log


def render_workers() -> int:
    """Processes that render training pools ahead of training: every core but the one training."""
    import os

    return min(4, max(1, (os.cpu_count() or 1) - 1))


def prefetched_pools(jobs: list[tuple], workers: int | None = None):
    """pool_with_negatives(*job) for each job, in order, rendered ahead in `workers` processes (a card
    photograph costs about as much to render as a training step on it costs to learn from). The pools
    are the same as rendering them here: each is seeded by its job. workers = 0 renders in-process,
    None uses render_workers()."""
    workers = render_workers() if workers is None else workers
    if workers <= 0:
        for job in jobs:
            yield pool_with_negatives(*job)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent holds torch's thread pools, which a forked child must not inherit
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        waiting = iter(jobs)
        pending = deque(executor.submit(pool_with_negatives, *job) for _, job in zip(range(workers + 1), waiting))
        while pending:
            pool = pending.popleft().result()
            job = next(waiting, None)
            if job is not None:
                pending.append(executor.submit(pool_with_negatives, *job))
            yield pool
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _distillation_loss(out, target):
    """1 − cosine, plus the same again over the batch's hardest share of views: the rule gates the
    worst held-out view, and an occluded card is where a student strays from its teacher."""
    import torch

    gap = 1 - torch.nn.functional.cosine_similarity(out, target, dim=1)
    if not HARD_SHARE:
        return gap.mean()
    hardest = gap.topk(max(1, int(len(gap) * HARD_SHARE))).values
    return gap.mean() + HARD_WEIGHT * hardest.mean()


def _each(value, count: int) -> list:
    """One value per student: a list as given, a single value repeated."""
    return list(value) if isinstance(value, (list, tuple)) else [value] * count


def distill(teacher_spec: ModelSpec, student_spec: ModelSpec, **options):
    """One student: distill_students with a single student. Returns (student model, log)."""
    return distill_students(teacher_spec, [student_spec], **options)[0]


def distill_students(
    teacher_spec: ModelSpec,
    student_specs: list[ModelSpec],
    *,
    images: tuple[np.ndarray, ...] | None = None,
    epochs: int | list[int] = 30,
    views_per_image: int = 64,
    negative_views: int = 16,
    batch: int | list[int] = 64,
    lr: float | list[float] = 3e-3,
    ema: float | list[float] = 0.0,
    seed: int = 0,
    occlude: float = DISTILL_OCCLUSION,
    workers: int | None = None,
    apart: bool = False,
    show_progress: bool = True,
):
    """Train each student's embedding to reproduce the frozen teacher's (cosine loss on L2-normalized
    embeddings). Each epoch draws a fresh augmented pool (seeded per epoch, rendered ahead in worker
    processes), which the frozen teacher embeds once for every student, so a student of a few hundred
    thousand weights sees fresh occlusions instead of memorising one set. Every student keeps a random
    state of its own, so each comes out exactly as if trained alone: in lockstep here, or `apart`, each
    in a process of its own, all at once (zoo.pool_cache), from pools rendered and embedded once into a
    temporary folder.
    `epochs` is one count for all, or one per student (a student's pools are the first of the shared ones);
    `batch`, `lr` and `ema` likewise. `ema` > 0 returns the exponential moving average of the student's
    weights (that decay per step) instead of its last weights.
    Returns [(student model, log)] with held-out cosine vs the teacher before and after."""
    for student_spec in student_specs:
        if teacher_spec.embedding_dim != student_spec.embedding_dim:
            from zoo.errors import UsageError

            raise UsageError(
                f"student {student_spec.name} embeds {student_spec.embedding_dim}-d, teacher {teacher_spec.name} "
                f"{teacher_spec.embedding_dim}-d: distillation needs the same dimension"
            )
    per_student, batches, rates, decays = (_each(v, len(student_specs)) for v in (epochs, batch, lr, ema))
    negatives: tuple[np.ndarray, ...] = ()
    cards = images is None  # the reference task: photographs of its cards, and its training negatives
    if cards:
        task = reference_task()
        images, negatives = task.identities, task.negatives
    sizes = {spec.input_size for spec in (teacher_spec, *student_specs)}
    # one size for all: render at it (as the teacher was trained); else at the base size, resized per model
    size = sizes.pop() if len(sizes) == 1 else BASE_PX
    # seeds stay below 1e6: evaluation views never share one (identity_task.EVAL_SEED); fewer views of
    # each negative: the identities are what a student must follow
    jobs = [
        (images, negatives, views_per_image, negative_views, size, seed * 1000 + epoch, occlude, True, cards)
        for epoch in range(max(per_student))
    ]
    pool_size = len(images) * views_per_image + len(negatives) * negative_views
    runs = [
        _StudentRun(spec, count, batch_size, rate, decay, seed, pool_size)
        for spec, count, batch_size, rate, decay in zip(student_specs, per_student, batches, rates, decays)
    ]
    from zoo.models import build_model

    _seed_all(seed)
    teacher = build_model(teacher_spec)
    heldout = HeldOut(teacher, teacher_spec)  # computed once, whether the students train here or apart
    if apart and len(runs) > 1:
        from zoo.pool_cache import distill_in_processes

        return distill_in_processes(teacher, teacher_spec, heldout, runs, jobs, workers, show_progress)
    for run in runs:
        run.start(heldout)
    start = time.perf_counter()
    names = ", ".join(spec.name for spec in student_specs)
    bar = _progress_bar(len(jobs), f"distill {names} ← {teacher_spec.name}", show_progress)
    for epoch, (views, target) in enumerate(embedded_pools(jobs, teacher, teacher_spec, workers)):
        for run in runs:
            if epoch < run.epochs:  # else this student's epochs are done
                run.train_epoch(views, target)
        bar.set_postfix(loss=" ".join(f"{run.log.losses[-1]:.4f}" for run in runs if run.log.losses))
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    return [run.finish(heldout, seconds) for run in runs]


def embedded_pools(jobs: list[tuple], teacher, teacher_spec: ModelSpec, workers: int | None):
    """(views, the teacher's embeddings of them) for each pool job, in order: the teacher's, once per pool."""
    import torch

    for views, _ in prefetched_pools(jobs, workers):
        yield views, torch.from_numpy(embed(teacher, views, teacher_spec))


class HeldOut:
    """Held-out photographs and the teacher's embeddings of them: how near a student follows."""

    def __init__(self, teacher, teacher_spec: ModelSpec):
        self.set = eval_set()
        self.teacher = embed(teacher, self.set.views, teacher_spec)
        self.known = self.set.labels >= 0  # the identities' views; unknown images are reported apart
        self.conditions = np.asarray(self.set.conditions)

    def cosine(self, student, spec: ModelSpec) -> dict:
        cos = cosine_rows(embed(student, self.set.views, spec), self.teacher)
        known = self.known
        return {
            "min": float(cos[known].min()),
            "p5": float(np.percentile(cos[known], 5)),
            "mean": float(cos[known].mean()),
            "unknown_mean": float(cos[~known].mean()),
            "by_condition_min": {c: float(cos[self.conditions == c].min()) for c in dict.fromkeys(self.set.conditions)},
        }


class _StudentRun:
    """One student's training: its model, optimizer, schedule and random state, an epoch at a time."""

    def __init__(self, spec: ModelSpec, epochs: int, batch: int, lr: float, ema: float, seed: int, pool_size: int):
        self.spec, self.epochs, self.batch, self.lr, self.ema_decay, self.seed = spec, epochs, batch, lr, ema, seed
        self.steps_per_epoch = pool_size // batch
        self.log = TrainingLog(epochs=epochs, batch=batch, lr=lr)
        self.model = self.ema = None

    def start(self, heldout: HeldOut) -> None:
        """Build the student as seeded (the same weights wherever it trains) and its optimizer."""
        import torch

        from zoo.models import build_model

        _seed_all(self.seed)
        self.model = build_model(self.spec, load_checkpoint=False)
        self.rng = torch.get_rng_state()
        if self.ema_decay:
            import copy

            self.ema = copy.deepcopy(self.model)
        self.log.heldout["before"] = heldout.cosine(self.model, self.spec)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.01)
        self.scheduler = _schedule(self.optimizer, self.epochs * self.steps_per_epoch, warmup=self.steps_per_epoch)

    def train_epoch(self, views: np.ndarray, target) -> None:
        import torch

        torch.set_rng_state(self.rng)
        x_all = _to_input(views, self.spec)
        self.model.train()
        order = torch.randperm(len(x_all))
        losses = []
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch : (step + 1) * self.batch]
            out = self.model(x_all[idx])
            losses.append(_step(self.optimizer, self.scheduler, _distillation_loss(out, target[idx])))
            if self.ema is not None:
                self._update_ema()
        self.log.losses.append(float(np.mean(losses)))
        self.rng = torch.get_rng_state()

    def _update_ema(self) -> None:
        """ema ← decay·ema + (1 − decay)·weights after each step; BatchNorm statistics copied as they are."""
        import torch

        with torch.no_grad():
            for averaged, weight in zip(self.ema.parameters(), self.model.parameters()):
                averaged.mul_(self.ema_decay).add_(weight, alpha=1 - self.ema_decay)
            for averaged, buffer in zip(self.ema.buffers(), self.model.buffers()):
                averaged.copy_(buffer)

    def finish(self, heldout: HeldOut, seconds: float):
        self.log.seconds = seconds
        if self.ema is not None:
            self.model = self.ema
        self.model.eval()
        self.log.heldout["after"] = heldout.cosine(self.model, self.spec)
        return self.model, self.log
