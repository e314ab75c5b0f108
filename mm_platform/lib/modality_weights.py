"""Modality weights from evidence, and choice of a fusion strategy by an unsupervised criterion.

No labels are needed. For every pair of modalities ``(a, b)`` we take the records that have both, build each
record's ``k`` nearest neighbours (cosine) in ``a`` and in ``b``, and measure the mean overlap
``|N_a(i) & N_b(i)| / k``. Random neighbourhoods overlap by ``k / (n - 1)`` on average (chance). A modality's
*agreement* is the mean over its partners of ``overlap - chance``; a modality whose neighbourhoods agree with no
other modality beyond chance carries no shared structure (noise, filler text) and gets weight 0. Weights are the
positive agreements rescaled so that they sum to the number of weighted modalities (mean 1, like uniform weights).

With a single modality there is nothing to compare against: it gets weight 1 with the reason recorded.

:func:`select_strategy` scores candidate embeddings of the same records (e.g. early fusion with uniform weights,
with evidence weights, each single modality) by the cosine silhouette of a k-means clustering and returns the best,
with every score, so the choice can be recorded. Labels, when present, are used only for reporting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mm_platform.lib.fusion import l2_normalize, modality_order


@dataclass
class ModalityWeights:
    """Weights per modality plus the evidence that produced them."""

    weights: dict[str, float]
    agreement: dict[str, float]
    pair_overlap: dict[str, float]
    zeroed: list[str] = field(default_factory=list)
    k: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "agreement": self.agreement,
            "pair_overlap": self.pair_overlap,
            "zeroed": self.zeroed,
            "k": self.k,
            "reason": self.reason,
        }


def _present(X: np.ndarray) -> np.ndarray:
    return np.linalg.norm(X, axis=1) > 1e-12


def knn_indices(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` nearest neighbours (cosine, self excluded) of every row; shape ``(n, k)``."""
    U = l2_normalize(np.asarray(X, dtype=np.float32))
    n = U.shape[0]
    if n < 2:
        return np.zeros((n, 0), dtype=np.int64)
    k = min(k, n - 1)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return idx


def knn_overlap(A: np.ndarray, B: np.ndarray, k: int) -> float:
    """Mean fraction of shared ``k``-nearest neighbours of each row in ``A`` and in ``B`` (same rows)."""
    ia, ib = knn_indices(A, k), knn_indices(B, k)
    if ia.shape[1] == 0:
        return 0.0
    kk = ia.shape[1]
    shared = [len(np.intersect1d(ia[i], ib[i], assume_unique=True)) for i in range(ia.shape[0])]
    return float(np.mean(shared)) / kk


def evidence_weights(
    blocks: Mapping[str, np.ndarray],
    k: int = 10,
    min_rows: int = 8,
    margin: float = 0.02,
    max_rows: int = 2000,
    seed: int = 0,
) -> ModalityWeights:
    """Unsupervised weights from mutual kNN agreement between modalities.

    Args:
        blocks: modality -> ``(n, d_m)`` embeddings of the same ``n`` records; an all-zero row means absent.
        k: neighbourhood size.
        min_rows: pairs sharing fewer records are skipped.
        margin: agreement above chance needed for a non-zero weight.
        max_rows: rows sampled (seeded) per pair to bound the ``O(n^2)`` cost.
    """
    names = modality_order(list(blocks))
    if len(names) == 0:
        raise ValueError("evidence_weights needs at least one modality")
    if len(names) == 1:
        return ModalityWeights({names[0]: 1.0}, {names[0]: 0.0}, {}, [], k, "single modality: nothing to compare")
    rng = np.random.default_rng(seed)
    mats = {m: np.asarray(blocks[m], dtype=np.float32) for m in names}
    n = {m: mats[m].shape[0] for m in names}
    if len(set(n.values())) != 1:
        raise ValueError(f"modality blocks have different row counts: {n}")
    pres = {m: _present(mats[m]) for m in names}
    pair: dict[str, float] = {}
    gains: dict[str, list[float]] = {m: [] for m in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows = np.flatnonzero(pres[a] & pres[b])
            if rows.size < min_rows:
                continue
            if rows.size > max_rows:
                rows = np.sort(rng.choice(rows, size=max_rows, replace=False))
            kk = min(k, rows.size - 1)
            ov = knn_overlap(mats[a][rows], mats[b][rows], kk)
            gain = ov - kk / (rows.size - 1)
            pair[f"{a}|{b}"] = round(ov, 4)
            gains[a].append(gain)
            gains[b].append(gain)
    agreement = {m: (float(np.mean(g)) if g else 0.0) for m, g in gains.items()}
    compared = [m for m in names if gains[m]]
    if not compared:
        return ModalityWeights(
            {m: 1.0 for m in names}, agreement, pair, [], k, "no pair of modalities shares enough records: uniform"
        )
    raw = {m: max(0.0, agreement[m] - margin) for m in compared}
    total = sum(raw.values())
    if total <= 0:
        return ModalityWeights(
            {m: 1.0 for m in names}, agreement, pair, [], k, "no modality agrees with another beyond chance: uniform"
        )
    pos = [m for m in compared if raw[m] > 0]
    weights: dict[str, float] = {}
    for m in names:
        if m not in compared:
            weights[m] = 1.0  # never compared: keep it, do not silently drop it
        else:
            weights[m] = round(raw[m] / total * len(pos), 4)
    zeroed = [m for m in names if weights[m] == 0.0]
    reason = "mutual kNN agreement above chance"
    if zeroed:
        reason += "; weight 0 (no agreement beyond chance): " + ", ".join(zeroed)
    return ModalityWeights(weights, agreement, pair, zeroed, k, reason)


@dataclass
class StrategyChoice:
    best: str
    scores: dict[str, float | None]
    reason: str


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
    """Pick the candidate embedding with the highest silhouette (times row coverage, default 1).

    ``coverage`` penalises single-modality candidates that leave records out (fraction of records they embed).
    """
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
