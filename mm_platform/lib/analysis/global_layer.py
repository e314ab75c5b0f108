"""The global layer (re-cluster, summaries) over the lake one batch partition at a time, in bounded memory.

The whole-matrix path holds every current record's vector at once (1M x 1,928 float32 = 7.7 GB before any
copy). Here the vectors are read per batch partition (zero-copy, :mod:`mm_platform.lib.arrays`) and only
what grows with the corpus is kept: the reduced rows (``n x 16``), labels and ids.

* :class:`LakeVectors` -- a chunk source (:data:`mm_platform.lib.analysis.global_chunks.Chunks`) over a per-record
  vector table such as ``fused_vectors``: current record versions only, batch by batch;
* :func:`corpus_chunks` -- a chunk source of any space computed from a batch's :class:`Corpus` (the fusion
  chosen by evidence in the fused layout, the shared-space mean, ...);
* :func:`sampled_corpus` -- the corpus of a seeded sample of current records (the whole corpus when it is
  small), for the work that compares fusions and modalities, which need every modality side by side;
* :func:`cluster_chunks` -- PCA fitted on a sample, every row reduced chunk by chunk, then the clustering on
  the reduced rows. When the sample holds every row this is exactly ``fit_projection`` + the clustering on
  its ``Z``, i.e. the whole-matrix result;
* :func:`representatives_by_id` -- the records closest to each cluster's centre, two passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from mm_platform.lib.analysis.clustering.stability import fit_projection
from mm_platform.lib.analysis.clustering import ClusterResult
from mm_platform.lib.vectors.corpus import Corpus, load_corpus
from mm_platform.lib.analysis.global_chunks import Chunks, chunked_representatives
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.arrays import embedding_matrix

#: Rows the PCA and the fusion comparison are fitted on (as ``fit_projection`` and the density fits do).
GLOBAL_SAMPLE = 20_000


class LakeVectors:
    """Chunk source over ``table``'s batch partitions: ``(record_ids, matrix)`` of the current versions, one
    partition at a time (sorted by record_id inside it). ``n`` counts the rows; ``batch_of`` maps a record to
    the batch of its current version."""

    def __init__(self, lake: Lake, table: str = "fused_vectors", current: pl.DataFrame | None = None):
        self.lake, self.table = lake, table
        self.current = lake.current_records() if current is None else current
        self.batches = [b for b in lake.partitions(table) if b in set(self.current["batch_id"].to_list())]
        self.batch_of: dict[str, str] = dict(self.current.select("record_id", "batch_id").iter_rows())
        self.n = self.current.height  # an upper bound until a pass counted the rows with a vector

    def __call__(self) -> Iterator[tuple[list[str], np.ndarray]]:
        for b in self.batches:
            df = self.lake.read_partition(self.table, b).join(self.current, on=["record_id", "batch_id"], how="semi")
            if df.height:
                df = df.sort("record_id")
                yield df["record_id"].to_list(), embedding_matrix(df)


def _current_rows(corpus: Corpus, current_ids: set[str], batch_of: Mapping[str, str]) -> np.ndarray:
    return np.array([r in current_ids and batch_of.get(r) == b for r, b in zip(corpus.record_ids, corpus.batch_ids,
                                                                             strict=True)], dtype=bool)


def corpus_chunks(lake: Lake, matrix_of: Callable[[Corpus], np.ndarray],
                  current: pl.DataFrame | None = None) -> Chunks:
    """Chunk source of ``matrix_of(batch corpus)`` per batch partition of ``fused_vectors``, current versions
    only; rows whose vector is all zeros (nothing to fuse) are left out, as the whole-matrix path does."""
    current = lake.current_records() if current is None else current
    batch_of = dict(current.select("record_id", "batch_id").iter_rows())
    ids = set(batch_of)
    batches = [b for b in lake.partitions("fused_vectors") if b in set(batch_of.values())]

    def gen() -> Iterator[tuple[list[str], np.ndarray]]:
        for b in batches:
            c = load_corpus(lake, batch_id=b)
            c = c.subset(_current_rows(c, ids, batch_of))
            if c.n == 0:
                continue
            X = np.asarray(matrix_of(c), dtype=np.float32)
            keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
            yield [c.record_ids[i] for i in keep], X[keep]

    return gen


def _concat_corpora(parts: Sequence[Corpus]) -> Corpus:
    mods: dict[str, int] = {}
    for p in parts:
        for m, block in p.blocks.items():
            mods.setdefault(m, block.shape[1])
    blocks, present = {}, {}
    for m, d in mods.items():
        blocks[m] = np.concatenate([p.blocks[m] if m in p.blocks else np.zeros((p.n, d), np.float32) for p in parts])
        present[m] = np.concatenate([p.present[m] if m in p.present else np.zeros(p.n, bool) for p in parts])
    models = {k: v for p in parts for k, v in p.models.items()}
    spaces = {k: v for p in parts for k, v in p.spaces.items()}
    return Corpus([r for p in parts for r in p.record_ids], [b for p in parts for b in p.batch_ids],
                  [x for p in parts for x in p.labels], blocks, present, models, spaces)


def sampled_corpus(lake: Lake, size: int | None = None, seed: int = 0) -> tuple[Corpus, bool]:
    """``(corpus, whole)``: every current record's corpus (``whole=True``, :func:`load_corpus` itself) when there
    are at most ``size``, else a seeded uniform sample of about ``size`` records read batch by batch (one
    batch's embeddings in memory at a time), in record_id order."""
    size = GLOBAL_SAMPLE if size is None else size
    current = lake.current_records()
    if current.height <= size:
        return load_corpus(lake), True
    rng = np.random.default_rng(seed)
    chosen = current.sort("record_id").filter(pl.Series(rng.random(current.height) < size / current.height))
    batch_of = dict(chosen.select("record_id", "batch_id").iter_rows())
    ids = set(batch_of)
    parts = []
    for b in sorted(set(batch_of.values())):
        c = load_corpus(lake, batch_id=b)
        c = c.subset(_current_rows(c, ids, batch_of))
        if c.n:
            parts.append(c)
    if not parts:
        return load_corpus(lake, batch_id="__none__"), False
    whole = _concat_corpora(parts)
    return whole.subset(np.argsort(np.array(whole.record_ids), kind="stable")), False


@dataclass
class ChunkedClusters:
    result: ClusterResult
    Z: np.ndarray  # unit rows of the reduced space, one per record (row order of the chunks)
    mean: np.ndarray | None
    components: np.ndarray | None
    record_ids: list[str]
    input_dim: int
    sampled: bool  # the PCA was fitted on a sample (False: on every row, the whole-matrix result)


def cluster_chunks(chunks: Chunks, n_hint: int, reduce_dim: int, cluster_z: Callable[[np.ndarray], ClusterResult],
                   seed: int = 0, sample_size: int | None = None) -> ChunkedClusters:
    """Fit the PCA on a seeded sample (Bernoulli ``sample_size / n_hint`` per row, one pass), reduce every row
    (second pass, skipped when the sample is every row) and cluster the reduced rows with ``cluster_z``."""
    sample_size = GLOBAL_SAMPLE if sample_size is None else sample_size
    p = 1.0 if n_hint <= sample_size else sample_size / n_hint
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    parts: list[np.ndarray] = []
    dim = 0
    for rids, X in chunks():
        ids.extend(rids)
        dim = X.shape[1]
        parts.append(np.array(X, dtype=np.float32) if p >= 1.0 else np.array(X[rng.random(X.shape[0]) < p]))
    if not ids:
        raise ValueError("no vectors to cluster")
    S = np.concatenate(parts)
    del parts
    mean, comps, Z = fit_projection(S, reduce_dim, seed=seed)
    if p < 1.0:
        del S, Z
        out = []
        for _, X in chunks():
            R = np.asarray(X, np.float32) if comps is None else (np.asarray(X, np.float32) - mean) @ comps.T
            norms = np.linalg.norm(R, axis=1, keepdims=True)
            out.append(np.divide(R, norms, out=np.zeros_like(R), where=norms > 1e-12).astype(np.float32))
        Z = np.concatenate(out)
        if Z.shape[0] != len(ids):
            raise ValueError(f"the chunks changed between passes ({len(ids)} then {Z.shape[0]} rows)")
    res = cluster_z(Z)
    res.params["reduction"] = f"pca{comps.shape[0]}" if comps is not None else "none"
    return ChunkedClusters(res, Z, mean, comps, ids, dim, sampled=p < 1.0)


def representatives_by_id(chunks: Chunks, labels_by_id: Mapping[str, int], n: int = 3) -> dict[int, list[str]]:
    """Per cluster, the ``n`` member ids most cosine-similar to the mean of its members' unit vectors (records
    without a label, and outliers, are no members); reads the ids once, then two passes of vectors."""
    labels = np.array([labels_by_id.get(r, -1) for rids, _ in _ids_only(chunks) for r in rids], dtype=np.int64)
    return chunked_representatives(chunks, labels, n=n)


def _ids_only(chunks: Chunks) -> Iterator[tuple[list[str], None]]:
    if isinstance(chunks, LakeVectors):  # ids without reading a vector
        for b in chunks.batches:
            df = chunks.lake.read_partition(chunks.table, b).select("record_id", "batch_id").join(
                chunks.current, on=["record_id", "batch_id"], how="semi").sort("record_id")
            yield df["record_id"].to_list(), None
        return
    for rids, _ in chunks():
        yield list(rids), None


def space_chunks(lake: Lake, strategy: str, *, layout: Mapping[str, int] | None = None,
                 weights: Mapping[str, float] | None = None, alignment=None,
                 mean_weights: str | Mapping[str, float] | None = None) -> Chunks:
    """Chunk source of the space a re-cluster runs on: the fusion chosen by evidence (``early`` with a
    ``layout`` and ``weights``: built from each batch's embeddings), the stored fused vectors (``early``), or the
    shared-space mean (``shared_mean`` with the ``alignment`` model)."""
    from mm_platform.lib.vectors.corpus import shared_mean_matrix
    from mm_platform.lib.analysis.fusion_choice import layout_matrix

    if strategy == "early" and layout is not None and weights:
        return corpus_chunks(lake, lambda c: layout_matrix(c.blocks, c.present, layout, weights))
    if strategy == "early":
        return LakeVectors(lake)
    if strategy == "shared_mean" and alignment is not None:
        return corpus_chunks(lake, lambda c: shared_mean_matrix(c, alignment, mean_weights))
    raise ValueError(f"no chunk source for fusion strategy {strategy!r} (early | shared_mean with an alignment)")


def cluster_means(chunks: Chunks, labels_by_id: Mapping[str, int], clusters: set[int] | None = None
                  ) -> dict[int, np.ndarray]:
    """cluster -> the mean of its members' vectors (float32), summed chunk by chunk in float64; records without
    a label count as -1. Only ``clusters`` when given."""
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for rids, X in chunks():
        lab = np.array([labels_by_id.get(r, -1) for r in rids], dtype=np.int64)
        for c in np.unique(lab).tolist():
            if clusters is not None and c not in clusters:
                continue
            rows = lab == c
            s = np.asarray(X, dtype=np.float32)[rows].sum(axis=0, dtype=np.float64)
            sums[c] = sums[c] + s if c in sums else s
            counts[c] = counts.get(c, 0) + int(rows.sum())
    return {c: (sums[c] / counts[c]).astype(np.float32) for c in sums}
