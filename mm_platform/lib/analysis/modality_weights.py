"""Modality weights from evidence, and the choice of a fusion strategy by a criterion comparable across spaces.

No labels are needed. Everything is computed on one seeded sample of at most ``max_rows`` records, so the cost is
bounded whatever the corpus size (``O(max_rows^2 * d)`` per modality).

**Agreement.** For every modality we build each sampled record's ``k`` nearest neighbours (cosine). For a pair of
modalities ``(a, b)``, on the records that have both, the mean overlap ``|N_a(i) & N_b(i)| / k`` is compared with
chance ``k / (n - 1)``: ``gain_ab = overlap - chance``. A gain is *significant* when it exceeds three standard
errors of the chance overlap (``margin``). Neighbours tied with the ``k``-th count too (``ties``, default on:
:mod:`mm_platform.lib.analysis.knn_ties`): a block of a few discrete fields has groups of identical rows, among which a plain
kNN picks arbitrarily and so under-counts the agreement.

**Reliability.** Pairwise gains are symmetric, so with two informative views they cannot say which is cleaner. With
three or more views they can: if every view is a noisy copy of one latent structure, ``gain_ab ~ r_a * r_b`` (as in
Spearman's one-factor model / the triad method of multi-view reliability), hence
``r_a^2 = sum gain_ab * gain_ac / sum gain_bc`` over partner pairs ``(b, c)`` that agree significantly. A modality
without such a triad falls back to its mean significant gain (``r_a^2 ~ gain``). A modality that agrees with no
other beyond ``margin`` has reliability 0 and weight 0 (noise, filler text).

**Weight.** Fused vectors add ``w_m * cos_m``. Modalities' cosines have very different spreads (a 1,280-d image
vector with much background has a narrow cosine range), so the weight also divides by the standard deviation of the
modality's cosines on the sample: ``w_m = r_m / sd_m`` (standardised similarities, weighted by reliability), then
rescaled so the non-zero weights have mean 1 (like uniform weights).

**Strategy choice** (:func:`select_partition`). Candidate partitions (uniform fusion, evidence fusion, each single
modality, ...) are scored on the *same* graphs: the reliability-weighted mean over modalities of the modularity of
the partition on that modality's kNN graph. Unlike a silhouette, which is measured in each candidate's own space and
so cannot be compared across spaces, this asks one question of every candidate: how well does it cut along the
neighbourhoods that the informative modalities agree on. Records a candidate leaves out (a single modality's
clustering covers only the records that have it) count as singletons, so low coverage is penalised. With labels, the
choice is by NMI on the labelled records instead (the unsupervised score is still recorded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mm_platform.lib.vectors.fusion import l2_normalize, modality_order
from mm_platform.lib.analysis.knn_ties import tie_neighbourhoods, tie_overlap


@dataclass
class Graph:
    """kNN graph of one modality on the evidence sample: ``rows`` index the corpus, ``nbrs`` index ``rows``."""

    rows: np.ndarray
    nbrs: np.ndarray


@dataclass
class ModalityWeights:
    """Weights per modality plus the evidence that produced them."""

    weights: dict[str, float]
    agreement: dict[str, float]
    pair_overlap: dict[str, float]
    zeroed: list[str] = field(default_factory=list)
    k: int = 0
    reason: str = ""
    reliability: dict[str, float] = field(default_factory=dict)
    cosine_sd: dict[str, float] = field(default_factory=dict)
    margin: float = 0.0
    sample_rows: int = 0
    graphs: dict[str, Graph] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "agreement": self.agreement,
            "pair_overlap": self.pair_overlap,
            "reliability": self.reliability,
            "cosine_sd": self.cosine_sd,
            "zeroed": self.zeroed,
            "k": self.k,
            "margin": round(self.margin, 4),
            "sample_rows": self.sample_rows,
            "reason": self.reason,
        }


def _present(X: np.ndarray) -> np.ndarray:
    return np.linalg.norm(X, axis=1) > 1e-12


def _knn_from_sim(S: np.ndarray, k: int) -> np.ndarray:
    S = np.array(S, dtype=np.float32, copy=True)
    np.fill_diagonal(S, -np.inf)
    n = S.shape[1]
    return np.argpartition(S, n - k, axis=1)[:, n - k :]


def knn_indices(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours (cosine, self excluded) of every row; shape ``(n, k)``."""
    U = l2_normalize(np.asarray(X, dtype=np.float32))
    n = U.shape[0]
    if n < 2:
        return np.zeros((n, 0), dtype=np.int64)
    return _knn_from_sim(U @ U.T, min(k, n - 1))


def _overlap(ia: np.ndarray, ib: np.ndarray) -> float:
    """Mean fraction of shared neighbours of two ``(n, k)`` neighbour index arrays over the same rows."""
    n, k = ia.shape
    if k == 0:
        return 0.0
    a = np.zeros((n, n), dtype=bool)
    a[np.repeat(np.arange(n), k), ia.ravel()] = True
    shared = a[np.repeat(np.arange(n), k), ib.ravel()].reshape(n, k).sum(axis=1)
    return float(shared.mean()) / k


def knn_overlap(A: np.ndarray, B: np.ndarray, k: int) -> float:
    """Mean fraction of shared ``k``-nearest neighbours of each row in ``A`` and in ``B`` (same rows)."""
    return _overlap(knn_indices(A, k), knn_indices(B, k))


def _offdiag_sd(S: np.ndarray) -> float:
    """Standard deviation of the off-diagonal entries of a square similarity matrix, without copying it."""
    n = S.shape[0]
    d = np.diagonal(S).astype(np.float64)
    total, sq = float(S.sum(dtype=np.float64)) - d.sum(), float(np.square(S, dtype=np.float64).sum()) - (d**2).sum()
    m = n * (n - 1)
    return float(np.sqrt(max(sq / m - (total / m) ** 2, 0.0)))


def _pair_knn(m: str, rows: np.ndarray, k: int, sims: dict, pres: dict, graphs: dict) -> np.ndarray:
    """kNN of modality ``m`` among the sample ``rows`` (reusing its graph when ``rows`` are all its rows)."""
    g = graphs.get(m)
    if g is not None and g.nbrs.shape[1] == k and rows.size == int(pres[m].sum()):
        return g.nbrs
    return _knn_from_sim(sims[m][np.ix_(rows, rows)], k)


def _rows_sim(sims: dict, pres: dict, m: str, rows: np.ndarray) -> np.ndarray:
    """Similarities of modality ``m`` among the sample ``rows`` (no copy when they are all its rows)."""
    return sims[m] if rows.size == pres[m].size else sims[m][np.ix_(rows, rows)]


def _reliability(names: list[str], gain: dict[tuple[str, str], float], margin: float) -> dict[str, float]:
    """Squared reliability per modality from the triads of significant pairwise gains (see module doc)."""
    def g(a: str, b: str) -> float | None:
        return gain.get((a, b), gain.get((b, a)))

    out: dict[str, float] = {}
    for a in names:
        partners = [b for b in names if b != a and (g(a, b) or 0.0) > margin]
        num = den = 0.0
        for i, b in enumerate(partners):
            for c in partners[i + 1 :]:
                gbc = g(b, c)
                if gbc is not None and gbc > margin:
                    num += g(a, b) * g(a, c)
                    den += gbc
        if den > 0:
            out[a] = num / den
        elif partners:
            out[a] = float(np.mean([g(a, b) for b in partners]))
        else:
            out[a] = 0.0
    return out


def evidence_weights(
    blocks: Mapping[str, np.ndarray],
    k: int = 10,
    min_rows: int = 8,
    margin: float | None = None,
    max_rows: int = 1000,
    seed: int = 0,
    z: float = 3.0,
    ties: bool = True,
) -> ModalityWeights:
    """Unsupervised weights from kNN agreement between modalities (see the module doc).

    Args:
        blocks: modality -> ``(n, d_m)`` embeddings of the same ``n`` records; an all-zero row means absent.
        k: neighbourhood size.
        min_rows: pairs sharing fewer sampled records are skipped.
        margin: gain over chance needed to count as agreement; ``None`` = three standard errors of chance.
        max_rows: records sampled (seeded) for all the evidence, bounding the cost.
        z: standard errors of the chance overlap a gain must exceed when ``margin`` is None (3; 5 and 8 were
            tried on the real corpora and changed nothing for the better).
        ties: neighbours tied with the ``k``-th count too (:mod:`mm_platform.lib.analysis.knn_ties`): a block of discrete
            fields has groups of identical rows, among which a plain kNN picks arbitrarily. On the real corpora
            it moved the unsupervised choice on asterisk from evidence fusion (NMI 0.447) to text (0.520).
    """
    names = list(modality_order(list(blocks)))
    if len(names) == 0:
        raise ValueError("evidence_weights needs at least one modality")
    mats = {m: np.asarray(blocks[m], dtype=np.float32) for m in names}
    n_rows = {m: mats[m].shape[0] for m in names}
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"modality blocks have different row counts: {n_rows}")
    n = next(iter(n_rows.values()))
    rng = np.random.default_rng(seed)
    sample = np.arange(n) if n <= max_rows else np.sort(rng.choice(n, size=max_rows, replace=False))
    sims: dict[str, np.ndarray] = {}
    pres: dict[str, np.ndarray] = {}
    graphs: dict[str, Graph] = {}
    sd: dict[str, float] = {}
    for m in names:
        X = mats[m][sample]
        pres[m] = _present(X)
        U = l2_normalize(X)
        sims[m] = U @ U.T
        rows = np.flatnonzero(pres[m])
        if rows.size > 2:
            S = sims[m] if rows.size == sample.size else sims[m][np.ix_(rows, rows)]
            graphs[m] = Graph(sample[rows], _knn_from_sim(S, min(k, rows.size - 1)))
            sd[m] = round(_offdiag_sd(S), 6)
    if len(names) == 1:
        return ModalityWeights({names[0]: 1.0}, {names[0]: 0.0}, {}, [], k, "single modality: nothing to compare",
                               {names[0]: 1.0}, sd, 0.0, int(sample.size), graphs)
    pair: dict[str, float] = {}
    gain: dict[tuple[str, str], float] = {}
    margins: list[float] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows = np.flatnonzero(pres[a] & pres[b])
            if rows.size < min_rows:
                continue
            kk = min(k, rows.size - 1)
            if ties:  # tie-aware neighbourhoods (discrete fields): mod:`mm_platform.lib.analysis.knn_ties`
                ov, p, kk_eff = tie_overlap(*(tie_neighbourhoods(_rows_sim(sims, pres, m, rows), kk) for m in (a, b)))
                kk = max(int(round(kk_eff)), 1)
            else:
                ov = _overlap(_pair_knn(a, rows, kk, sims, pres, graphs), _pair_knn(b, rows, kk, sims, pres, graphs))
                p = kk / (rows.size - 1)
            pair[f"{a}|{b}"] = round(ov, 4)
            gain[(a, b)] = ov - p
            margins.append(z * np.sqrt(p * (1 - p) / (kk * rows.size)))
    agreement = {m: round(float(np.mean([v for (a, b), v in gain.items() if m in (a, b)] or [0.0])), 4)
                 for m in names}
    compared = [m for m in names if any(m in ab for ab in gain)]
    thr = float(margin) if margin is not None else (max(margins) if margins else 0.0)
    if not compared:
        return ModalityWeights({m: 1.0 for m in names}, agreement, pair, [], k,
                               "no pair of modalities shares enough records: uniform", {}, sd, thr,
                               int(sample.size), graphs)
    rel = _reliability(compared, gain, thr)
    if not any(v > 0 for v in rel.values()):
        return ModalityWeights({m: 1.0 for m in names}, agreement, pair, [], k,
                               "no modality agrees with another beyond chance: uniform",
                               {m: round(v, 4) for m, v in rel.items()}, sd, thr, int(sample.size), graphs)
    raw = {m: float(np.sqrt(max(rel[m], 0.0)) / max(sd.get(m, 1.0), 1e-6)) for m in compared}
    pos = [m for m in compared if raw[m] > 0]
    total = sum(raw.values())
    weights = {m: (round(float(raw[m] / total * len(pos)), 4) if m in compared else 1.0) for m in names}
    zeroed = [m for m in names if weights[m] == 0.0]
    reason = "kNN agreement above chance (triad reliability / cosine spread)"
    if zeroed:
        reason += "; weight 0 (no agreement beyond chance): " + ", ".join(zeroed)
    return ModalityWeights(weights, agreement, pair, zeroed, k, reason,
                           {m: round(max(v, 0.0), 4) for m, v in rel.items()}, sd, thr, int(sample.size), graphs)


def graph_modularity(labels: np.ndarray, graph: Graph) -> float:
    """Newman modularity of a partition (``labels`` over the whole corpus, ``-1`` = unassigned: a singleton) on a
    symmetrised kNN graph."""
    lab = np.asarray(labels)[graph.rows].astype(np.int64)
    n, k = graph.nbrs.shape
    if n < 3 or k == 0:
        return 0.0
    single = lab < 0
    lab = np.where(single, lab.max(initial=0) + 1 + np.arange(n), lab)
    src = np.repeat(np.arange(n), k)
    dst = graph.nbrs.ravel()
    inside = float(np.mean(lab[src] == lab[dst]))  # A = K + K^T: both directions count the same
    indeg = np.bincount(dst, minlength=n)
    deg = k + indeg
    _, inv = np.unique(lab, return_inverse=True)
    d_c = np.bincount(inv, weights=deg)
    return inside - float(np.sum((d_c / (2.0 * n * k)) ** 2))


@dataclass
class StrategyChoice:
    best: str
    scores: dict[str, float | None]
    reason: str
    per_modality: dict[str, dict[str, float]] = field(default_factory=dict)
    label_scores: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"best": self.best, "scores": self.scores, "reason": self.reason,
                "per_modality": self.per_modality, "label_nmi": self.label_scores}


def select_partition(
    partitions: Mapping[str, np.ndarray],
    evidence: ModalityWeights,
    labels: Sequence[str | None] | None = None,
    min_labelled: int = 20,
) -> StrategyChoice:
    """Pick the best candidate partition (each an ``(n,)`` int array over the corpus, ``-1`` = not covered).

    Unsupervised score: the reliability-weighted mean over modalities of the partition's modularity on that
    modality's kNN graph (uniform over the graphs when no reliability is known). With at least ``min_labelled``
    labelled records of two or more classes, the choice is by NMI on them; ties go to the earlier candidate.
    """
    if not partitions:
        raise ValueError("select_partition needs at least one candidate")
    rel = {m: evidence.reliability.get(m, 0.0) for m in evidence.graphs}
    if not any(v > 0 for v in rel.values()):
        rel = {m: 1.0 for m in evidence.graphs}
    per: dict[str, dict[str, float]] = {}
    scores: dict[str, float | None] = {}
    for name, lab in partitions.items():
        q = {m: graph_modularity(lab, g) for m, g in evidence.graphs.items() if rel.get(m, 0) > 0}
        per[name] = {m: round(v, 4) for m, v in q.items()}
        tot = sum(rel[m] for m in q)
        scores[name] = round(sum(rel[m] * v for m, v in q.items()) / tot, 4) if tot > 0 else None
    label_scores = _label_nmi(partitions, labels, min_labelled)
    if label_scores:
        best = max(label_scores, key=lambda c: (label_scores[c], -list(partitions).index(c)))
        reason = (f"labels: highest NMI on {sum(1 for t in labels if t is not None)} labelled records "
                  f"({label_scores[best]:.3f}); unsupervised score {scores[best]}")
        return StrategyChoice(best, scores, reason, per, label_scores)
    scored = {c: v for c, v in scores.items() if v is not None}
    if not scored:
        best = next(iter(partitions))
        return StrategyChoice(best, scores, "no candidate could be scored; kept the first", per)
    best = max(scored, key=lambda c: (scored[c], -list(partitions).index(c)))
    reason = (f"highest reliability-weighted modularity on the modalities' kNN graphs ({scored[best]}; "
              f"graphs weighted {', '.join(f'{m}={v:.3g}' for m, v in rel.items() if v > 0)})")
    return StrategyChoice(best, scores, reason, per)


def _label_nmi(partitions: Mapping[str, np.ndarray], labels: Sequence[str | None] | None,
               min_labelled: int) -> dict[str, float]:
    if labels is None:
        return {}
    from sklearn.metrics import normalized_mutual_info_score

    from mm_platform.lib.analysis.clustering import is_missing_label

    known = np.array([not is_missing_label(t) for t in labels], dtype=bool)
    truth = [str(t) for t, ok in zip(labels, known, strict=True) if ok]
    if known.sum() < min_labelled or len(set(truth)) < 2:
        return {}
    return {c: round(float(normalized_mutual_info_score(truth, np.asarray(p)[known])), 4)
            for c, p in partitions.items()}


def silhouette_score_of(X: np.ndarray, n_clusters: int, seed: int = 0, max_rows: int = 2000) -> float | None:
    """Cosine silhouette of a k-means clustering of the (present) rows of ``X``; None when undefined."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    U = l2_normalize(np.asarray(X, dtype=np.float32))
    U = U[_present(U)]
    if U.shape[0] > max_rows:
        U = U[np.random.default_rng(seed).choice(U.shape[0], size=max_rows, replace=False)]
    if U.shape[0] <= n_clusters or n_clusters < 2:
        return None
    labels = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(U)
    if len(set(labels.tolist())) < 2:
        return None
    return float(silhouette_score(U, labels, metric="cosine"))


def select_strategy(
    candidates: Mapping[str, np.ndarray], n_clusters: int, seed: int = 0, coverage: Mapping[str, float] | None = None
) -> StrategyChoice:
    """Older criterion, kept for comparison in the bench: the candidate embedding with the highest silhouette
    (times row coverage). Silhouettes are measured in each candidate's own space, so they are not comparable
    across spaces: prefer :func:`select_partition`."""
    if not candidates:
        raise ValueError("select_strategy needs at least one candidate")
    scores: dict[str, float | None] = {}
    for name, X in candidates.items():
        s = silhouette_score_of(X, n_clusters, seed=seed)
        scores[name] = None if s is None else round(s * (coverage or {}).get(name, 1.0), 4)
    scored = {k: v for k, v in scores.items() if v is not None}
    if not scored:
        best = next(iter(candidates))
        return StrategyChoice(best, scores, "no candidate could be scored; kept the first")
    best = max(scored, key=lambda k: scored[k])
    return StrategyChoice(best, scores, f"highest cosine silhouette of k-means (k={n_clusters}): {scored[best]}")


def weights_for_strategies(names: Sequence[str], evidence: ModalityWeights) -> dict[str, dict[str, float]]:
    """Weight sets for the standard candidates: uniform, evidence, and each single modality."""
    out = {"early_uniform": {m: 1.0 for m in names}, "early_evidence": dict(evidence.weights)}
    for m in names:
        out[f"single_{m}"] = {x: (1.0 if x == m else 0.0) for x in names}
    return out
