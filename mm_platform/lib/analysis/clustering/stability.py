"""Stable cluster ids across re-clusterings, and placing new vectors into existing clusters.

Two problems arise once records are clustered repeatedly:

* **Stable ids.** A full re-clustering numbers its clusters afresh (by size), so "cluster 3" of today need
  not be "cluster 3" of yesterday. :func:`match_cluster_ids` matches the clusters of a new run to the stable
  ids of the previous run by maximal record overlap (Hungarian assignment on the contingency matrix) and
  hands out fresh ids to clusters that match nothing; :func:`apply_mapping` turns fresh labels into stable ids.
* **Incremental assignment.** Between re-clusterings, records of new batches are placed at once into the
  existing clusters by a :class:`ClusterModel`: the PCA projection used at clustering time plus one unit-norm
  centroid per stable id; a vector goes to the centroid of highest cosine similarity (optionally -1 when
  farther than ``max_distance``).

Models are saved as ``.npz`` (numeric arrays only, ``allow_pickle=False``) with their metadata as a JSON
string stored in a 1-element unicode array, so loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mm_platform.lib.analysis.clustering import _as_matrix, _sample_index, _unit_rows

#: Algorithms a :class:`ClusterModel` may come from.
ALGORITHMS = ("kmeans", "minibatch_kmeans", "hdbscan", "dbscan")
#: Format tag written into saved models; :meth:`ClusterModel.load` refuses anything else.
MODEL_FORMAT = "mm_platform.cluster_model/1"
#: Rows projected / assigned per block (bounds the float64 temporaries of large batches).
_BLOCK = 65536


# -- projection and centroids ----------------------------------------------------------------------------


def fit_projection(
    X: np.ndarray, dim: int, seed: int = 0, sample_size: int = 20000
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
    """PCA as :func:`mm_platform.lib.analysis.clustering.reduce_dimensions` does it, keeping the fitted transform.

    Returns ``(pca_mean (D,), pca_components (dim, D), Z)`` with ``Z`` the unit-normalised projection
    (float32), identical to ``reduce_dimensions(X, dim, seed, sample_size)[0]``. When no reduction applies
    (``dim <= 0``, fewer than 3 rows, or ``dim >= D``) returns ``(None, None, unit rows of X)``.
    """
    X = _as_matrix(X)
    n, d = X.shape
    k = min(dim, d, n - 1)
    if dim <= 0 or k < 2 or k >= d:
        return None, None, _unit_rows(X).astype(np.float32)
    from sklearn.decomposition import PCA

    idx = _sample_index(n, sample_size, seed)
    pca = PCA(n_components=k, random_state=seed).fit(X[idx])
    Z = _unit_rows(pca.transform(X).astype(np.float32)).astype(np.float32)
    return (
        np.asarray(pca.mean_, dtype=np.float32),
        np.asarray(pca.components_, dtype=np.float32),
        Z,
    )


def centroids_of(Z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster id (ascending, outliers -1 excluded), the unit-normalised mean of its rows.

    Returns ``(ids (k,) int64, centroids (k, dim) float32)``; a cluster whose mean is the zero vector gets a
    zero row (cosine similarity 0 to everything).
    """
    Z = _as_matrix(Z)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.shape[0] != Z.shape[0]:
        raise ValueError(f"{Z.shape[0]} rows but {labels.shape[0]} labels")
    keep = labels >= 0
    if not keep.any():
        return np.zeros(0, dtype=np.int64), np.zeros((0, Z.shape[1]), dtype=np.float32)
    ids, inverse = np.unique(labels[keep], return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=ids.size)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sums = np.add.reduceat(Z[keep][order].astype(np.float64), starts, axis=0)
    means = sums / counts[:, None]
    return ids.astype(np.int64), _unit_rows(means).astype(np.float32)


# -- the model -------------------------------------------------------------------------------------------


@dataclass
class ClusterModel:
    """What is needed to place new vectors into existing clusters: the PCA projection and the centroids."""

    run_id: str
    algorithm: str  #: "kmeans" | "minibatch_kmeans" | "hdbscan" | "dbscan"
    cluster_ids: np.ndarray  #: (k,) int64: the STABLE id of each centroid row
    centroids: np.ndarray  #: (k, dim) float32, unit-norm rows, in the reduced space
    pca_mean: np.ndarray | None  #: (D,) float32, None when no reduction was applied
    pca_components: np.ndarray | None  #: (dim, D) float32
    input_dim: int  #: D, dimension of the vectors the model accepts
    max_distance: float | None = None  #: cosine-distance outlier threshold; None = always assign
    meta: dict[str, Any] = field(default_factory=dict)  #: free JSON-serialisable extras (saved too)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; expected one of {ALGORITHMS}")
        self.input_dim = int(self.input_dim)
        if self.input_dim < 1:
            raise ValueError(f"input_dim must be >= 1, got {self.input_dim}")
        if (self.pca_mean is None) != (self.pca_components is None):
            raise ValueError("pca_mean and pca_components must both be set or both be None")
        if self.pca_mean is not None and self.pca_components is not None:
            self.pca_mean = np.asarray(self.pca_mean, dtype=np.float32).ravel()
            self.pca_components = np.asarray(self.pca_components, dtype=np.float32)
            if self.pca_components.ndim != 2 or self.pca_components.shape[1] != self.input_dim:
                raise ValueError(
                    f"pca_components shape {self.pca_components.shape} does not fit input_dim {self.input_dim}"
                )
            if self.pca_mean.shape != (self.input_dim,):
                raise ValueError(
                    f"pca_mean shape {self.pca_mean.shape} does not fit input_dim {self.input_dim}"
                )
            if not (np.isfinite(self.pca_mean).all() and np.isfinite(self.pca_components).all()):
                raise ValueError("projection contains NaN or infinite values")
        self.cluster_ids = np.asarray(self.cluster_ids, dtype=np.int64).ravel()
        if np.unique(self.cluster_ids).size != self.cluster_ids.size:
            raise ValueError("cluster_ids must be distinct")
        if (self.cluster_ids < 0).any():
            raise ValueError("cluster_ids must be >= 0 (-1 is reserved for outliers)")
        C = np.asarray(self.centroids, dtype=np.float32)
        if C.size == 0:
            C = C.reshape(0, self.output_dim)
        if C.ndim != 2 or C.shape != (self.cluster_ids.shape[0], self.output_dim):
            raise ValueError(
                f"centroids shape {C.shape} does not fit {self.cluster_ids.shape[0]} ids "
                f"in a {self.output_dim}-dimensional space"
            )
        if not np.isfinite(C).all():
            raise ValueError("centroids contain NaN or infinite values")
        self.centroids = _unit_rows(C).astype(np.float32)
        if self.max_distance is not None:
            self.max_distance = float(self.max_distance)
            if not math.isfinite(self.max_distance) or self.max_distance < 0:
                raise ValueError(f"max_distance must be a finite number >= 0, got {self.max_distance}")

    @property
    def output_dim(self) -> int:
        """Dimension of the reduced space (``dim``; ``input_dim`` when no reduction)."""
        return self.pca_components.shape[0] if self.pca_components is not None else self.input_dim

    @property
    def k(self) -> int:
        """Number of clusters (centroids)."""
        return int(self.cluster_ids.shape[0])

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        arr = np.asarray(X)
        if arr.ndim == 1 and arr.size == self.input_dim:
            arr = arr.reshape(1, -1)  # one vector
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise ValueError(f"expected vectors of dimension {self.input_dim}, got shape {arr.shape}")
        return _as_matrix(arr)

    def _project_block(self, X: np.ndarray) -> np.ndarray:
        if self.pca_mean is None or self.pca_components is None:
            return _unit_rows(X).astype(np.float32)
        Y = (X.astype(np.float64) - self.pca_mean) @ self.pca_components.T.astype(np.float64)
        return _unit_rows(Y).astype(np.float32)

    def project(self, X: np.ndarray) -> np.ndarray:
        """(n, D) -> (n, dim) unit rows, the transform applied at fit time. ValueError on a wrong dimension."""
        X = self._check_input(X)
        out = np.empty((X.shape[0], self.output_dim), dtype=np.float32)
        for start in range(0, X.shape[0], _BLOCK):
            out[start : start + _BLOCK] = self._project_block(X[start : start + _BLOCK])
        return out

    def assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stable cluster id of the nearest centroid (cosine) per row, and the cosine distance to it.

        Returns ``(ids (n,) int64, distances (n,) float64)``. Rows farther than ``max_distance`` get -1 (their
        distance is still reported). A model without centroids gives all -1 and NaN distances. Ties go to the
        first centroid row (ascending stable id when built with :func:`centroids_of`).
        """
        X = self._check_input(X)
        n = X.shape[0]
        ids = np.full(n, -1, dtype=np.int64)
        dist = np.full(n, np.nan, dtype=np.float64)
        if self.k == 0 or n == 0:
            return ids, dist
        C = self.centroids.astype(np.float64)
        for start in range(0, n, _BLOCK):
            Z = self._project_block(X[start : start + _BLOCK]).astype(np.float64)
            sims = Z @ C.T
            best = np.argmax(sims, axis=1)
            ids[start : start + _BLOCK] = self.cluster_ids[best]
            dist[start : start + _BLOCK] = 1.0 - np.clip(sims[np.arange(Z.shape[0]), best], -1.0, 1.0)
        if self.max_distance is not None:
            ids[dist > self.max_distance] = -1
        return ids, dist

    # -- persistence ---------------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "run_id": self.run_id,
            "algorithm": self.algorithm,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "k": self.k,
            "max_distance": self.max_distance,
            "has_pca": self.pca_mean is not None,
            "meta": self.meta,
        }

    def save(self, path: Path) -> None:
        """Write the model to ``path`` atomically (temporary file in the same folder + ``os.replace``).

        Format: an uncompressed ``.npz`` of plain numeric arrays (``cluster_ids``, ``centroids`` and, with a
        projection, ``pca_mean``/``pca_components``) plus ``metadata``, a 1-element unicode array holding JSON.
        The exact ``path`` is used (no ``.npz`` suffix is appended).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "metadata": np.array([json.dumps(self._metadata(), sort_keys=True)]),
            "cluster_ids": self.cluster_ids,
            "centroids": self.centroids,
        }
        if self.pca_mean is not None and self.pca_components is not None:
            arrays["pca_mean"] = self.pca_mean
            arrays["pca_components"] = self.pca_components
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    @classmethod
    def load(cls, path: Path) -> ClusterModel:
        """Read a model written by :meth:`save`; never unpickles. ValueError on a foreign or broken file."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {name: np.asarray(data[name]) for name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable cluster model ({exc})") from exc
        if "metadata" not in arrays or arrays["metadata"].dtype.kind != "U" or arrays["metadata"].size != 1:
            raise ValueError(f"{path}: no cluster-model metadata")
        try:
            meta = json.loads(str(arrays["metadata"].reshape(-1)[0]))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: broken metadata ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
            raise ValueError(
                f"{path}: unsupported format {meta.get('format') if isinstance(meta, dict) else None!r}"
            )
        for name in ("cluster_ids", "centroids"):
            if name not in arrays:
                raise ValueError(f"{path}: array {name!r} missing")
        has_pca = bool(meta.get("has_pca"))
        if has_pca and not {"pca_mean", "pca_components"} <= set(arrays):
            raise ValueError(f"{path}: projection arrays missing")
        return cls(
            run_id=str(meta["run_id"]),
            algorithm=str(meta["algorithm"]),
            cluster_ids=arrays["cluster_ids"],
            centroids=arrays["centroids"],
            pca_mean=arrays["pca_mean"] if has_pca else None,
            pca_components=arrays["pca_components"] if has_pca else None,
            input_dim=int(meta["input_dim"]),
            max_distance=meta.get("max_distance"),
            meta=dict(meta.get("meta") or {}),
        )


def build_model(
    run_id: str,
    algorithm: str,
    Z: np.ndarray,
    stable_labels: np.ndarray,
    pca_mean: np.ndarray | None,
    pca_components: np.ndarray | None,
    input_dim: int,
    *,
    max_distance: float | None = None,
    distance_quantile: float | None = None,
) -> ClusterModel:
    """A :class:`ClusterModel` from the reduced rows ``Z`` and their STABLE labels (see :func:`apply_mapping`).

    ``distance_quantile`` (e.g. 0.99), when given and ``max_distance`` is not, sets ``max_distance`` to that
    quantile of the members' cosine distances to their own centroid (None when no cluster has members).
    """
    ids, C = centroids_of(Z, stable_labels)
    model = ClusterModel(
        run_id=run_id,
        algorithm=algorithm,
        cluster_ids=ids,
        centroids=C,
        pca_mean=pca_mean,
        pca_components=pca_components,
        input_dim=input_dim,
        max_distance=max_distance,
    )
    if max_distance is None and distance_quantile is not None and ids.size:
        if not 0.0 < distance_quantile <= 1.0:
            raise ValueError(f"distance_quantile must be in (0, 1], got {distance_quantile}")
        labels = np.asarray(stable_labels, dtype=np.int64).ravel()
        keep = labels >= 0
        rows = np.searchsorted(ids, labels[keep])
        Zk = _unit_rows(np.asarray(Z, dtype=np.float64)[keep])
        d = 1.0 - np.clip(np.einsum("ij,ij->i", Zk, model.centroids[rows].astype(np.float64)), -1.0, 1.0)
        model.max_distance = float(np.quantile(d, distance_quantile))
    return model


# -- stable ids across runs ------------------------------------------------------------------------------


@dataclass
class IdMapping:
    """How the fresh labels of a new clustering map onto stable cluster ids."""

    new_to_stable: dict[int, int]  #: fresh label -> stable id (old id when matched, else a new unused id)
    moved: int  #: records present in both runs whose stable id changed (to/from -1 included)
    common: int  #: records present in both runs
    matched: int  #: new clusters matched to an old id
    new_ids: list[int]  #: stable ids created by this run
    retired_ids: list[int]  #: old ids no longer used

    @property
    def moved_fraction(self) -> float:
        """``moved / common`` (0.0 when no record is common to both runs)."""
        return self.moved / self.common if self.common else 0.0


def match_cluster_ids(
    previous: Mapping[str, int], record_ids: Sequence[str], new_labels: np.ndarray
) -> IdMapping:
    """Match the clusters of a new run (``new_labels`` aligned with ``record_ids``) to the previous stable ids.

    Over the records present in both runs (outliers -1 on either side ignored), the overlap matrix between
    new labels and old ids is built and new clusters are matched to old ids maximising total overlap
    (Hungarian assignment, ``scipy.optimize.linear_sum_assignment`` on ``-overlap``, rows and columns in
    ascending id order, so the result is deterministic). A pair with zero overlap is not a match. Unmatched
    new clusters get fresh ids ``max(old ids, -1) + 1, ...`` in ascending new-label order. Label -1 maps to
    -1. With an empty ``previous``, labels map onto ``0..k-1`` in ascending new-label order.
    """
    labels = np.asarray(new_labels)
    if labels.ndim != 1:
        raise ValueError(f"new_labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer) and not np.all(np.mod(labels, 1) == 0):
        raise ValueError("new_labels must be integers")
    labels = labels.astype(np.int64)
    if len(record_ids) != labels.shape[0]:
        raise ValueError(f"{len(record_ids)} record ids but {labels.shape[0]} labels")
    if (labels < -1).any():
        raise ValueError("new_labels must be >= -1")
    if len(set(record_ids)) != len(record_ids):
        raise ValueError("record_ids contain duplicates")

    new_clusters = [int(c) for c in np.unique(labels) if c >= 0]
    base: dict[int, int] = {-1: -1} if (labels == -1).any() else {}
    old_all = sorted({int(v) for v in previous.values() if int(v) >= 0})

    if not previous:
        mapping = {**base, **{c: i for i, c in enumerate(new_clusters)}}
        return IdMapping(
            new_to_stable=mapping,
            moved=0,
            common=0,
            matched=0,
            new_ids=list(range(len(new_clusters))),
            retired_ids=[],
        )

    missing = -2
    old = np.fromiter(
        (int(previous.get(r, missing)) for r in record_ids), dtype=np.int64, count=len(record_ids)
    )
    present = old != missing
    both = present & (old >= 0) & (labels >= 0)

    assigned: dict[int, int] = {}
    if both.any() and new_clusters and old_all:
        rows = np.searchsorted(np.asarray(new_clusters), labels[both])
        cols = np.searchsorted(np.asarray(old_all), old[both])
        overlap = np.zeros((len(new_clusters), len(old_all)), dtype=np.int64)
        np.add.at(overlap, (rows, cols), 1)
        from scipy.optimize import linear_sum_assignment

        r_idx, c_idx = linear_sum_assignment(-overlap)
        for r, c in zip(r_idx.tolist(), c_idx.tolist(), strict=True):
            if overlap[r, c] > 0:
                assigned[new_clusters[r]] = old_all[c]

    next_id = max(old_all, default=-1) + 1
    mapping = dict(base)
    new_ids: list[int] = []
    for c in new_clusters:
        if c in assigned:
            mapping[c] = assigned[c]
        else:
            mapping[c] = next_id
            new_ids.append(next_id)
            next_id += 1

    used = set(mapping.values())
    stable = apply_mapping(labels, IdMapping(mapping, 0, 0, 0, [], []))
    moved = int(np.sum(present & (stable != old)))
    return IdMapping(
        new_to_stable=mapping,
        moved=moved,
        common=int(present.sum()),
        matched=len(assigned),
        new_ids=new_ids,
        retired_ids=[c for c in old_all if c not in used],
    )


def apply_mapping(labels: np.ndarray, mapping: IdMapping) -> np.ndarray:
    """Fresh labels -> stable ids (int64). -1 stays -1; a label the mapping does not know is a ValueError."""
    labels = np.asarray(labels, dtype=np.int64)
    table = dict(mapping.new_to_stable)
    table[-1] = -1
    uniq, inverse = np.unique(labels, return_inverse=True)
    unknown = [int(u) for u in uniq if int(u) not in table]
    if unknown:
        raise ValueError(f"labels {unknown[:10]} are not in the mapping")
    out = np.asarray([table[int(u)] for u in uniq], dtype=np.int64)
    return out[inverse.reshape(labels.shape)] if uniq.size else labels.copy()
