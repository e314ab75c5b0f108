"""Cluster names a person would write: distinctive terms, no filler, no near-repeats.

BERTopic's recipe, on our own pieces:

1. **Candidates.** c-TF-IDF over unigrams and bigrams (:func:`mm_platform.lib.analysis.clustering.top_terms`), English
   stop words removed, plus *corpus-frequent* words removed: a word used by more than ``max_cluster_share`` of
   the clusters (with at least three clusters) or in more than ``max_doc_share`` of all texts says nothing about
   any one cluster ("new", "matters", "adjust" in notes that repeat the same phrases everywhere): common over
   the corpus and no more common in any cluster than elsewhere (lift under 1.5), or in over half the texts. A bigram
   with such a word goes too ("mug new").
2. **Maximal marginal relevance.** From the candidates, pick terms one by one maximising
   ``0.7 * relevance(term, cluster) - 0.3 * max similarity(term, already picked)``. With an embedding
   function (the text encoder) relevance is 0.7 x the c-TF-IDF score (scaled to [0, 1]: distinctive for
   this cluster) plus 0.3 x the cosine between the term's embedding and the cluster's centre (mean text embedding of its
   members: typical of it), and similarity the larger of the terms' cosine and their word overlap (shared words over the shorter term's);
   without one, relevance is the c-TF-IDF score alone and similarity the word overlap, so "kangaroo" and
   "red kangaroo" are not both picked.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mm_platform.lib.analysis.clustering import top_terms

_WORD = re.compile(r"(?u)\b\w\w+\b")


def corpus_frequent_words(texts_by_cluster: Mapping[int, Sequence[str]], max_lift: float = 1.5,
                          min_doc_share: float = 0.05, max_doc_share: float = 0.5) -> set[str]:
    """Words that say nothing about any one cluster: used in at least ``min_doc_share`` of all texts but
    concentrated in no cluster (the best cluster's share of texts using the word is under ``max_lift`` times its
    share over the corpus), or used in more than ``max_doc_share`` of all texts. Needs >= 2 clusters and >= 10
    texts; else nothing is frequent."""
    in_docs: Counter[str] = Counter()
    best_rate: dict[str, float] = {}
    n_docs = n_clusters = 0
    for texts in texts_by_cluster.values():
        docs = [set(_WORD.findall(t.lower())) for t in texts if isinstance(t, str) and t.strip()]
        if not docs:
            continue
        n_clusters += 1
        n_docs += len(docs)
        local: Counter[str] = Counter(w for d in docs for w in d)
        in_docs.update(local)
        for w, c in local.items():
            best_rate[w] = max(best_rate.get(w, 0.0), c / len(docs))
    if n_clusters < 2 or n_docs < 10:
        return set()
    out = set()
    for w, c in in_docs.items():
        share = c / n_docs
        if share > max_doc_share or (share >= min_doc_share and best_rate[w] < max_lift * share):
            out.add(w)
    return out


def _overlap(a: str, b: str) -> float:
    """Shared words over the shorter term's words: 1 when one term is inside the other ("mug", "ceramic mug")."""
    sa, sb = set(a.split()), set(b.split())
    return len(sa & sb) / min(len(sa), len(sb)) if sa and sb else 0.0


def mmr(candidates: Sequence[str], relevance: np.ndarray, similarity: np.ndarray, n: int,
        diversity: float = 0.5) -> list[str]:
    """Maximal marginal relevance: ``n`` candidates, each maximising
    ``(1 - diversity) * relevance - diversity * max similarity to those already picked``."""
    picked: list[int] = []
    left = list(range(len(candidates)))
    while left and len(picked) < n:
        fresh = [j for j in left if all(similarity[j, p] < 0.99 for p in picked)]  # no "desk / lamp / desk lamp"
        if not fresh:
            break
        left = fresh
        def gain(j: int) -> float:
            redundancy = max((similarity[j, p] for p in picked), default=0.0)
            return (1 - diversity) * relevance[j] - diversity * redundancy
        best = max(left, key=lambda j: (gain(j), -j))
        picked.append(best)
        left.remove(best)
    return [candidates[j] for j in picked]


def cluster_names(
    texts_by_cluster: Mapping[int, Sequence[str]],
    n_words: int = 3,
    n_candidates: int = 20,
    diversity: float = 0.3,
    embed: Callable[[list[str]], np.ndarray] | None = None,
    centres: Mapping[int, np.ndarray] | None = None,
) -> dict[int, list[str]]:
    """cluster -> up to ``n_words`` name terms (see the module doc). ``embed`` maps strings to vectors (the text
    encoder); ``centres`` gives each cluster's centre in that space (else the mean of its texts' embeddings)."""
    frequent = corpus_frequent_words(texts_by_cluster)
    ranked = top_terms(texts_by_cluster, n=n_candidates * 3)
    candidates: dict[int, list[tuple[str, float]]] = {}
    for c, terms in ranked.items():
        cands = [(t, s) for t, s in terms
                 if not set(t.split()) & frequent and len(set(t.split())) == len(t.split())][:n_candidates]
        candidates[c] = cands or terms[:n_candidates]  # everything is frequent: the usual terms, not no name
    vectors = _term_vectors(embed, candidates, texts_by_cluster, centres)
    out: dict[int, list[str]] = {}
    for c, cands in candidates.items():
        if not cands:
            out[c] = []
            continue
        words = [t for t, _ in cands]
        scores = np.array([s for _, s in cands], dtype=np.float64)
        relevance = scores / scores.max() if scores.max() > 0 else scores
        similarity = np.array([[_overlap(a, b) for b in words] for a in words])
        if vectors is not None and c in vectors[1]:
            E = vectors[0][[vectors[2][w] for w in words]]
            centre = vectors[1][c]
            if E.shape[1] == centre.shape[0]:
                relevance = 0.7 * relevance + 0.3 * (E @ centre)
                similarity = np.maximum(similarity, E @ E.T)
        out[c] = mmr(words, relevance, similarity, n_words, diversity)
    return out


def _term_vectors(embed: Callable[[list[str]], np.ndarray] | None, candidates: Mapping[int, Sequence[tuple[str, float]]],
                  texts_by_cluster: Mapping[int, Sequence[str]], centres: Mapping[int, np.ndarray] | None,
                  ) -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, int]] | None:
    """(unit vectors of every candidate term, each cluster's unit centre, term -> row), from one ``embed`` call
    for all clusters' terms (one round trip to the encoder, not one per cluster) plus one per cluster whose
    centre is not given (the mean of its texts' embeddings). None without an encoder or when it fails: names
    then rank by c-TF-IDF and word overlap alone, never fail."""
    if embed is None:
        return None
    terms = sorted({t for cands in candidates.values() for t, _ in cands})
    if not terms:
        return None
    try:
        E = _unit(np.asarray(embed(terms), dtype=np.float64))
    except (ValueError, RuntimeError):  # a failing encoder must not cost the clusters their names
        return None
    unit_centres: dict[int, np.ndarray] = {}
    for c, cands in candidates.items():
        if not cands:
            continue
        centre = centres.get(c) if centres is not None else None
        try:
            if centre is None:
                texts = [t for t in texts_by_cluster[c] if isinstance(t, str) and t.strip()][:64]
                if not texts:
                    continue
                centre = _unit(np.asarray(embed(texts), dtype=np.float64)).mean(axis=0)
            unit_centres[c] = _unit(np.asarray(centre, dtype=np.float64)[None, :])[0]
        except (ValueError, RuntimeError):  # the encoder failed on its texts: this cluster has no centre
            continue
    return E, unit_centres, {t: i for i, t in enumerate(terms)}


def _unit(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    return np.where(norms > 0, X / np.where(norms > 0, norms, 1.0), 0.0)
