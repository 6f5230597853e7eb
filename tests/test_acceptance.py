"""The acceptance metrics on hand-made embeddings, and the reference identity task."""

import numpy as np
import pytest

from zoo.identity_task import UNKNOWN_PHOTOS, eval_set, reference_task
from zoo.validators.acceptance import identity_metrics, separates


def _one_hot_gallery(n, dim=16):
    return np.eye(n, dim)


def test_perfect_embeddings_score_perfectly():
    gallery = _one_hot_gallery(4)
    labels = np.array([0, 1, 2, 3, 0, 1, -1])
    conditions = ["clean", "clean", "occluded", "glare", "clean", "occluded", "unknown"]
    queries = np.vstack([gallery[[0, 1, 2, 3, 0, 1]], np.eye(1, 16, 10)])  # the unknown is orthogonal to all
    m = identity_metrics(gallery, queries, labels, conditions)
    assert m["top1_clean"] == m["top3_occluded"] == m["top5_glare"] == 1.0
    assert m["same_p5"] == pytest.approx(1.0) and m["different_p95"] == pytest.approx(0.0)
    assert m["unknown_rejected"] == 1.0 and m["unknown_nearest_distance_min"] == pytest.approx(1.0)
    assert separates(m)[0]


def test_confused_embeddings_fail_and_the_guard_says_so():
    gallery = _one_hot_gallery(4)
    labels = np.array([0, 1, 2, 3])
    queries = gallery[[1, 0, 3, 2]]  # every query is nearest to the wrong identity
    m = identity_metrics(gallery, queries, labels, ["clean"] * 4)
    assert m["top1_clean"] == 0.0
    assert m["same_p5"] == pytest.approx(0.0) and m["different_max"] == pytest.approx(1.0)
    ok, summary = separates(m)
    assert not ok and "top-1 0.0%" in summary


def test_rank_counts_ties_in_favour_of_nothing():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    queries = np.array([[0.6, 0.8]])  # identical to identity 2: rank 0
    m = identity_metrics(gallery, queries, np.array([2]), ["clean"])
    assert m["top1_clean"] == 1.0


def test_reference_task_is_deterministic_and_disjoint():
    task = reference_task()
    assert len(task.identities) == 35 and len(task.unknowns) == 24 and len(task.negatives) == 90
    assert len(task.unseen) == len(task.unseen_names) == 8
    assert task.unknown_names[: len(UNKNOWN_PHOTOS)] == tuple(f"photo/{p}" for p in UNKNOWN_PHOTOS)
    assert len(task.unknown_names) == len(task.unknowns)
    a, b = eval_set(), eval_set.__wrapped__()
    assert np.array_equal(a.views, b.views) and np.array_equal(a.unseen_views, b.unseen_views)
    counts = {c: a.conditions.count(c) for c in set(a.conditions)}
    assert counts == {"clean": 70, "occluded": 70, "glare": 70, "unknown": 48}
    assert a.unseen_views.shape == (16, 128, 128, 3)
    # no unknown test image, unseen card or gallery card is among the training negatives
    trained = {im.tobytes() for im in task.negatives}
    for image in (*task.unknowns, *task.unseen, *task.identities):
        assert image.tobytes() not in trained
    # an occluded view is its clean photograph with ~20 % of the card hidden (thumb or sleeve)
    conditions = np.asarray(a.conditions)
    clean, occluded = a.views[conditions == "clean"], a.views[conditions == "occluded"]
    changed = np.mean(np.abs(clean.astype(int) - occluded.astype(int)).max(axis=-1) > 40, axis=(1, 2))
    assert 0.04 <= float(np.median(changed)) <= 0.3


def test_cards_are_one_family_and_distinct():
    task = reference_task()
    cards = np.stack(task.identities).astype(np.float64)
    border = cards[:, :4].reshape(len(cards), -1, 3).mean(axis=1)  # the border's colour, per card
    assert len({tuple(np.round(b / 16)) for b in border}) > 25
    # the shared layout: the artwork window's dark outline sits in the same place on every card
    assert float(cards[:, 25, 20:100].mean()) < 40
