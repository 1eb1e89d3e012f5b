import itertools

import numpy as np
import pytest

from lsdc import metrics


def brute_acc(y, p, k):
    best = 0
    for perm in itertools.permutations(range(k)):
        best = max(best, sum(perm[a] == b for a, b in zip(p, y)))
    return best / len(y)


def test_acc_is_one_on_permuted_labels():
    y = np.array([0, 0, 1, 1, 2, 2, 3])
    perm = np.array([2, 3, 0, 1])
    assert metrics.cluster_acc(y, perm[y]) == 1.0
    assert metrics.cluster_acc(list(y), list(perm[y])) == 1.0


def test_acc_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(10):
        y, p = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        assert metrics.cluster_acc(y, p) == pytest.approx(brute_acc(y, p, 4))


def test_acc_with_more_clusters_than_classes():
    y = np.array([0, 0, 1, 1])
    p = np.array([0, 5, 1, 1])
    assert metrics.cluster_acc(y, p) == pytest.approx(0.75)


def test_evaluate_and_confident_samples():
    y = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.3, 0.7], [0.91, 0.09]])
    r = metrics.evaluate(y, probs)
    assert r["acc"] == pytest.approx(0.8)
    assert r["confident_frac"] == pytest.approx(0.6)          # 0.95, 0.98, 0.91
    assert r["confident_acc"] == pytest.approx(2 / 3)        # the 0.91 one is wrong
    assert r["nmi"] == pytest.approx(metrics.scores(y, probs.argmax(1))["nmi"])


def test_confusion_rows_true_columns_matched():
    y = np.array([0, 0, 1, 2, 2])
    p = np.array([1, 1, 2, 0, 0])
    m = metrics.confusion(y, p, 3)
    assert np.array_equal(m, np.diag([2, 1, 2]))
