"""Closed-form linear maps into a shared space: the baselines trained heads must beat to be used.

Both maps see what the heads see, ``u = x / |x|`` per modality, are fitted on the training rows of the same
split (:func:`mm_platform.lib.vectors.shared_space.train.split_rows`) and give each modality an affine map
``f_m(u) = (u - mu_m) W_m + c_m`` into ``shared_dim`` dimensions. They are stored as an
:class:`AlignmentModel` with one ``Linear`` head per modality (``config.mapping`` says which map), so a
baseline is a real cross-modal map: search and the shared-space strategy use it like heads.

* ``ridge`` (least squares). One *hub* modality (the one in most training rows with a partner) spans the space
  with its first ``shared_dim`` principal directions. Every other modality, in order of the rows it shares with
  those already mapped, is ridge-regressed onto the mean of their unit-length projections on the rows having
  both. With anchors (CLIP's text and image) the anchors' own space is the target and the hub is not needed.
* ``cca`` (generalised CCA, MAXVAR, with ridge regularisation; plain regularised CCA for two modalities). With
  ``A_m = U_m S_m V_m^T`` the centred training rows of modality ``m`` (zero rows where it is absent), the shared
  coordinates ``G`` are the top ``shared_dim`` left singular vectors of ``[U_m sqrt(S_m^2 / (S_m^2 + l_m))]_m``
  and ``W_m = (A_m^T A_m + l_m I)^-1 A_m^T G``; column ``k`` is weighted by ``max(sigma_k^2 - 1, 0)`` (about the
  canonical correlation for two modalities), so weakly shared directions count little in cosines. Not
  applicable with anchors (it would move the anchors' space).

Ridge strength ``l_m = RIDGE_ALPHA * trace(A_m^T A_m) / d_m`` (scale free). At most ``MAX_BASELINE_ROWS`` training
rows are used (seeded subsample), so fitting stays a few seconds; BLAS threads follow the training rule
(:func:`~mm_platform.lib.vectors.shared_space.train.train_threads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from threadpoolctl import threadpool_limits

from mm_platform.lib.device import LazyModule
from mm_platform.lib.vectors.shared_space.heads import AlignmentModel, _make_head
from mm_platform.lib.vectors.shared_space.train import Split, train_threads

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # imported on first use (lib/device.py LazyModule)
    torch = LazyModule("torch")
    nn = LazyModule("torch.nn")

#: Ridge strength relative to the mean eigenvalue of each modality's covariance.
RIDGE_ALPHA = 0.1
#: Training rows used to fit a baseline (seeded subsample above this).
MAX_BASELINE_ROWS = 10_000
#: Linear baselines :func:`fit_baseline` knows.
BASELINES = ("ridge", "cca")

Affine = tuple[np.ndarray, np.ndarray, np.ndarray]  # mu (d,), W (d, k), c (k,)


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 1e-12)


def _lam(A: np.ndarray, alpha: float) -> float:
    return alpha * max(float(np.sum(A * A)) / max(A.shape[1], 1), 1e-12)


def ridge_map(A: np.ndarray, T: np.ndarray, alpha: float = RIDGE_ALPHA) -> np.ndarray:
    """``W = (A^T A + l I)^-1 A^T T`` with ``l = alpha * trace(A^T A) / d`` (dual form when ``n < d``)."""
    A, T = np.asarray(A, np.float64), np.asarray(T, np.float64)
    n, d = A.shape
    lam = _lam(A, alpha)
    if d <= n:
        return np.linalg.solve(A.T @ A + lam * np.eye(d), A.T @ T)
    return A.T @ np.linalg.solve(A @ A.T + lam * np.eye(n), T)


def _apply(f: Affine, U: np.ndarray) -> np.ndarray:
    mu, W, c = f
    return (U - mu) @ W + c


def _pca_hub(U: np.ndarray, dim: int) -> Affine:
    mu = U.mean(axis=0)
    _, _, Vt = np.linalg.svd(U - mu, full_matrices=False)
    k = min(dim, Vt.shape[0])
    W = np.zeros((U.shape[1], dim))
    W[:, :k] = Vt[:k].T
    return mu, W, np.zeros(dim)


def _fit_ridge(split: Split, rows: np.ndarray, U: Mapping[str, np.ndarray], dim: int) -> dict[str, Affine]:
    P = split.P
    anchors = [m for m in split.used if m in split.config.anchors]
    maps: dict[str, Affine] = {m: (np.zeros(dim), np.eye(dim), np.zeros(dim)) for m in anchors}
    todo = [m for m in split.used if m not in maps]
    while todo:
        mapped = list(maps)
        shared = {m: int(np.sum(P[m][rows] & np.any([P[o][rows] for o in mapped], axis=0))) if mapped else 0
                  for m in todo}
        m = max(todo, key=lambda k: (shared[k], int(P[k][rows].sum())))
        todo.remove(m)
        if shared[m] < 2:  # the first modality, or one with no partner mapped yet: a hub of its own
            maps[m] = _pca_hub(U[m][P[m][rows]], dim)
            continue
        have = P[m][rows] & np.any([P[o][rows] for o in mapped], axis=0)
        target = np.zeros((int(have.sum()), dim))
        count = np.zeros(int(have.sum()))
        for o in mapped:
            mask = P[o][rows][have]
            target[mask] += _unit(_apply(maps[o], U[o][have][mask]))
            count += mask
        target /= np.maximum(count, 1)[:, None]
        A = U[m][have]
        mu, c = A.mean(axis=0), target.mean(axis=0)
        maps[m] = (mu, ridge_map(A - mu, target - c), c)
    return maps


def _fit_cca(split: Split, rows: np.ndarray, U: Mapping[str, np.ndarray], dim: int) -> dict[str, Affine]:
    P = split.P
    parts, svds = [], {}
    for m in split.used:
        have = P[m][rows]
        A = U[m][have] - U[m][have].mean(axis=0)
        Uu, s, Vt = np.linalg.svd(A, full_matrices=False)
        keep = s > 1e-8 * max(float(s[0]) if s.size else 0.0, 1e-300)
        Uu, s, Vt = Uu[:, keep], s[keep], Vt[keep]
        lam = _lam(A, RIDGE_ALPHA)
        K = np.zeros((rows.size, s.size))
        K[have] = Uu * np.sqrt(s**2 / (s**2 + lam))
        parts.append(K)
        svds[m] = (have, Uu, s, Vt, lam, U[m][have].mean(axis=0))
    Ug, sg, _ = np.linalg.svd(np.hstack(parts), full_matrices=False)
    k = min(dim, Ug.shape[1])
    G = Ug[:, :k] * np.maximum(sg[:k] ** 2 - 1.0, 0.0)
    maps: dict[str, Affine] = {}
    for m, (have, Uu, s, Vt, lam, mu) in svds.items():
        W = np.zeros((U[m].shape[1], dim))
        W[:, :k] = Vt.T @ ((s / (s**2 + lam))[:, None] * (Uu.T @ G[have]))
        maps[m] = (mu, W, np.zeros(dim))
    return maps


def fit_baseline(split: Split, method: str) -> AlignmentModel | None:
    """The ``method`` baseline (``"ridge"`` or ``"cca"``) fitted on ``split``'s training rows, as a model with
    linear heads (anchors keep identity heads); None for ``cca`` when the split has anchors."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r} (one of {BASELINES})")
    config = split.config
    if method == "cca" and any(m in config.anchors for m in split.used):
        return None
    rows = split.train_idx
    if rows.size > MAX_BASELINE_ROWS:
        rows = np.sort(np.random.default_rng([config.seed, 2]).choice(rows, MAX_BASELINE_ROWS, replace=False))
    dim = config.shared_dim
    U = {m: _unit(split.X[m][rows]) for m in split.used}
    # BLAS threads as for training (one below a few thousand rows): on a loaded machine OpenBLAS threads that
    # spin-wait for each other made a 193 x 1280 SVD 40x slower than one thread
    with threadpool_limits(limits=train_threads(int(rows.size)), user_api="blas"):
        maps = (_fit_ridge if method == "ridge" else _fit_cca)(split, rows, U, dim)
    cfg = replace(config, mapping=method, hidden_dim=0, epochs=0, dropout=0.0, patience=0)
    heads: dict[str, nn.Module] = {}
    for m in split.used:
        if m in cfg.anchors:
            heads[m] = nn.Identity()
            continue
        mu, W, c = maps[m]
        head = _make_head(split.X[m].shape[1], cfg)
        with torch.no_grad():
            head.get_submodule("0").weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
            head.get_submodule("0").bias.copy_(torch.from_numpy((c - mu @ W).astype(np.float32)))
        heads[m] = head.eval()
    return AlignmentModel(heads, {m: split.X[m].shape[1] for m in split.used}, cfg)
