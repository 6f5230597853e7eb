"""Where the reference models fall short, view by view: the figures behind the next training change.

Run: python benchmarks/reference_diagnostics.py [--students ref_vit ...] [--registry FILE]
Prints, for the teacher: its own worst held-out views (cosine to their identity's gallery image),
and for each unknown photo and the training negatives how near they land to a card (the "no match"
rule wants cosine < 0.5). For each student: how many views miss the > 0.95 teacher-parity minimum
per condition, and its worst views with the teacher's own cosine to that identity beside them
(students miss most where the teacher itself strays from the identity).
All figures are measured with torch on the held-out views (zoo.identity_task.eval_set).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from zoo.distillation import REFERENCE_STUDENTS, REFERENCE_TEACHER
from zoo.identity_task import eval_set, reference_task
from zoo.models import build_model
from zoo.registry import load_registry
from zoo.training import embed
from zoo.validators.acceptance import UNKNOWN_MIN_DISTANCE
from zoo.validators.metrics import cosine_rows

PARITY_MIN = 0.95  # every target's min_cosine_vs_teacher (zoo/targets/*.toml)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", nargs="+", default=list(REFERENCE_STUDENTS))
    parser.add_argument("--registry", action="append", default=[], help="extra registry file(s)")
    parser.add_argument("--worst", type=int, default=5)
    args = parser.parse_args()
    registry = load_registry(args.registry)
    task, ev = reference_task(), eval_set()
    conditions = np.asarray(ev.conditions)
    cards = ev.labels >= 0

    teacher_spec = registry.get(REFERENCE_TEACHER)
    teacher = build_model(teacher_spec)
    gallery = embed(teacher, ev.gallery, teacher_spec)
    views = embed(teacher, ev.views, teacher_spec)
    to_own = np.full(len(views), np.nan)
    to_own[cards] = np.sum(views[cards] * gallery[ev.labels[cards]], axis=1)

    print(f"teacher {teacher_spec.name}: worst views, cosine to their identity's gallery image")
    for condition in ("clean", "occluded", "glare"):
        worst = np.sort(to_own[conditions == condition])[: args.worst]
        print(f"  {condition:9} {' '.join(f'{c:.3f}' for c in worst)}")

    print(f'\nunknown images: nearest card ("no match" needs cosine < {1 - UNKNOWN_MIN_DISTANCE})')
    nearest = views[~cards] @ gallery.T
    per_view = len(nearest) // len(task.unknowns)
    by_photo = defaultdict(list)
    for i, row in enumerate(nearest):  # eval_set: `per_view` views of each unknown image, in order
        j = int(row.argmax())
        by_photo[i // per_view].append(f"{row[j]:.2f} {task.names[j]}")
    for k, hits in by_photo.items():
        print(f"  {task.unknown_names[k]:20} {', '.join(hits)}")
    rejected = float(np.mean(nearest.max(axis=1) < 1 - UNKNOWN_MIN_DISTANCE))
    negatives = embed(teacher, np.stack(task.negatives), teacher_spec) @ gallery.T
    print(
        f"  rejected: unknown views {rejected:.1%}; training negatives (canonical images) "
        f"{np.mean(negatives.max(axis=1) < 1 - UNKNOWN_MIN_DISTANCE):.1%}, mean nearest {negatives.max(axis=1).mean():.3f}"
    )

    unseen = embed(teacher, ev.unseen_views, teacher_spec) @ gallery.T
    distance = 1 - unseen.max(axis=1)
    print(
        f"  unseen cards (reported, not gated): nearest distance min {distance.min():.3f}, "
        f"median {np.median(distance):.3f}, beyond {UNKNOWN_MIN_DISTANCE}: {np.mean(distance > UNKNOWN_MIN_DISTANCE):.0%}"
    )

    for name in args.students:
        spec = registry.get(name)
        cos = cosine_rows(embed(build_model(spec), ev.views, spec), views)
        misses = {c: int(np.sum(cos[conditions == c] < PARITY_MIN)) for c in ("clean", "occluded", "glare")}
        print(f"\n{name} ({spec.input_size} px): views below {PARITY_MIN} vs teacher {misses} of {int(cards.sum())}")
        for i in np.argsort(np.where(cards, cos, np.inf))[: args.worst]:
            print(
                f"  {cos[i]:.3f}  {conditions[i]:9} {task.names[ev.labels[i]]:24} "
                f"teacher's own cosine to this identity {to_own[i]:.3f}"
            )


if __name__ == "__main__":
    main()
