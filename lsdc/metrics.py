"""Clustering metrics: ACC with Hungarian matching (scipy), NMI and ARI (scikit-learn),
the matched confusion matrix, and the confident samples of Figure 1b."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

CONFIDENCE = 0.9


# scikit-learn sets environment variables (KMP_*) when imported: imported on first use, so that
# importing lsdc changes nothing in the importing process
def normalized_mutual_info_score(a, b) -> float:
    from sklearn.metrics import normalized_mutual_info_score as nmi
    return nmi(a, b)


def adjusted_rand_score(a, b) -> float:
    from sklearn.metrics import adjusted_rand_score as ari
    return ari(a, b)


def _as_int(a: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {a.shape}")
    return a.astype(np.int64)


def match_clusters(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """mapping[c] = the class assigned to cluster c by the Hungarian matching that maximises
    the number of agreements (clusters left unmatched map to -1)."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {len(yt)} vs {len(yp)}")
    n = max(int(yp.max(initial=0)), int(yt.max(initial=0)), (num_classes or 0) - 1) + 1
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (yp, yt), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.full(n, -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def cluster_acc(y_true, y_pred) -> float:
    """Clustering accuracy in [0, 1]: the best one-to-one matching of clusters to classes."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    if len(yt) == 0:
        raise ValueError("cluster_acc: no samples")
    mapping = match_clusters(yt, yp)
    return float(np.mean(mapping[yp] == yt))


def confusion(y_true, y_pred, num_classes: int, mapping: np.ndarray | None = None) -> np.ndarray:
    """num_classes x num_classes counts, rows: true class, columns: matched cluster."""
    yt, yp = _as_int(y_true), _as_int(y_pred)
    mapping = match_clusters(yt, yp, num_classes) if mapping is None else mapping
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    pred = mapping[yp]
    ok = pred >= 0
    np.add.at(m, (yt[ok], pred[ok]), 1)
    return m


def evaluate(y_true, probs: np.ndarray, threshold: float = CONFIDENCE) -> dict[str, float]:
    """ACC, NMI, ARI of argmax predictions, and the fraction and ACC of confident samples
    (max probability > threshold), the latter under the matching found on all samples."""
    yt = _as_int(y_true)
    probs = np.asarray(probs)
    yp = probs.argmax(1)
    mapping = match_clusters(yt, yp, probs.shape[1])
    correct = mapping[yp] == yt
    conf = probs.max(1) > threshold
    return {
        "acc": float(correct.mean()),
        "nmi": float(normalized_mutual_info_score(yt, yp)),
        "ari": float(adjusted_rand_score(yt, yp)),
        "confident_frac": float(conf.mean()),
        "confident_acc": float(correct[conf].mean()) if conf.any() else float("nan"),
    }


def scores(y_true, y_pred) -> dict[str, float]:
    """ACC, NMI and ARI of hard predictions (the k-means baseline)."""
    return {"acc": cluster_acc(y_true, y_pred),
            "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
            "ari": float(adjusted_rand_score(y_true, y_pred))}


def label_free_scores(pred_clean, pred_augmented, num_clusters: int) -> dict[str, float]:
    """A model-selection criterion that needs no labels.

    - ``stability``: ARI between the clusters of the plain images and of an independently
      augmented copy (a clustering that is an artefact of the pixels moves under augmentation);
    - ``balance``: entropy of the cluster sizes / log C (1 = equal sizes; a collapse to one
      cluster is perfectly stable, and scores 0 here);
    - ``label_free`` = stability x balance.
    """
    pc, pa = _as_int(pred_clean), _as_int(pred_augmented)
    stability = float(adjusted_rand_score(pc, pa))
    sizes = np.bincount(pc, minlength=num_clusters).astype(np.float64)
    p = sizes[sizes > 0] / sizes.sum()
    balance = float(-(p * np.log(p)).sum() / np.log(num_clusters)) if num_clusters > 1 else 1.0
    return {"stability": stability, "balance": balance, "label_free": max(stability, 0.0) * balance}


# ------------------------------------------------------------------ diagnostics (analysis only)
def pair_scores(chunks) -> dict[str, float]:
    """Positive-pair precision and recall of 0/1 pair labels against the true classes, and
    the fraction of positive pairs, over ``chunks``: pairs ``(S, y)`` of a labeler's B x B
    output and the B true classes (pairs are only formed within a chunk, as within a batch);
    the diagonal (a sample with itself) is left out. Precision is NaN without positive pairs."""
    tp = n_pos = n_true = n_off = 0
    for pred_pairs, y in chunks:
        s = np.asarray(pred_pairs) > 0.5
        yt = _as_int(y)
        off = ~np.eye(len(yt), dtype=bool)
        pos, true = s & off, (yt[:, None] == yt[None, :]) & off
        tp += int((pos & true).sum())
        n_pos, n_true, n_off = n_pos + int(pos.sum()), n_true + int(true.sum()), n_off + int(off.sum())
    return {"pair_precision": tp / n_pos if n_pos else float("nan"),
            "pair_recall": tp / n_true if n_true else float("nan"),
            "pos_frac": n_pos / max(n_off, 1)}


def pair_agreement(chunks) -> dict[str, float]:
    """How 0/1 pair labels agree with reference ones (e.g. fp32's), over ``chunks`` of
    ``(S, S_ref)``: ``pair_flip_frac``, the fraction of (off-diagonal) pairs whose label
    differs, and ``pos_agreement``, the Jaccard index of the two sets of positive pairs
    (1 = the same positive pairs)."""
    flips = n_off = inter = union = 0
    for pairs, ref_pairs in chunks:
        a, b = np.asarray(pairs) > 0.5, np.asarray(ref_pairs) > 0.5
        off = ~np.eye(a.shape[0], dtype=bool)
        a, b = a & off, b & off
        flips, n_off = flips + int((a != b).sum()), n_off + int(off.sum())
        inter, union = inter + int((a & b).sum()), union + int((a | b).sum())
    return {"pair_flip_frac": flips / max(n_off, 1), "pos_agreement": inter / union if union else 1.0}


def cluster_size_stats(pred, num_clusters: int) -> dict[str, float]:
    """``nonempty_clusters`` (how many clusters hold a sample) and ``size_entropy``, the
    entropy (nats) of the cluster sizes (log C when all sizes are equal, 0 after a collapse)."""
    sizes = np.bincount(_as_int(pred), minlength=num_clusters).astype(np.float64)
    p = sizes[sizes > 0] / max(sizes.sum(), 1.0)
    return {"nonempty_clusters": int((sizes > 0).sum()), "size_entropy": float(-(p * np.log(p)).sum())}
