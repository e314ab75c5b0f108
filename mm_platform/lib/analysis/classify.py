"""Supervised evaluation of the embeddings: early vs late fusion vs single-modality classifiers.

Given per-modality blocks aligned by row (zeros where absent) and a class label for some rows, this module
answers "does combining modalities help, and which way?" with stratified cross-validation on the labelled rows
and predicts labels for the unlabelled ones.

**Block features.** Inside every training fold and for every modality, the L2-normalised vectors of the
training rows having that modality fit a seeded PCA to ``pca_dim`` components (fewer if the block or the fold is
smaller). Scores are divided by ``sqrt(mean component variance)`` so that every block has unit average variance
per component whatever its encoder's scale, while keeping its spectrum. Rows lacking the modality get zeros,
i.e. the training mean. Nothing is fitted on held-out rows (no leakage).

**Strategies** (all multinomial ``LogisticRegression(C, lbfgs)``; probabilities over all classes):

* ``early``: one classifier on the concatenation of every block's features plus one 0/1 presence flag per
  modality.
* ``late``: one classifier per modality, trained on the training rows having it; a row's class probabilities
  are the *unweighted* mean of the probabilities of the modalities it has.
* ``late_learned``: the same per-modality classifiers with **learned modality weights**: inside each training
  fold, every modality's classifier is refitted on a seeded 75% of the fold's rows and scored on the other 25%;
  its weight is that held-out accuracy above chance, ``max(acc - 1/K, 0.01)``. A row's probabilities are the
  weight-averaged probabilities of the modalities it has. The weights fitted on all labelled rows are
  returned with the metrics (``weights``).
* ``<modality>`` (e.g. ``text``): that modality's classifier alone. Rows lacking the modality are predicted as
  the training fold's majority class, so every strategy is scored on exactly the same rows and folds (a
  modality present in few rows is penalised for its coverage -- that is the point of the comparison).

**Scores.** ``macro_f1`` / ``accuracy``: mean over folds (``macro_f1_std``: their standard deviation). Folds come
from one ``StratifiedKFold(shuffle=True, random_state=seed)`` shared by all strategies. Labelled rows without any
present modality are left out. Classes with fewer than ``folds`` examples are dropped when at least two classes
keep ``folds`` or more; otherwise the number of folds is lowered to the smallest class count (classes with a
single example are always dropped). Each such decision is written to ``notes``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from mm_platform.lib.analysis.clustering import is_missing_label
from mm_platform.lib.arrays import presence_mask, zero_nonfinite_rows
from mm_platform.lib.vectors.fusion import modality_order

if TYPE_CHECKING:  # scikit-learn is imported where a classifier is trained: a run that trains none skips 0.7 s
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

#: Fusion strategies scored besides the single modalities.
FUSION_STRATEGIES: tuple[str, ...] = ("early", "late", "late_learned")
#: Share of a training fold held out to learn the modality weights of ``late_learned``.
WEIGHT_HOLDOUT = 0.25
#: lbfgs iteration cap (the features are small and standardised; more rarely changes the result).
MAX_ITER = 300




class _BlockReducer:
    """Seeded PCA of L2-normalised rows, scaled to unit mean variance per component (see module docstring)."""

    def __init__(self, dim: int, seed: int) -> None:
        self.dim = dim
        self.seed = seed
        self.pca: PCA | None = None
        self.scale = 1.0
        self.mean: np.ndarray | None = None

    @staticmethod
    def _unit(X: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        return np.where(norms > 1e-12, X / np.where(norms > 1e-12, norms, 1.0), 0.0)

    def fit(self, X: np.ndarray) -> _BlockReducer:
        U = self._unit(np.asarray(X, dtype=np.float64))
        k = min(self.dim, U.shape[1], U.shape[0] - 1) if self.dim > 0 else 0
        if k >= 1 and k < U.shape[1]:
            from sklearn.decomposition import PCA

            solver = "randomized" if k < 0.8 * min(U.shape) else "full"
            self.pca = PCA(n_components=k, svd_solver=solver, random_state=self.seed).fit(U)
            Z = self.pca.transform(U)
        else:  # no reduction: centre only
            self.mean = U.mean(axis=0) if U.shape[0] else np.zeros(U.shape[1])
            Z = U - self.mean
        var = float(np.mean(Z.var(axis=0))) if Z.size else 0.0
        self.scale = 1.0 / math.sqrt(var) if var > 1e-12 else 1.0
        return self

    def transform(self, X: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Features of the rows; rows not ``present`` are zero (the training mean)."""
        U = self._unit(np.asarray(X, dtype=np.float64))
        Z = self.pca.transform(U) if self.pca is not None else U - self.mean
        return np.where(present[:, None], Z * self.scale, 0.0)


def _fit_lr(X: np.ndarray, y: np.ndarray, C: float, seed: int) -> LogisticRegression | int:
    """A fitted classifier, or the single class index when ``y`` has only one class."""
    classes = np.unique(y)
    if classes.size == 1:
        return int(classes[0])
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model


def _proba(model: LogisticRegression | int, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) probabilities; classes unseen in training get 0."""
    out = np.zeros((X.shape[0], n_classes))
    if isinstance(model, int):
        out[:, model] = 1.0
        return out
    out[:, model.classes_] = model.predict_proba(X)
    return out


class _FoldModels:
    """Reducers and classifiers of one training set: early, and one per modality (late / single)."""

    def __init__(
        self,
        order: Sequence[str],
        X: Mapping[str, np.ndarray],
        P: Mapping[str, np.ndarray],
        y: np.ndarray,
        train: np.ndarray,
        n_classes: int,
        *,
        C: float,
        seed: int,
        pca_dim: int,
    ) -> None:
        self.order = list(order)
        self.n_classes = n_classes
        self.majority = int(np.bincount(y[train], minlength=n_classes).argmax())
        self.reducers: dict[str, _BlockReducer] = {}
        self.single: dict[str, LogisticRegression | int] = {}
        for m in self.order:
            rows = train[P[m][train]]
            if rows.size < 2:
                continue
            self.reducers[m] = _BlockReducer(pca_dim, seed).fit(X[m][rows])
            feats = self.reducers[m].transform(X[m][rows], np.ones(rows.size, dtype=bool))
            self.single[m] = _fit_lr(feats, y[rows], C, seed)
        self.early = _fit_lr(self._early_features(X, P, train), y[train], C, seed)
        self.weights = self._learn_weights(X, P, y, train, C=C, seed=seed, pca_dim=pca_dim)

    def _learn_weights(self, X, P, y: np.ndarray, train: np.ndarray, *, C: float, seed: int,
                       pca_dim: int) -> dict[str, float]:
        """Each modality's held-out accuracy above chance on a seeded split of the training rows."""
        rng = np.random.default_rng(seed)
        perm = rng.permutation(train)
        n_hold = int(round(perm.size * WEIGHT_HOLDOUT))
        hold, fit = perm[:n_hold], perm[n_hold:]
        chance = 1.0 / self.n_classes
        weights: dict[str, float] = {}
        for m in self.single:
            fit_rows, hold_rows = fit[P[m][fit]], hold[P[m][hold]]
            if fit_rows.size < 2 or hold_rows.size < 1:
                weights[m] = 1.0
                continue
            reducer = _BlockReducer(pca_dim, seed).fit(X[m][fit_rows])
            model = _fit_lr(reducer.transform(X[m][fit_rows], np.ones(fit_rows.size, dtype=bool)), y[fit_rows],
                            C, seed)
            feats = reducer.transform(X[m][hold_rows], np.ones(hold_rows.size, dtype=bool))
            acc = float(np.mean(_proba(model, feats, self.n_classes).argmax(axis=1) == y[hold_rows]))
            weights[m] = max(acc - chance, 0.01)
        return weights

    def _early_features(
        self, X: Mapping[str, np.ndarray], P: Mapping[str, np.ndarray], rows: np.ndarray
    ) -> np.ndarray:
        parts = [self.reducers[m].transform(X[m][rows], P[m][rows]) for m in self.order if m in self.reducers]
        flags = np.stack([P[m][rows].astype(np.float64) for m in self.order], axis=1)
        return np.concatenate([*parts, flags], axis=1)

    def predict(
        self, X: Mapping[str, np.ndarray], P: Mapping[str, np.ndarray], rows: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Class probabilities ``(len(rows), n_classes)`` of ``rows`` for every strategy."""
        K = self.n_classes
        out: dict[str, np.ndarray] = {"early": _proba(self.early, self._early_features(X, P, rows), K)}
        late_sum = np.zeros((rows.size, K))
        late_count = np.zeros(rows.size)
        learned_sum = np.zeros((rows.size, K))
        learned_weight = np.zeros(rows.size)
        fallback = np.zeros(K)
        fallback[self.majority] = 1.0
        for m in self.order:
            single = np.tile(fallback, (rows.size, 1))
            if m in self.single:
                has = P[m][rows]
                if has.any():
                    feats = self.reducers[m].transform(X[m][rows[has]], np.ones(int(has.sum()), dtype=bool))
                    p = _proba(self.single[m], feats, K)
                    single[has] = p
                    late_sum[has] += p
                    late_count[has] += 1
                    learned_sum[has] += self.weights[m] * p
                    learned_weight[has] += self.weights[m]
            out[m] = single
        late = np.tile(fallback, (rows.size, 1))
        covered = late_count > 0
        late[covered] = late_sum[covered] / late_count[covered, None]
        out["late"] = late
        learned = np.tile(fallback, (rows.size, 1))
        learned[covered] = learned_sum[covered] / learned_weight[covered, None]
        out["late_learned"] = learned
        return out


def _prepare(
    blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], n_labels: int
) -> tuple[tuple[str, ...], dict[str, np.ndarray], dict[str, np.ndarray]]:
    if not blocks:
        raise ValueError("evaluate_classifiers needs at least one modality block")
    order = modality_order(list(blocks))
    X: dict[str, np.ndarray] = {}
    P: dict[str, np.ndarray] = {}
    for m in order:
        block = np.asarray(blocks[m], dtype=np.float64)
        if block.ndim != 2 or block.shape[0] != n_labels:
            raise ValueError(f"{m}: block must be ({n_labels}, d) like the labels, got shape {block.shape}")
        mask = presence_mask(m, present, n_labels, rows="labels")
        block, finite = zero_nonfinite_rows(block)
        usable = mask & finite & (np.linalg.norm(block, axis=1) > 1e-12)
        X[m] = block
        P[m] = usable
    return order, X, P


class InsufficientLabels(ValueError):
    """The labels cannot be compared by cross-validation (fewer than two classes with two examples each):
    odd but valid data, reported by the caller as a skip with this message, never a failed run."""


def evaluate_classifiers(
    blocks: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    labels: Sequence[str | None],
    *,
    folds: int = 5,
    seed: int = 0,
    C: float = 1.0,
    pca_dim: int = 64,
    n_threads: int | None = 1,
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Cross-validated early / late / single-modality classifiers, and predictions for unlabelled rows.

    Args:
        blocks: modality -> ``(n, d_m)`` vectors aligned by row (zeros where absent).
        present: modality -> ``(n,)`` bool; all-zero or non-finite rows count as absent.
        labels: ``n`` class labels; None / NaN / blank = unlabelled.
        folds: stratified CV folds (>= 2). seed: folds, PCA. C: inverse L2 strength.
        pca_dim: components kept per block (0 = no reduction). n_threads: BLAS/OpenMP cap (None = library
            default; 1 is fastest for these small problems).

    Returns:
        ``(metrics, predictions)``. ``metrics``: one dict per strategy, ``early``, ``late`` then the modalities
        in :func:`~mm_platform.lib.vectors.fusion.modality_order`, with ``strategy``, ``modalities`` (list),
        ``macro_f1``, ``macro_f1_std``, ``accuracy``, ``n_labelled``, ``n_classes``, ``folds``, ``notes``,
        ``seconds`` (whole evaluation), ``classes`` and ``confusion`` (``K x K`` counts of the cross-validated
        predictions: row = true class, column = predicted, in ``classes`` order). ``predictions``: ``{"early": [...], "late": [...]}``, each a list (by row
        index) of ``{"row", "label", "probability", "strategy"}`` for the unlabelled rows having at least one
        modality, from models fitted on all kept labelled rows.

    Raises:
        ValueError: inconsistent inputs or ``folds < 2``.
        InsufficientLabels: fewer than two classes with two labelled examples left to compare.
    """
    t0 = time.perf_counter()
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if not (math.isfinite(C) and C > 0):
        raise ValueError(f"C must be > 0, got {C}")
    n = len(labels)
    order, X, P = _prepare(blocks, present, n)
    any_present = np.any([P[m] for m in order], axis=0)
    labelled_mask = np.array([not is_missing_label(v) for v in labels], dtype=bool)
    notes: list[str] = []
    no_data = int(np.sum(labelled_mask & ~any_present))
    if no_data:
        notes.append(f"{no_data} labelled rows without any modality left out")
    labelled = np.flatnonzero(labelled_mask & any_present)
    names = [str(labels[i]) for i in labelled]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1

    keep_classes, eff_folds = _kept_classes(counts, folds, notes)
    class_index = {c: i for i, c in enumerate(keep_classes)}
    keep = np.array([name in class_index for name in names], dtype=bool)
    rows = labelled[keep]
    y = np.full(n, -1, dtype=np.int64)
    y[rows] = [class_index[name] for name, k in zip(names, keep, strict=True) if k]
    K = len(keep_classes)

    strategies = [*FUSION_STRATEGIES, *order]
    fit = functools.partial(_FoldModels, order, X, P, y, n_classes=K, C=C, seed=seed, pca_dim=pca_dim)
    limits = threadpool_limits(limits=n_threads) if n_threads is not None else contextlib.nullcontext()
    with limits:
        f1s, accs, out_of_fold = _cross_validate(fit, X, P, y, rows, strategies, K, eff_folds, seed)
        final = fit(rows)
        predictions = _predict_unlabelled(final, X, P, np.flatnonzero(~labelled_mask & any_present), keep_classes)

    from sklearn.metrics import confusion_matrix

    seconds = round(time.perf_counter() - t0, 3)
    metrics = [
        {
            "strategy": s,
            "modalities": list(order) if s in FUSION_STRATEGIES else [s],
            "macro_f1": float(np.mean(f1s[s])),
            "macro_f1_std": float(np.std(f1s[s])),
            "accuracy": float(np.mean(accs[s])),
            "n_labelled": int(rows.size),
            "n_classes": K,
            "folds": eff_folds,
            "notes": "; ".join(notes),
            "seconds": seconds,
            "weights": {m: round(w, 4) for m, w in final.weights.items()} if s == "late_learned" else None,
            "classes": list(keep_classes),
            "confusion": confusion_matrix(y[rows], out_of_fold[s][rows], labels=np.arange(K)).tolist(),
        }
        for s in strategies
    ]
    return metrics, predictions


def _kept_classes(counts: Mapping[str, int], folds: int, notes: list[str]) -> tuple[list[str], int]:
    """The classes kept for cross-validation and the folds used: classes with >= ``folds`` examples, else
    (fewer than two such classes) every class with >= 2 and folds lowered to the smallest; notes say what."""
    eff_folds = folds
    min_count = folds
    keep_classes = sorted(c for c, k in counts.items() if k >= folds)
    if len(keep_classes) < 2:
        min_count = 2
        keep_classes = sorted(c for c, k in counts.items() if k >= 2)
        if len(keep_classes) >= 2:
            eff_folds = min(folds, min(counts[c] for c in keep_classes))
            if eff_folds < folds:
                notes.append(f"folds lowered from {folds} to {eff_folds} (smallest kept class size)")
    dropped = sorted(set(counts) - set(keep_classes))
    if dropped:
        shown = ", ".join(f"{c} ({counts[c]})" for c in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
        notes.append(f"{len(dropped)} classes with fewer than {min_count} examples dropped: {shown}")
    if len(keep_classes) < 2:
        raise InsufficientLabels(f"need at least two classes with >= 2 labelled examples, got counts {counts}")
    return keep_classes, eff_folds


def _cross_validate(fit: Callable[[np.ndarray], _FoldModels], X: Mapping[str, np.ndarray],
                    P: Mapping[str, np.ndarray], y: np.ndarray, rows: np.ndarray, strategies: list[str], K: int,
                    folds: int, seed: int) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Per strategy: macro-F1 and accuracy of every stratified fold, and each row's out-of-fold prediction."""
    n = y.shape[0]
    f1s: dict[str, list[float]] = {s: [] for s in strategies}
    accs: dict[str, list[float]] = {s: [] for s in strategies}
    out_of_fold = {s: np.full(n, -1, dtype=np.int64) for s in strategies}  # each row's prediction as a test row
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_pos, test_pos in splitter.split(np.zeros(rows.size), y[rows]):
        train, test = rows[train_pos], rows[test_pos]
        probs = fit(train).predict(X, P, test)
        for s in strategies:
            pred = probs[s].argmax(axis=1)
            out_of_fold[s][test] = pred
            f1s[s].append(float(f1_score(y[test], pred, average="macro", labels=np.arange(K), zero_division=0)))
            accs[s].append(float(accuracy_score(y[test], pred)))
    return f1s, accs, out_of_fold


def _predict_unlabelled(final: _FoldModels, X: Mapping[str, np.ndarray], P: Mapping[str, np.ndarray],
                        target: np.ndarray, classes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The fused strategies' label and probability for every unlabelled row that has a modality."""
    predictions: dict[str, list[dict[str, Any]]] = {s: [] for s in FUSION_STRATEGIES}
    if target.size:
        probs = final.predict(X, P, target)
        for s in FUSION_STRATEGIES:
            best = probs[s].argmax(axis=1)
            predictions[s] += [{"row": int(row), "label": classes[int(best[i])],
                                "probability": float(probs[s][i, best[i]]), "strategy": s}
                               for i, row in enumerate(target.tolist())]
    return predictions
