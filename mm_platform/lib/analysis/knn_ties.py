"""kNN agreement between two modalities when one of them has ties (discrete fields).

A tabular block of a few discrete fields has few distinct rows (emoji: 50 distinct of 600, tuxpaint: 15 of 418,
asterisk's one duration field after L2 normalisation: 2). Among a group of 40 identical rows, "the 10 nearest
neighbours" is an arbitrary 10 of the 40, so the plain kNN overlap with another modality is diluted by chance:
if the other modality's 10 neighbours all lie in the group, only 10 x 10 / 40 = 2.5 of them are counted. The
fused cosine treats the 40 rows as equally near, so the evidence should too.

Tie-aware neighbourhoods: ``N_a(i)`` = every ``j != i`` whose similarity to ``i`` is at least the ``k``-th largest
(minus a tolerance), ``K_a(i) = |N_a(i)| >= k``. Overlap of two modalities on row ``i``:
``|N_a(i) & N_b(i)| / sqrt(K_a(i) K_b(i))``, against chance ``sqrt(K_a(i) K_b(i)) / (n - 1)`` (a random
``N_b(i)`` of that size shares ``K_a K_b / (n - 1)`` rows with ``N_a(i)``). Without ties ``K = k`` and both
reduce to the plain measure (``|N_a & N_b| / k`` against ``k / (n - 1)``).
"""

from __future__ import annotations

import numpy as np

#: similarities within this of the k-th largest count as tied with it (float32 matmul rounding)
TIE_TOLERANCE = 1e-5


def tie_neighbourhoods(S: np.ndarray, k: int, tol: float = TIE_TOLERANCE) -> np.ndarray:
    """``(n, n)`` bool: ``j`` is among ``i``'s ``k`` nearest by similarity ``S`` or tied with the ``k``-th (self
    excluded)."""
    S = np.array(S, dtype=np.float32, copy=True)
    n = S.shape[0]
    np.fill_diagonal(S, -np.inf)
    if n < 2 or k < 1:
        return np.zeros((n, n), dtype=bool)
    k = min(k, n - 1)
    kth = np.partition(S, n - k, axis=1)[:, n - k]
    return S >= (kth - tol)[:, None]


def tie_overlap(Ma: np.ndarray, Mb: np.ndarray) -> tuple[float, float, float]:
    """``(overlap, chance, mean neighbourhood size)`` of two tie-aware neighbourhood matrices over the same rows
    (see the module doc); the size is the geometric mean ``sqrt(K_a K_b)`` averaged over rows."""
    n = Ma.shape[0]
    if n < 2:
        return 0.0, 0.0, 0.0
    shared = np.count_nonzero(Ma & Mb, axis=1)
    size = np.sqrt(np.count_nonzero(Ma, axis=1).astype(np.float64) * np.count_nonzero(Mb, axis=1))
    size = np.maximum(size, 1.0)
    return float(np.mean(shared / size)), float(np.mean(size)) / (n - 1), float(np.mean(size))
