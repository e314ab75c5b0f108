"""Tests for mm_platform.lib.analysis.clustering on synthetic blobs and sklearn's bundled digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_blobs

from mm_platform.lib.analysis.clustering import (
    ClusterResult,
    distances_to_centroid,
    external_scores,
    hdbscan_cluster,
    kmeans_auto,
    label_summary,
    representatives,
    top_terms,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=400, centers=4, n_features=6, cluster_std=0.5, random_state=11)
    return X, y


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    return X, y


# -- K-Means ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("true_k", [3, 5])
def test_auto_k_finds_separated_blobs(true_k: int) -> None:
    X, y = make_blobs(n_samples=300, centers=true_k, n_features=5, cluster_std=0.4, random_state=true_k)
    res = kmeans_auto(X, k_max=8, seed=0)
    assert isinstance(res, ClusterResult)
    assert res.algorithm == "kmeans"
    assert res.k == true_k == res.params["chosen_k"]
    assert set(res.k_scores) == set(range(2, 9))
    assert max(res.k_scores, key=lambda k: res.k_scores[k]) == true_k
    assert res.silhouette == pytest.approx(res.k_scores[true_k])
    assert res.centroids is not None and res.centroids.shape == (true_k, 5)
    assert external_scores(res.labels, [str(v) for v in y])["nmi"] == pytest.approx(1.0)


def test_labels_sorted_by_size_and_reproducible(blobs) -> None:  # type: ignore[no-untyped-def]
    X, _ = blobs
    X = X[:370]  # unequal cluster sizes
    a = kmeans_auto(X, k_max=6, seed=3)
    b = kmeans_auto(X, k_max=6, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centroids, b.centroids)
    assert a.k_scores == b.k_scores
    sizes = np.bincount(a.labels)
    assert list(sizes) == sorted(sizes, reverse=True)


def test_float32_unit_vectors_like_fused_rows() -> None:
    X, y = make_blobs(n_samples=240, centers=3, n_features=16, cluster_std=1.0, random_state=2)
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    res = kmeans_auto(X, k_max=6)
    assert res.k == 3 and res.centroids is not None and res.centroids.shape == (3, 16)
    assert external_scores(res.labels, [str(v) for v in y])["nmi"] > 0.95
    d = distances_to_centroid(X, res.labels, res.centroids)
    assert d.shape == (240,) and (d >= 0).all() and (d < 0.5).all()


def test_fixed_k(blobs) -> None:  # type: ignore[no-untyped-def]
    X, _ = blobs
    res = kmeans_auto(X, k=6)
    assert res.k == 6 and res.k_scores == {} and res.params["requested_k"] == 6
    assert res.silhouette is not None and -1 <= res.silhouette <= 1


def test_digits_subset_exact_k(digits) -> None:  # type: ignore[no-untyped-def]
    X, y = digits
    keep = np.isin(y, [0, 3, 4, 6, 7])
    res = kmeans_auto(X[keep], k_max=8, seed=0)
    assert res.k == 5
    scores = external_scores(res.labels, [str(v) for v in y[keep]])
    assert scores["nmi"] > 0.85 and scores["ari"] > 0.85


def test_digits_all_classes_auto_k(digits) -> None:  # type: ignore[no-untyped-def]
    X, y = digits
    res = kmeans_auto(X, k_min=8, k_max=11, seed=0)
    assert 8 <= res.k <= 11
    scores = external_scores(res.labels, [str(v) for v in y])
    assert scores["nmi"] > 0.65
    assert scores["n_labelled"] == len(y)


def test_minibatch_path_predicts_every_row(blobs) -> None:  # type: ignore[no-untyped-def]
    X, y = blobs
    res = kmeans_auto(X, k_max=6, minibatch_threshold=100, fit_sample_size=150, seed=1)
    again = kmeans_auto(X, k_max=6, minibatch_threshold=100, fit_sample_size=150, seed=1)
    assert res.algorithm == "minibatch_kmeans"
    assert res.params["fit_sample_size"] == 150
    assert res.labels.shape == (400,) and res.k == 4
    np.testing.assert_array_equal(res.labels, again.labels)
    assert external_scores(res.labels, [str(v) for v in y])["nmi"] > 0.95


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_inputs_single_cluster(n: int) -> None:
    res = kmeans_auto(np.ones((n, 3)) * np.arange(n)[:, None])
    assert res.labels.shape == (n,)
    assert (res.labels == 0).all()
    assert res.k == (1 if n else 0)
    assert res.silhouette is None


def test_identical_rows_single_cluster() -> None:
    res = kmeans_auto(np.tile([1.0, 2.0, 3.0], (50, 1)))
    assert res.k == 1 and (res.labels == 0).all() and res.silhouette is None
    assert "degenerate" in res.params


def test_few_distinct_rows_caps_k() -> None:
    X = np.array([[0.0, 1.0]] * 10 + [[1.0, 0.0]] * 10 + [[1.0, 1.0]] * 10)
    res = kmeans_auto(X, k_max=12)
    assert res.k == 3 and res.params["k_candidates"] == [2, 3]
    fixed = kmeans_auto(X, k=10)
    assert fixed.k == 3


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        kmeans_auto(np.array([[np.nan, 1.0], [1.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(ValueError):
        kmeans_auto(np.ones((5, 2)), k=0)


# -- HDBSCAN ---------------------------------------------------------------------------------------------


def test_hdbscan_marks_noise() -> None:
    centers = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]
    X, y = make_blobs(n_samples=300, centers=centers, n_features=2, cluster_std=0.5, random_state=5)
    rng = np.random.default_rng(0)
    noise = rng.uniform(-30, 40, size=(20, 2))
    noise = noise[np.min(np.linalg.norm(noise[:, None] - X[None], axis=2), axis=1) > 8]
    data = np.vstack([X, noise])
    res = hdbscan_cluster(data, min_cluster_size=10)
    assert res.algorithm == "hdbscan" and res.k == 3
    assert (res.labels[len(X) :] == -1).all() and len(noise) > 0
    assert res.n_outliers >= len(noise)
    assert external_scores(res.labels[: len(X)], [str(v) for v in y])["nmi"] > 0.9
    assert res.centroids is not None and res.centroids.shape == (3, 2)
    for c in range(3):
        np.testing.assert_allclose(res.centroids[c], data[res.labels == c].mean(axis=0))
    d = distances_to_centroid(data, res.labels, res.centroids)
    assert np.isnan(d[res.labels == -1]).all() and not np.isnan(d[res.labels >= 0]).any()


def test_hdbscan_too_few_rows() -> None:
    res = hdbscan_cluster(np.random.default_rng(0).normal(size=(3, 4)), min_cluster_size=5)
    assert res.k == 0 and (res.labels == -1).all() and res.silhouette is None


# -- scores and descriptions -----------------------------------------------------------------------------


def test_external_scores_ignores_unlabelled() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0])
    truth = ["a", "a", "b", "b", None, ""]
    s = external_scores(labels, truth)
    assert s["n_labelled"] == 4 and s["nmi"] == pytest.approx(1.0) and s["ari"] == pytest.approx(1.0)
    few = external_scores(labels, [None, None, "a", None, float("nan"), " "])
    assert few == {"nmi": None, "ari": None, "n_labelled": 1}
    single = external_scores(np.array([0, 0, 0]), ["a", "a", "a"])
    assert all(v is None or not (isinstance(v, float) and math.isnan(v)) for v in single.values())


def test_representatives_are_closest_members() -> None:
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.0, 1.0], [0.1, 0.9], [5.0, 5.0]])
    labels = np.array([0, 0, 0, 1, 1, -1])
    ids = ["a", "b", "c", "d", "e", "noise"]
    reps = representatives(X, labels, ids, n=2)
    assert set(reps) == {0, 1}
    assert reps[0] == ["b", "a"]  # b is nearest the mean direction of {a, b, c}
    assert set(reps[1]) == {"d", "e"}
    for c, members in reps.items():
        assert all(labels[ids.index(r)] == c for r in members)


def test_representatives_on_blobs_are_members(blobs) -> None:  # type: ignore[no-untyped-def]
    X, _ = blobs
    res = kmeans_auto(X, k=4)
    ids = [f"r{i}" for i in range(len(X))]
    reps = representatives(X, res.labels, ids, n=3)
    assert set(reps) == set(range(4))
    for c, members in reps.items():
        assert len(members) == 3
        assert all(res.labels[int(r[1:])] == c for r in members)


def test_distances_to_centroid() -> None:
    X = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = np.array([0, 0, -1])
    d = distances_to_centroid(X, labels, np.array([[1.0, 0.0]]))
    np.testing.assert_allclose(d[:2], [0.0, 1.0], atol=1e-12)
    assert math.isnan(d[2])
    assert np.isnan(distances_to_centroid(X, labels, None)).all()


def test_top_terms_picks_distinctive_words() -> None:
    texts = {
        0: ["the cat purrs on the sofa", "a cat and a kitten purr", "cat food for the kitten", "pet photo"],
        1: [
            "the rocket launch was delayed",
            "rocket engines and orbit",
            "launch window for orbit",
            "pet photo",
        ],
        2: [],
        3: ["the and of"],
    }
    terms = top_terms(texts, n=3)
    assert terms[2] == [] and terms[3] == []
    words0 = [t for t, _ in terms[0]]
    words1 = [t for t, _ in terms[1]]
    assert words0[0] == "cat" and words1[0] in {"rocket", "launch", "orbit"}
    assert {"rocket", "orbit", "launch"} & set(words1)
    assert not {"pet", "photo", "the"} & set(words0 + words1)  # shared/stop words rank low or vanish
    scores = [s for _, s in terms[0]]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert any(" " in t for t, _ in top_terms(texts, n=50)[0])  # bigrams present


def test_top_terms_ctfidf_formula() -> None:
    texts = {0: ["apple apple banana"], 1: ["banana cherry"]}
    terms = dict(top_terms(texts, n=10)[0])
    # words per class: 0 -> 3 unigrams + 2 bigrams = 5; 1 -> 2 + 1 = 3; average 4
    avg = 4.0
    assert terms["apple"] == pytest.approx((2 / 5) * math.log(1 + avg / 2))
    assert terms["banana"] == pytest.approx((1 / 5) * math.log(1 + avg / 2))
    assert top_terms({}) == {} and top_terms({5: ["", "  "]}) == {5: []}


def _sklearn_top_terms(texts_by_cluster, n):
    """The reference: the same c-TF-IDF over scikit-learn's CountVectorizer counts."""
    from sklearn.feature_extraction.text import CountVectorizer

    keys = list(texts_by_cluster)
    docs = [" ".join(t for t in texts_by_cluster[c] if isinstance(t, str)) for c in keys]
    vectorizer = CountVectorizer(stop_words="english", ngram_range=(1, 2), lowercase=True)
    counts = vectorizer.fit_transform(docs).astype(np.float64).tocsr()
    terms = vectorizer.get_feature_names_out()
    words = np.asarray(counts.sum(axis=1)).ravel()
    idf = np.log(1.0 + float(words.mean()) / np.asarray(counts.sum(axis=0)).ravel())
    out = {}
    for row, c in enumerate(keys):
        lo, hi = counts.indptr[row], counts.indptr[row + 1]
        cols = counts.indices[lo:hi]
        scores = counts.data[lo:hi] / words[row] * idf[cols]
        ranked = sorted(range(cols.size), key=lambda j: (-scores[j], terms[cols[j]]))[:n]
        out[c] = [(str(terms[cols[j]]), float(scores[j])) for j in ranked if scores[j] > 0]
    return out


def test_top_terms_equal_scikit_learns_count_vectorizer_exactly() -> None:
    """Our own tokenizer (so that naming clusters does not import scikit-learn) gives the very terms and
    scores of CountVectorizer(stop_words="english", ngram_range=(1, 2)), on awkward text too."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from mm_platform.lib.analysis.clustering.stop_words import ENGLISH_STOP_WORDS as ours

    assert ours == ENGLISH_STOP_WORDS
    rng = np.random.default_rng(0)
    vocab = ["Café", "naïve", "x", "I", "the", "and", "don't", "e-mail", "42", "4k", "UPPER", "under_score",
             "東京", "rocket", "Rocket!", "orbit,", "cat's", "a", "b2b", "über", "—", "...", "\t", "co-op"]
    compared = 0
    for trial in range(20):
        texts = {c: [" ".join(rng.choice(vocab, size=rng.integers(0, 12))) for _ in range(rng.integers(0, 5))]
                 for c in range(int(rng.integers(1, 6)))}
        texts[99] = [None, "the and of"]  # not text, and only stop words
        if not any(w.lower() not in ENGLISH_STOP_WORDS and len(w) > 1 for ts in texts.values()
                   for t in ts if isinstance(t, str) for w in t.split()):
            continue
        assert top_terms(texts, n=6) == _sklearn_top_terms(texts, 6), trial
        compared += 1
    assert compared >= 15


def test_label_summary() -> None:
    labels = np.array([0, 0, 0, 1, -1, 1])
    truth = ["cat", "dog", "cat", None, "cat", ""]
    assert label_summary(labels, truth) == {-1: {"cat": 1}, 0: {"cat": 2, "dog": 1}, 1: {}}
    assert list(label_summary(labels, truth)[0]) == ["cat", "dog"]


def test_reduce_dimensions_keeps_group_structure_and_is_reproducible():
    from sklearn.datasets import load_digits

    from mm_platform.lib.analysis.clustering import reduce_dimensions

    X, y = load_digits(return_X_y=True)
    Z1, info = reduce_dimensions(X, 16, seed=0)
    Z2, _ = reduce_dimensions(X, 16, seed=0)
    assert Z1.shape == (X.shape[0], 16) and info["reduction"] == "pca16"
    assert np.allclose(np.linalg.norm(Z1, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(Z1, Z2)
    res = kmeans_auto(Z1, k=10, seed=0)
    assert external_scores(res.labels, [str(v) for v in y])["nmi"] > 0.65
    # nothing to reduce: unit rows back, unreduced
    small, info = reduce_dimensions(X[:, :8], 16)
    assert small.shape == (X.shape[0], 8) and info == {"reduction": "none"}
    assert reduce_dimensions(X, 0)[1] == {"reduction": "none"}
