"""A fitted 2-D map projection that places new records without recomputing the map.

:func:`fit_map_projection` fits the projection of the embedding map once (in the re-cluster run) and
:meth:`MapProjection.transform` places rows against it, in chunks, in float32:

``pca``
    The first two principal components of the L2-normalised rows, computed exactly from the covariance
    matrix of a seeded sample of at most ``fit_sample`` rows (accumulated chunk by chunk in float64, so memory
    is ``d x d`` plus one chunk, whatever the corpus size; float32 products per chunk, float64 sums). Signs are fixed (the largest loading of each
    component is positive), so the same rows always give the same map.
``tsne``
    t-SNE (sklearn, cosine metric) on a seeded sample of at most ``tsne_sample`` rows; the sample's unit rows
    and their coordinates are kept, and any row is placed at the mean coordinates of its 5 most
    cosine-similar sampled rows (the out-of-sample extension :func:`embedding_map.project_2d` uses).

:func:`save_projection` / :func:`load_projection` keep the fitted state as a ``.npz`` (never pickled) with a
format tag, the cluster run it belongs to, the space and the input dimension, under
``<lake>/_models/embedding_map/`` with a ``current.json`` pointer replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from mm_platform.lib.analysis.embedding_map import METHODS, N_PLACEMENT_NEIGHBOURS

FORMAT = "mm-map-projection/1"
#: Rows the PCA covariance is estimated from (seeded sample above this).
DEFAULT_FIT_SAMPLE = 20_000
#: Rows t-SNE is fitted on.
DEFAULT_TSNE_SAMPLE = 3000
#: Rows transformed at once (bounds the float32 working copy: 16k x 1,928 x 4 B = 123 MB).
CHUNK_ROWS = 16_384
STATE_DIR = "_models/embedding_map"


def _unit32(X: np.ndarray) -> np.ndarray:
    A = np.array(X, dtype=np.float32, copy=True)
    if A.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError("matrix contains NaN or infinite values")
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    np.divide(A, norms, out=A, where=norms > 1e-12)
    A[(norms <= 1e-12).ravel()] = 0.0
    return A


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _chunks(n: int, rows: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


@dataclass
class MapProjection:
    """Fitted state of a 2-D map (see the module docstring). ``run_id`` is the cluster run it was fitted
    in; ``space`` what the rows are (the clustering input spec)."""

    method: str
    input_dim: int
    seed: int
    fitted_rows: int
    run_id: str | None = None
    space: str = ""
    mean: np.ndarray | None = None  # pca: (d,) float64 mean of the sampled unit rows
    components: np.ndarray | None = None  # pca: (2, d)
    sample_unit: np.ndarray | None = None  # tsne: (m, d) float32 unit rows of the fitted sample
    sample_coords: np.ndarray | None = None  # tsne: (m, 2) float32
    fit_id: str = ""

    def matches(self, method: str, input_dim: int, run_id: str | None, space: str) -> bool:
        """True when this projection can place rows of ``space`` for the cluster run ``run_id``."""
        return (self.method, self.input_dim, self.run_id, self.space) == (method, input_dim, run_id, space)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, 2)`` float32 coordinates of the rows of ``X`` (L2-normalised first), chunk by chunk."""
        X = np.asarray(X)
        if X.ndim != 2 or (X.shape[0] and X.shape[1] != self.input_dim):
            raise ValueError(f"expected rows of {self.input_dim} dims, got shape {X.shape}")
        out = np.zeros((X.shape[0], 2), dtype=np.float32)
        for sl in _chunks(X.shape[0]):
            U = _unit32(X[sl])
            if self.method == "pca":
                assert self.mean is not None and self.components is not None
                out[sl] = ((U - self.mean.astype(np.float32)) @ self.components.T.astype(np.float32))
            else:
                assert self.sample_unit is not None and self.sample_coords is not None
                k = min(N_PLACEMENT_NEIGHBOURS, self.sample_unit.shape[0])
                if k == 0:
                    continue
                sims = U @ self.sample_unit.T
                top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
                out[sl] = self.sample_coords[top].mean(axis=1)
        return out


def _pca_components(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), components (2, d)) of the unit rows ``S`` from their covariance, chunk by chunk."""
    n, d = S.shape
    mean = np.zeros(d, dtype=np.float64)
    for sl in _chunks(n):
        mean += _unit32(S[sl]).sum(axis=0, dtype=np.float64)
    mean /= max(n, 1)
    cov = np.zeros((d, d), dtype=np.float64)
    for sl in _chunks(n):
        C = _unit32(S[sl]) - mean.astype(np.float32)
        cov += (C.T @ C).astype(np.float64)  # float32 GEMM per chunk (2x faster), summed in float64
    k = min(2, d, max(n - 1, 0))
    comps = np.zeros((2, d), dtype=np.float64)
    if k >= 1:
        vals, vecs = np.linalg.eigh(cov)
        top = vecs[:, ::-1][:, :k].T  # largest eigenvalues first
        signs = np.sign(top[np.arange(k), np.argmax(np.abs(top), axis=1)])
        comps[:k] = top * np.where(signs == 0, 1.0, signs)[:, None]
    return mean, comps


def fit_map_projection(X: np.ndarray, method: str = "pca", *, seed: int = 0, fit_sample: int = DEFAULT_FIT_SAMPLE,
                       tsne_sample: int = DEFAULT_TSNE_SAMPLE, run_id: str | None = None,
                       space: str = "") -> tuple[MapProjection, np.ndarray]:
    """Fit the map of ``X`` (n, d) and return ``(projection, coords (n, 2) float32)``.

    PCA is estimated on a seeded sample of ``<= fit_sample`` rows; t-SNE is fitted on ``<= tsne_sample``
    rows, whose own coordinates are kept, and the other rows are placed by :meth:`MapProjection.transform`.
    Fewer than 5 rows, or one column, fall back to PCA. Raises ValueError on an unknown method, a
    non-2-D or non-finite matrix, or a sample size < 2.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection method {method!r} (expected one of {METHODS})")
    if fit_sample < 2 or tsne_sample < 2:
        raise ValueError(f"sample sizes must be >= 2, got {fit_sample} and {tsne_sample}")
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {X.shape}")
    n, d = X.shape
    fit_id = uuid.uuid4().hex[:12]
    if method == "tsne" and n >= 5 and d >= 2:
        from sklearn.manifold import TSNE

        idx = _sample(n, tsne_sample, seed)
        S = _unit32(X[idx])
        if idx.size >= 5:
            tsne = TSNE(n_components=2, perplexity=min(30.0, (idx.size - 1) / 3.0), metric="cosine", init="pca",
                        random_state=seed, n_jobs=1)
            coords_s = tsne.fit_transform(S.astype(np.float64)).astype(np.float32)
            proj = MapProjection("tsne", d, seed, int(idx.size), run_id, space, sample_unit=S,
                                 sample_coords=coords_s, fit_id=fit_id)
            coords = proj.transform(X)
            coords[idx] = coords_s
            return proj, coords
    idx = _sample(n, fit_sample, seed)
    mean, comps = _pca_components(X[idx])
    proj = MapProjection("pca", d, seed, int(idx.size), run_id, space, mean=mean, components=comps, fit_id=fit_id)
    return proj, proj.transform(X) if n else np.zeros((0, 2), dtype=np.float32)


# -- state in the lake ---------------------------------------------------------------------------------------


def state_dir(lake_root: Path | str) -> Path:
    return Path(lake_root) / STATE_DIR


def save_projection(lake_root: Path | str, proj: MapProjection, keep: int = 2) -> Path:
    """Write ``proj`` as ``projection-<fit_id>.npz`` and make it current (``current.json``, atomic); older
    files beyond the ``keep`` newest are removed."""
    base = state_dir(lake_root)
    base.mkdir(parents=True, exist_ok=True)
    path = base / f"projection-{proj.fit_id}.npz"
    meta = {"format": FORMAT, "method": proj.method, "input_dim": proj.input_dim, "seed": proj.seed,
            "fitted_rows": proj.fitted_rows, "run_id": proj.run_id, "space": proj.space, "fit_id": proj.fit_id}
    arrays = {k: v for k, v in (("mean", proj.mean), ("components", proj.components),
                                ("sample_unit", proj.sample_unit), ("sample_coords", proj.sample_coords))
              if v is not None}
    fd, tmp = tempfile.mkstemp(prefix=".projection.", suffix=".npz", dir=base)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
        os.replace(tmp, path)
        pointer_tmp = base / f".current.{os.getpid()}.tmp"
        pointer_tmp.write_text(json.dumps({"file": path.name, **meta}, sort_keys=True))
        os.replace(pointer_tmp, base / "current.json")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    olds = sorted(base.glob("projection-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in olds[keep:]:
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink()
    return path


def load_projection(lake_root: Path | str) -> MapProjection | None:
    """The current projection, or None when there is none or it cannot be read (an unknown format, a
    damaged file): the caller then fits a new one."""
    pointer = state_dir(lake_root) / "current.json"
    try:
        current = json.loads(pointer.read_text())
        with np.load(state_dir(lake_root) / current["file"], allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                return None
            arrays = {k: z[k] for k in ("mean", "components", "sample_unit", "sample_coords") if k in z.files}
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return MapProjection(meta["method"], int(meta["input_dim"]), int(meta["seed"]), int(meta["fitted_rows"]),
                         meta["run_id"], meta["space"], fit_id=meta["fit_id"], **arrays)


# -- refreshing the map ------------------------------------------------------------------------------------

#: (record_ids, batch_ids, matrix, space spec) of every current record, or of one batch.
BatchReader = Callable[[str], tuple[list[str], list[str], np.ndarray, str]]
MAP_COLUMNS = ("record_id", "batch_id", "x", "y", "method", "space", "run_id")


@dataclass
class MapUpdate:
    """The map after :func:`update_map`: its rows (``MAP_COLUMNS``), whether the projection was refitted and
    why, how many rows were placed now and how many kept their stored coordinates."""

    frame: pl.DataFrame
    projection: MapProjection | None
    refit: bool
    reason: str
    placed: int
    kept: int


def _frame(ids, batch_ids, coords: np.ndarray, proj: MapProjection) -> pl.DataFrame:
    return pl.DataFrame({
        "record_id": list(ids), "batch_id": list(batch_ids), "x": coords[:, 0].astype(np.float64),
        "y": coords[:, 1].astype(np.float64), "method": proj.method, "space": proj.space, "run_id": proj.run_id,
    }, schema={"record_id": pl.String, "batch_id": pl.String, "x": pl.Float64, "y": pl.Float64,
               "method": pl.String, "space": pl.String, "run_id": pl.String})


def _refit_reason(previous: pl.DataFrame, proj: MapProjection | None, method: str, run_id: str | None) -> str:
    if proj is None:
        return "no stored projection"
    if proj.method != method:
        return f"method changed ({proj.method} -> {method})"
    if proj.run_id != run_id:
        return f"new cluster run {run_id} (projection of {proj.run_id})"
    if previous.height == 0:
        return "no stored map"
    stale = previous.filter((pl.col("run_id").ne_missing(proj.run_id)) | (pl.col("method") != proj.method)
                            | (pl.col("space") != proj.space))
    if stale.height:
        return f"{stale.height} stored map rows come from another fit"
    return ""


def update_map(previous: pl.DataFrame, current: pl.DataFrame, *, method: str, run_id: str | None, seed: int,
               projection: MapProjection | None, read_batch: BatchReader,
               fit_sample: int = DEFAULT_FIT_SAMPLE, tsne_sample: int = DEFAULT_TSNE_SAMPLE) -> MapUpdate:
    """The map of the ``current`` records (``record_id``, ``batch_id``), refitted or extended.

    The projection is refitted on the current records (read batch by batch with ``read_batch``: a seeded
    sample to fit, then every record placed) when there is none, when ``method``
    or the cluster run (``run_id``) changed -- i.e. only after a re-cluster -- or when the stored map or the
    new rows do not belong to it (another space or dimension). Otherwise the stored rows of current records
    keep their coordinates exactly, and only records new since the map was written (a new record, or a new
    version of one) are read, batch by batch (``read_batch``), and placed by the stored projection. Rows of
    records no longer current are dropped.
    """
    reason = _refit_reason(previous, projection, method, run_id)
    if not reason:
        assert projection is not None
        keys = ["record_id", "batch_id"]
        kept = previous.select(MAP_COLUMNS).join(current.select(keys), on=keys, how="semi")
        new = current.select(keys).join(previous.select(keys), on=keys, how="anti")
        parts = [kept]
        for (batch_id,), group in new.group_by("batch_id", maintain_order=True):
            ids, bids, X, spec = read_batch(str(batch_id))
            if spec != projection.space or (len(ids) and X.shape[1] != projection.input_dim):
                reason = f"batch {batch_id} is in another space ({spec}, {X.shape[1]} dims)"
                break
            wanted = set(group["record_id"].to_list())
            rows = np.array([i for i, r in enumerate(ids) if r in wanted], dtype=np.int64)
            if rows.size:
                parts.append(_frame([ids[i] for i in rows], [bids[i] for i in rows], projection.transform(X[rows]),
                                    projection))
        if not reason:
            frame = pl.concat(parts).sort("record_id")
            return MapUpdate(frame, projection, False, "placed new records against the stored projection",
                             frame.height - kept.height, kept.height)
    proj, frame = _refit(current, read_batch, method=method, run_id=run_id, seed=seed, fit_sample=fit_sample,
                         tsne_sample=tsne_sample)
    return MapUpdate(frame, proj, True, reason, frame.height, 0)


def _current_rows(current: pl.DataFrame, read_batch: BatchReader) -> Iterator[tuple[list[str], list[str], np.ndarray, str]]:
    """Per batch holding current records: its current rows (ids, batch ids, matrix, spec), one batch at a time."""
    for (batch_id,), group in current.group_by("batch_id", maintain_order=True):
        ids, bids, X, spec = read_batch(str(batch_id))
        wanted = set(group["record_id"].to_list())
        rows = np.array([i for i, r in enumerate(ids) if r in wanted], dtype=np.int64)
        if rows.size:
            yield [ids[i] for i in rows], [bids[i] for i in rows], X[rows], spec


def _refit(current: pl.DataFrame, read_batch: BatchReader, *, method: str, run_id: str | None, seed: int,
           fit_sample: int, tsne_sample: int) -> tuple[MapProjection | None, pl.DataFrame]:
    """Fit on a seeded sample drawn batch by batch, then place every current record batch by batch: one
    batch's vectors in memory at a time (plus the sample), whatever the corpus size."""
    current = current.sort("batch_id")
    n = current.height
    rng = np.random.default_rng(seed)
    sample_ids: list[str] = []
    sample_parts: list[np.ndarray] = []
    space, dim = "", 0
    p = min(1.0, max(fit_sample, tsne_sample if method == "tsne" else 0) / max(n, 1))
    for ids, _, X, spec in _current_rows(current, read_batch):
        if not sample_parts:
            space, dim = spec, X.shape[1]
        elif X.shape[1] != dim:
            raise ValueError(f"vectors of {dim} and {X.shape[1]} dims among the current records: re-run the "
                             "batches whose model or fusion changed")
        take = np.flatnonzero(rng.random(len(ids)) < p) if p < 1.0 else np.arange(len(ids))
        sample_ids += [ids[i] for i in take]
        sample_parts.append(np.array(X[take], dtype=np.float32))
    empty = _frame([], [], np.zeros((0, 2)), MapProjection(method, 0, seed, 0))
    if not sample_parts:
        return None, empty
    S = np.concatenate(sample_parts)
    del sample_parts
    proj, s_coords = fit_map_projection(S, method, seed=seed, fit_sample=fit_sample, tsne_sample=tsne_sample,
                                        run_id=run_id, space=space)
    # t-SNE keeps the coordinates it gave its own sample; rows it did not see are placed
    own = {} if proj.method != "tsne" else {
        sample_ids[i]: s_coords[i] for i in _sample(len(sample_ids), tsne_sample, seed).tolist()}
    del S
    parts = []
    for ids, bids, X, _ in _current_rows(current, read_batch):
        coords = proj.transform(X)
        for i, r in enumerate(ids):
            if r in own:
                coords[i] = own[r]
        parts.append(_frame(ids, bids, coords, proj))
    return proj, pl.concat(parts).sort("record_id") if parts else empty
