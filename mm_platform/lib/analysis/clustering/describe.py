"""Scores and descriptions of a clustering: external scores, representatives, top terms, label summaries."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from mm_platform.lib.analysis.clustering.base import _as_matrix, _unit_rows
from mm_platform.lib.analysis.clustering.stop_words import ENGLISH_STOP_WORDS


def is_missing_label(v: object) -> bool:
    """None, NaN or a blank string: no label."""
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def external_scores(labels: np.ndarray, truth: Sequence[str | None]) -> dict[str, float | int | None]:
    """NMI and ARI of ``labels`` against ground-truth ``truth`` over the labelled rows.

    Rows whose truth is None, NaN or blank are ignored; outliers (-1) count as one more group.
    Returns ``{"nmi", "ari", "n_labelled"}``; nmi/ari are None when fewer than 2 rows are labelled.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    if len(truth) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {len(truth)} truth values")
    keep = [i for i, t in enumerate(truth) if not is_missing_label(t)]
    n = len(keep)
    if n < 2:
        return {"nmi": None, "ari": None, "n_labelled": n}
    y_true = [str(truth[i]) for i in keep]
    y_pred = labels[keep]
    nmi = float(normalized_mutual_info_score(y_true, y_pred))
    ari = float(adjusted_rand_score(y_true, y_pred))
    return {
        "nmi": nmi if math.isfinite(nmi) else None,
        "ari": ari if math.isfinite(ari) else None,
        "n_labelled": n,
    }


def representatives(
    X: np.ndarray, labels: np.ndarray, record_ids: Sequence[str], n: int = 3
) -> dict[int, list[str]]:
    """Per cluster (outliers excluded), the ``n`` member ids closest (cosine) to the cluster mean."""
    X = _as_matrix(X)
    labels = np.asarray(labels)
    if not (X.shape[0] == labels.shape[0] == len(record_ids)):
        raise ValueError("X, labels and record_ids must have the same length")
    unit = _unit_rows(X)
    out: dict[int, list[str]] = {}
    for c in sorted(int(v) for v in np.unique(labels) if v != -1):
        members = np.flatnonzero(labels == c)
        mean = unit[members].mean(axis=0)
        norm = np.linalg.norm(mean)
        sims = unit[members] @ (mean / norm) if norm > 1e-12 else np.zeros(members.size)
        order = np.lexsort((members, -sims))  # best similarity first, then input order
        out[c] = [str(record_ids[members[j]]) for j in order[:n]]
    return out


def distances_to_centroid(X: np.ndarray, labels: np.ndarray, centroids: np.ndarray | None) -> np.ndarray:
    """Cosine distance of each row to its cluster's centroid (row ``labels[i]`` of ``centroids``).

    NaN for outliers (-1) and when there are no centroids; 1.0 when either vector is zero.
    """
    X = _as_matrix(X)
    labels = np.asarray(labels, dtype=np.int64)
    out = np.full(X.shape[0], np.nan, dtype=np.float64)
    if centroids is None or X.shape[0] == 0:
        return out
    C = np.asarray(centroids, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] == 0:
        return out
    valid = (labels >= 0) & (labels < C.shape[0])
    if labels.max(initial=-1) >= C.shape[0]:
        raise ValueError(f"label {labels.max()} has no centroid ({C.shape[0]} centroids)")
    ux = _unit_rows(X[valid])
    uc = _unit_rows(C)[labels[valid]]
    out[valid] = 1.0 - np.clip(np.einsum("ij,ij->i", ux, uc), -1.0, 1.0)
    return out


def top_terms(
    texts_by_cluster: Mapping[int, Sequence[str]], n: int = 8
) -> dict[int, list[tuple[str, float]]]:
    """Class-based TF-IDF (BERTopic's c-TF-IDF) top terms per cluster.

    All texts of a cluster form one document. Counts of unigrams and bigrams (English stop words removed,
    lower-cased) are normalised per class (``tf``); ``idf = log(1 + A / f_t)`` with ``A`` the average
    number of words per class and ``f_t`` the frequency of term t across all classes. Returns the ``n``
    best ``(term, score)`` per cluster (ties alphabetical); clusters without usable text get ``[]``.
    """
    keys = list(texts_by_cluster)
    out: dict[int, list[tuple[str, float]]] = {c: [] for c in keys}
    docs = [" ".join(t for t in texts_by_cluster[c] if isinstance(t, str)) for c in keys]
    counted = [Counter(_ngrams(d)) for d in docs]
    terms = sorted(set().union(*counted))
    if not terms:  # no text, or only stop words / one-letter tokens
        return out
    column = {t: j for j, t in enumerate(terms)}
    words_per_class = np.array([float(sum(c.values())) for c in counted])
    avg_words = float(words_per_class.mean())
    term_freq = np.zeros(len(terms))
    for c in counted:
        for t, k in c.items():
            term_freq[column[t]] += k
    idf = np.log(1.0 + avg_words / np.where(term_freq > 0, term_freq, 1.0))
    for row, c in enumerate(keys):
        if not counted[row]:
            continue
        cols = np.fromiter((column[t] for t in counted[row]), dtype=np.int64, count=len(counted[row]))
        scores = np.fromiter(counted[row].values(), dtype=np.float64, count=cols.size) / words_per_class[row] \
            * idf[cols]
        ranked = sorted(range(cols.size), key=lambda j: (-scores[j], terms[cols[j]]))[:n]
        out[c] = [(terms[cols[j]], float(scores[j])) for j in ranked if scores[j] > 0]
    return out


#: scikit-learn's ``CountVectorizer`` default tokens: two or more word characters
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def _ngrams(doc: str) -> list[str]:
    """The unigrams and bigrams ``CountVectorizer(stop_words="english", ngram_range=(1, 2))`` counts: lower-cased
    tokens, stop words removed first, then each pair of neighbours left."""
    words = [w for w in _TOKEN.findall(doc.lower()) if w not in ENGLISH_STOP_WORDS]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]


def label_summary(labels: np.ndarray, truth: Sequence[str | None]) -> dict[int, dict[str, int]]:
    """Per cluster id (outliers -1 included when present), counts of truth labels, most common first.

    Missing truth values (None, NaN, blank) are not counted; a cluster with no labelled member maps to ``{}``.
    """
    labels = np.asarray(labels)
    if len(truth) != labels.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels but {len(truth)} truth values")
    counters: dict[int, Counter[str]] = {int(c): Counter() for c in np.unique(labels)}
    for lab, t in zip(labels.tolist(), truth, strict=True):
        if not is_missing_label(t):
            counters[int(lab)][str(t)] += 1
    return {
        c: dict(sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0]))) for c, cnt in sorted(counters.items())
    }
