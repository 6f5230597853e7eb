"""Per-layer divergence: each paired module's output on the artifact vs the source model, where the
error starts and which layers add most of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from zoo.diagnose.pairing import ModuleTap, Pairing, relative_error, to_module_layout
from zoo.validators.metrics import cosine_rows

JUMP_SHARE = 0.5  # the first layer that adds at least this share of the largest single addition
TOP = 5


@dataclass(frozen=True)
class Layer:
    module: str  # the torch module path
    tensor: str  # the artifact's tensor holding its output
    shape: tuple[int, ...]  # per sample, as the module gives it
    cosine_mean: float
    cosine_min: float
    relative_error: float  # ‖artifact − source‖ / ‖source‖ over the inputs
    added: float  # the relative error this layer adds to the worst before it (≥ 0)
    # modules run since the previous row whose outputs the artifact does not hold (its toolchain renamed or
    # fused them): the error this row adds may come from them
    hidden: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["hidden"] = list(self.hidden)
        return d

    @property
    def label(self) -> str:
        return self.module + (f" (after {', '.join(self.hidden)}, not exposed)" if self.hidden else "")


def layer_table(taps: list[ModuleTap], pairs: list[Pairing], artifact: dict[str, np.ndarray]) -> list[Layer]:
    """The paired modules in the order they run, each compared on the artifact's own tensor."""
    by_module = {t.module: t for t in taps}
    rows: list[Layer] = []
    worst = 0.0
    hidden: list[str] = []
    for p in pairs:
        tap = by_module[p.module]
        shape = tuple(tap.output.shape[1:])
        value = artifact.get(p.tensor)
        if value is None or value.size != tap.output.size:
            hidden.append(p.module)  # the artifact does not hold this tensor (its toolchain renamed or fused it)
            continue
        got = to_module_layout(value.astype(np.float32), shape, p.layout)
        want = tap.output
        cos = cosine_rows(want, got)
        rel = relative_error(want, got)
        added = max(0.0, rel - worst)
        worst = max(worst, rel)
        rows.append(
            Layer(
                p.module,
                p.tensor,
                shape,
                round(float(cos.mean()), 6),
                round(float(cos.min()), 6),
                round(rel, 6),
                round(added, 6),
                tuple(hidden),
            )
        )
        hidden = []
    return rows


def first_jump(rows: list[Layer]) -> int | None:
    """The first layer whose addition to the error is a large share of the largest addition: where the
    divergence starts (errors accumulate, so the first row under a cosine threshold is often later)."""
    if not rows:
        return None
    largest = max(r.added for r in rows)
    if largest <= 0:
        return None
    return next(i for i, r in enumerate(rows) if r.added >= JUMP_SHARE * largest)


def top_contributors(rows: list[Layer], count: int = TOP) -> list[int]:
    """Indices of the rows that add the most error, largest first."""
    ranked = sorted(range(len(rows)), key=lambda i: (-rows[i].added, i))
    return [i for i in ranked[:count] if rows[i].added > 0]
