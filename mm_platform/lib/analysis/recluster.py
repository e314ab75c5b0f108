"""The full re-cluster, without Dagster: what the ``clusters`` multi-asset computes.

Clusters every current record in a PCA space of the vectors ``MM_FUSION_STRATEGY`` names, maps the new
clusters onto the previous ids by overlap (a cluster keeps its id across re-clusterings), clusters every
comparison space (other strategies, text+image, each modality) and scores them, and, unless the fusion is
fixed, chooses the fusion weights by evidence. :func:`recluster` returns the three tables the asset writes
(``recluster_assignments``, ``cluster_metrics``, ``modality_assignments``) with the model and the choice it
saves. Moved verbatim from ``defs/clusters/assets.py``; ``dg.Failure`` became :class:`ReclusterError` (the
asset turns it back into a failure with the same message).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import polars as pl

from mm_platform.lib.analysis.clustering.stability import (
    ClusterModel,
    IdMapping,
    apply_mapping,
    build_model,
    fit_projection,
    match_cluster_ids,
)
from mm_platform.lib.analysis.clustering import (
    ClusterResult,
    apply_outlier_policy,
    dbscan_cluster,
    external_scores,
    fit_on_sample,
    hdbscan_cluster,
    kmeans_auto,
)
from mm_platform.lib.vectors.corpus import (
    EMBEDDING_TABLES,
    Corpus,
    early_matrix,
    load_alignment,
    load_corpus,
    shared_mean_matrix,
)
from mm_platform.lib.analysis.fusion_choice import (
    FusionChoice,
    candidate_weights,
    layout_matrix,
    load_layout,
    save_choice,
    zeroed,
)
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.analysis.fusion_reuse import reuse_compared_fit
from mm_platform.lib.analysis.global_layer import cluster_chunks, sampled_corpus, space_chunks
from mm_platform.lib.analysis.supervised_weights import supervised_evidence
from mm_platform.lib.analysis.modality_weights import ModalityWeights, StrategyChoice, evidence_weights, select_partition
from mm_platform.lib.arrays import embedding_matrix


class ReclusterError(ValueError):
    """A configuration or state the re-cluster cannot work with (the message says what to do)."""


class ClusterSettings(Protocol):
    """What the re-cluster reads of the pipeline configuration (``PipelineConfigResource`` has it all)."""

    cluster_algorithm: str
    cluster_k: int
    cluster_k_max: int
    cluster_reduce_dim: int
    hdbscan_min_cluster_size: int
    seed: int
    fusion_strategy: str
    fusion_select: str
    outlier_policy: str
    dbscan_eps: str
    dbscan_min_samples: int

    def weights(self) -> dict[str, float]: ...


CLUSTER_MODEL_FILE = "_models/cluster_model.npz"
#: New records further than this quantile of the members' distances are outliers under HDBSCAN.
HDBSCAN_OUTLIER_QUANTILE = 0.99


def model_path(lake: Lake):
    return lake.root / CLUSTER_MODEL_FILE


def load_cluster_model(lake: Lake) -> ClusterModel | None:
    path = model_path(lake)
    return ClusterModel.load(path) if path.exists() else None


def current_vectors(lake: Lake, table: str) -> tuple[list[str], list[str], np.ndarray]:
    """(record_ids, batch_ids, matrix) of the current versions in a vector table, in a stable order."""
    df = lake.read_current(table).sort("record_id")
    if df.height == 0:
        return [], [], np.zeros((0, 0), dtype=np.float32)
    return df["record_id"].to_list(), df["batch_id"].to_list(), embedding_matrix(df)


ALGORITHMS = ("kmeans", "hdbscan", "dbscan")
#: Density clusterings above this many records are fitted on a seeded sample; the rest are assigned.
DENSITY_SAMPLE = 20_000


def run_clustering(X: np.ndarray, pipeline: ClusterSettings) -> tuple[ClusterResult, np.ndarray, tuple]:
    """Cluster ``X`` as configured in its PCA space; returns the result, the space, and (mean, components).
    K-Means picks k by silhouette (MiniBatchKMeans on a sample above 20k rows); HDBSCAN and DBSCAN are
    fitted on a sample above 20k rows and the rest assigned; seeds are fixed, so a re-run gives the same
    clusters."""
    mean, comps, Z = fit_projection(X, pipeline.cluster_reduce_dim, seed=pipeline.seed)
    res = cluster_reduced(Z, pipeline)
    res.params["reduction"] = f"pca{comps.shape[0]}" if comps is not None else "none"
    return res, Z, (mean, comps)


def cluster_reduced(Z: np.ndarray, pipeline: ClusterSettings) -> ClusterResult:
    """The configured clustering of rows already in the reduced space (see :func:`run_clustering`)."""
    if pipeline.cluster_algorithm not in ALGORITHMS:
        raise ReclusterError(f"unknown cluster algorithm {pipeline.cluster_algorithm!r} ({' | '.join(ALGORITHMS)})")
    if pipeline.cluster_algorithm == "hdbscan":
        res = fit_on_sample(Z, lambda A: hdbscan_cluster(A, min_cluster_size=pipeline.hdbscan_min_cluster_size,
                                                         seed=pipeline.seed),
                            sample_size=DENSITY_SAMPLE, seed=pipeline.seed)
    elif pipeline.cluster_algorithm == "dbscan":
        eps = float(pipeline.dbscan_eps) if pipeline.dbscan_eps.strip() else None
        res = fit_on_sample(Z, lambda A: dbscan_cluster(A, eps=eps, min_samples=pipeline.dbscan_min_samples,
                                                        seed=pipeline.seed),
                            sample_size=DENSITY_SAMPLE, seed=pipeline.seed)
    else:
        res = kmeans_auto(Z, k=pipeline.cluster_k or None, k_max=pipeline.cluster_k_max, seed=pipeline.seed)
    return res


def _stored_spec(lake: Lake, pipeline: ClusterSettings) -> str:
    """The fusion spec of the stored fused vectors (one partition read), or the shared-space strategy's name."""
    if pipeline.fusion_strategy != "early":
        return pipeline.fusion_strategy
    parts = lake.partitions("fused_vectors")
    df = lake.read_partition("fused_vectors", parts[-1]) if parts else None
    return df["fusion"][0] if df is not None and df.height else "early"


def layout_of(spec: str) -> str:
    """The fused layout a fusion spec describes, without its weights: ``early:text=1.2,image=0 (x)`` ->
    ``early:text,image``. Batches fused after a re-cluster chose other weights keep the same columns, so the
    map places them against the stored projection instead of refitting it (the next re-cluster refits)."""
    if not spec.startswith("early:"):
        return spec
    body = spec[len("early:"):].split(" (", 1)[0]
    return "early:" + ",".join(part.split("=", 1)[0].strip() for part in body.split(",") if part.strip())


def clustering_input(lake: Lake, pipeline: ClusterSettings, batch_id: str | None = None,
                     corpus: Corpus | None = None) -> tuple[list[str], list[str], np.ndarray, str]:
    """(record_ids, batch_ids, matrix, spec) of what the clusters are computed on, by ``MM_FUSION_STRATEGY``:
    ``early`` reads ``fused_vectors``; ``shared_mean`` averages each record's projections by the current
    alignment heads (from ``corpus`` when the caller already loaded it). ``batch_id`` restricts to one batch
    (eager assignment), else every current record."""
    if pipeline.fusion_strategy == "early":
        if batch_id is None:
            ids, batch_ids, X = current_vectors(lake, "fused_vectors")
            df = lake.read_current("fused_vectors").head(1)
        else:
            df = lake.read_partition("fused_vectors", batch_id)
            ids, batch_ids = df["record_id"].to_list(), df["batch_id"].to_list()
            X = embedding_matrix(df)
        return ids, batch_ids, X, (df["fusion"][0] if df.height else "early")
    if pipeline.fusion_strategy == "shared_mean":
        corpus = corpus if corpus is not None else load_corpus(lake, batch_id=batch_id)
        model = load_alignment(lake, corpus.models)
        if model is None:
            raise ReclusterError("MM_FUSION_STRATEGY=shared_mean needs a current alignment model: materialize "
                             "shared_space_model (it runs with `mm-platform recluster`)")
        X = shared_mean_matrix(corpus, model, pipeline.weights())
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
        return ([corpus.record_ids[i] for i in keep], [corpus.batch_ids[i] for i in keep], X[keep],
                f"shared_mean@{model.version}")
    raise ReclusterError(f"unknown fusion strategy {pipeline.fusion_strategy!r} (early | shared_mean)")


def _strategy_rows(corpus: Corpus, alignment, pipeline: ClusterSettings) -> dict[str, tuple[list, np.ndarray]]:
    """The fusion strategies other than the selected one (which the run clusters already), and text+image
    alone, to compare in ``cluster_metrics``: space -> (ids, X)."""
    spaces: dict[str, np.ndarray] = {}
    if pipeline.fusion_strategy != "early":
        spaces["fused:early"] = early_matrix(corpus, pipeline.weights())
    pair = [m for m in ("text", "image") if m in corpus.modalities()]
    if len(pair) == 2 and len(corpus.modalities()) > 2:
        spaces["fused:text+image"] = early_matrix(corpus, pipeline.weights(), pair)
    if alignment is not None and pipeline.fusion_strategy != "shared_mean":
        spaces["fused:shared_mean"] = shared_mean_matrix(corpus, alignment, pipeline.weights())
    out = {}
    for space, X in spaces.items():
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
        out[space] = ([corpus.record_ids[i] for i in keep], X[keep])
    return out


#: comparison space -> the fusion candidate it is (single modalities: ``single_<m>``)
SPACE_CANDIDATE = {"fused:early": "early_uniform", "fused:early_evidence": "early_evidence",
                   "fused:text+image": "text+image"}


@dataclass
class FusionSelection:
    """Every comparison space clustered, the evidence weights, and the fusion chosen from them."""

    evidence: ModalityWeights
    choice: StrategyChoice
    candidates: dict[str, dict[str, float]]
    fitted: dict[str, tuple[list[str], ClusterResult]]
    by_evidence: bool
    weights: dict[str, float] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    batch_ids: list[str] = field(default_factory=list)
    X: np.ndarray | None = None
    spec: str = ""
    fitted_main: tuple | None = None
    evidence_s: float = 0.0
    seconds: float = 0.0  # evidence + selection (+ the extra clustering when no compared space is reused)
    cluster_seconds: dict[str, float] = field(default_factory=dict)
    note: str = ""

    def record(self) -> dict:
        return {**self.choice.as_dict(), "applied": self.by_evidence, "weights": self.weights,
                "zeroed": zeroed(self.weights) if self.weights else [], "note": self.note,
                "evidence": self.evidence.as_dict(), "seconds": round(self.seconds, 4)}


def _comparison_spaces(corpus: Corpus, alignment, pipeline: ClusterSettings, evidence: ModalityWeights,
                       cands: dict[str, dict[str, float]], layout: dict[str, int] | None) -> dict[str, tuple]:
    """space -> (ids, X) of every space clustered for comparison (and as a fusion candidate)."""
    compared = _strategy_rows(corpus, alignment, pipeline)
    if layout is not None:  # by evidence: uniform and evidence fusion in the fixed fused layout
        for space in ("fused:early", "fused:early_evidence"):
            X = layout_matrix(corpus.blocks, corpus.present, layout, cands[SPACE_CANDIDATE[space]])
            keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
            compared[space] = ([corpus.record_ids[i] for i in keep], X[keep])
    elif len(corpus.modalities()) > 1:
        X_ev = early_matrix(corpus, evidence.weights)
        keep_ev = np.flatnonzero(np.linalg.norm(X_ev, axis=1) > 0)
        compared["fused:early_evidence"] = ([corpus.record_ids[i] for i in keep_ev], X_ev[keep_ev])
    for modality in corpus.modalities():
        rows = np.flatnonzero(corpus.present[modality])
        compared[modality] = ([corpus.record_ids[i] for i in rows], corpus.blocks[modality][rows])
    return compared


def _select_fusion(lake: Lake, corpus: Corpus, alignment, pipeline: ClusterSettings) -> FusionSelection:
    """Cluster every comparison space, score the fusion candidates among them on the modalities' kNN graphs
    (labels when ``MM_FUSION_SELECT=auto`` and enough records are labelled) and, unless the fusion is fixed,
    build the chosen fusion in the fused layout, reusing a compared space's clustering when it is the same."""
    t0 = time.perf_counter()
    evidence = evidence_weights({m: corpus.blocks[m] for m in corpus.modalities()}, seed=pipeline.seed)
    evidence_s = time.perf_counter() - t0
    by_evidence = pipeline.fusion_strategy == "early" and pipeline.fusion_select != "fixed"
    layout = load_layout(lake.root) if by_evidence else None
    note = ""
    if by_evidence and (layout is None or len(corpus.modalities()) < 2):
        note = ("one modality: nothing to weigh" if layout is not None
                else "no fused layout recorded yet (re-run an ingest): configured weights kept")
        by_evidence = False
    cands = candidate_weights(corpus.modalities(), evidence, pipeline.weights())
    compared = _comparison_spaces(corpus, alignment, pipeline, evidence, cands, layout)
    fitted, full_fits, cluster_s = {}, {}, {}
    use_labels, label_s = pipeline.fusion_select == "auto", 0.0
    for space in sorted(compared, key=lambda s: s.startswith("fused:")):  # single modalities first
        if space == "fused:early_evidence" and by_evidence and use_labels:  # with labels: weights from them
            t2 = time.perf_counter()
            sup = supervised_evidence(corpus, fitted, evidence.cosine_sd, layout)
            if sup is not None:
                cands["early_evidence"], compared[space], note = sup.weights, (sup.ids, sup.X), sup.note()
            label_s = time.perf_counter() - t2
        s_ids, s_X = compared[space]
        if len(s_ids) < 3:
            continue
        t1 = time.perf_counter()
        full_fits[space] = run_clustering(s_X, pipeline)
        cluster_s[space] = time.perf_counter() - t1
        fitted[space] = (s_ids, full_fits[space][0])
    t1 = time.perf_counter()
    row_of = {r: i for i, r in enumerate(corpus.record_ids)}
    partitions = {}
    for space, (s_ids, s_res) in fitted.items():
        cand = SPACE_CANDIDATE.get(space) or (f"single_{space}" if space in EMBEDDING_TABLES else None)
        if cand in cands:
            lab = np.full(corpus.n, -1, dtype=np.int64)
            lab[[row_of[r] for r in s_ids]] = s_res.labels
            partitions[cand] = lab
    choice = (select_partition(partitions, evidence, labels=corpus.labels if use_labels else None) if partitions
              else StrategyChoice("early_uniform", {}, "nothing to compare"))
    sel = FusionSelection(evidence, choice, cands, fitted, by_evidence, evidence_s=evidence_s,
                          cluster_seconds=cluster_s, note=note)
    if by_evidence:
        sel.weights = cands.get(choice.best, cands["early_uniform"])
        X = layout_matrix(corpus.blocks, corpus.present, layout, sel.weights)
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
        sel.ids, sel.batch_ids, sel.X = [corpus.record_ids[i] for i in keep], [corpus.batch_ids[i] for i in keep], X[keep]
        sel.spec = "early:" + ",".join(f"{m}={w:g}" for m, w in sel.weights.items()) + f" ({choice.best})"
        # the compared space's clustering when it is the chosen fusion (single modalities lifted into the layout)
        sel.fitted_main = reuse_compared_fit(choice.best, sel.ids, sel.X, layout, compared, full_fits)
    sel.seconds = evidence_s + label_s + time.perf_counter() - t1
    return sel


def _metrics_row(run_id: str, space: str, res: ClusterResult, scores: dict, n: int, fp: str, **extra) -> dict:
    return {
        "run_id": run_id, "created_at": datetime.now(UTC), "algorithm": res.algorithm, "space": space,
        "k": res.k, "n_records": n, "n_outliers": res.n_outliers, "silhouette": res.silhouette,
        "nmi": scores.get("nmi"), "ari": scores.get("ari"), "n_labelled": scores.get("n_labelled", 0),
        "input_fingerprint": fp, "params_json": json.dumps(res.params, default=str, sort_keys=True),
        "moved": extra.get("moved"), "common": extra.get("common"), "new_clusters": extra.get("new_clusters"),
        "retired_clusters": extra.get("retired_clusters"), "agreement_nmi": extra.get("agreement_nmi"),
        "fusion_strategy": extra.get("fusion_strategy"), "weights_json": extra.get("weights_json"),
        "selection_score": extra.get("selection_score"), "selection_json": extra.get("selection_json"),
    }


def assignment_frame(record_ids, batch_ids, labels, distances, algorithm: str, run_id: str,
                     is_outlier: np.ndarray | None = None) -> pl.DataFrame:
    labels = np.asarray(labels)
    is_outlier = labels == -1 if is_outlier is None else np.asarray(is_outlier, dtype=bool)
    return pl.DataFrame(
        {
            "record_id": list(record_ids), "batch_id": list(batch_ids),
            "cluster_id": labels.astype(np.int32), "algorithm": [algorithm] * len(labels),
            "distance_to_centroid": np.asarray(distances, dtype=np.float64), "is_outlier": is_outlier,
            "run_id": [run_id] * len(labels), "clustered_at": [datetime.now(UTC)] * len(labels),
        },
        schema_overrides={"record_id": pl.String, "batch_id": pl.String},
    )


def modality_agreement(cl: pl.DataFrame, per_modality: pl.DataFrame) -> dict[int, dict[str, float]]:
    """cluster -> modality -> share of the cluster's members (having that modality) that the modality's own
    clustering puts in its most common cluster for them (1.0 = the modality alone agrees completely)."""
    if per_modality.height == 0:
        return {}
    joined = cl.select("record_id", pl.col("cluster_id").alias("fused")).join(
        per_modality.select("record_id", "modality", pl.col("cluster_id").alias("own")), on="record_id")
    top = joined.group_by("fused", "modality", "own").len().group_by("fused", "modality").agg(
        (pl.col("len").max() / pl.col("len").sum()).alias("agreement"))
    out: dict[int, dict[str, float]] = {}
    for fused, modality, value in top.iter_rows():
        out.setdefault(int(fused), {})[modality] = round(float(value), 4)
    return out




@dataclass
class Recluster:
    """One full re-cluster: the three tables the asset writes and what its metadata reports."""

    run_id: str
    spec: str
    res: ClusterResult
    mapping: IdMapping
    sel: FusionSelection
    assignments: pl.DataFrame  # -> recluster_assignments
    metrics: pl.DataFrame  # -> cluster_metrics
    modality_assignments: pl.DataFrame  # -> modality_assignments (empty frame: None)
    chosen_json: str | None
    seconds: float


def recluster(lake: Lake, pipeline: ClusterSettings, run_id: str, fingerprint: str) -> Recluster | None:
    """Re-cluster every current record (see the module docstring); saves the cluster model and, when chosen
    by evidence, the fusion choice under the lake root. None when there is nothing to cluster."""
    # above GLOBAL_SAMPLE records the comparison runs on a sample and the clustering batch by batch
    corpus, whole = sampled_corpus(lake, seed=pipeline.seed)
    ids, batch_ids, X, spec = (clustering_input(lake, pipeline, corpus=corpus) if whole
                               else (corpus.record_ids, corpus.batch_ids, None, _stored_spec(lake, pipeline)))
    if not ids:
        return None
    truth = dict(lake.read_current("aligned_records").select("record_id", "label").iter_rows())
    previous = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    t_start = time.perf_counter()
    alignment = load_alignment(lake, corpus.models)
    if not whole and pipeline.fusion_strategy == "shared_mean":
        if alignment is None:
            raise ReclusterError("MM_FUSION_STRATEGY=shared_mean needs a current shared space: materialize "
                                 "shared_space_model (it runs with `mm-platform recluster`)")
        spec = f"shared_mean@{alignment.version}"
    sel = _select_fusion(lake, corpus, alignment, pipeline)
    if sel.by_evidence:
        ids, batch_ids, X, spec = sel.ids, sel.batch_ids, sel.X, sel.spec
    t_main = time.perf_counter()
    if whole:
        res, Z, (mean, comps) = sel.fitted_main if sel.fitted_main is not None else run_clustering(X, pipeline)
        input_dim = X.shape[1]
    else:  # batch by batch: PCA fitted on a sample, every row reduced, then clustered in the reduced space
        current = lake.current_records()
        source = space_chunks(lake, pipeline.fusion_strategy, layout=load_layout(lake.root) if sel.by_evidence
                              else None, weights=sel.weights, alignment=alignment, mean_weights=pipeline.weights())
        cc = cluster_chunks(source, current.height, pipeline.cluster_reduce_dim,
                            lambda A: cluster_reduced(A, pipeline), seed=pipeline.seed)
        res, Z, mean, comps, input_dim = cc.result, cc.Z, cc.mean, cc.components, cc.input_dim
        batch_of = dict(current.select("record_id", "batch_id").iter_rows())
        ids, batch_ids = cc.record_ids, [batch_of[r] for r in cc.record_ids]
    if sel.by_evidence and sel.fitted_main is None:
        sel.seconds += time.perf_counter() - t_main  # the chosen fusion is no compared space: one more clustering
    raw_labels, is_outlier = apply_outlier_policy(res.labels, Z, pipeline.outlier_policy)
    mapping = match_cluster_ids(previous, ids, raw_labels)
    stable = apply_mapping(raw_labels, mapping)
    model = build_model(
        run_id, res.algorithm, Z, stable, mean, comps, input_dim,
        distance_quantile=HDBSCAN_OUTLIER_QUANTILE if res.algorithm in ("hdbscan", "dbscan") else None,
    )
    model.save(model_path(lake))
    centroid_of = dict(zip(model.cluster_ids.tolist(), model.centroids, strict=True))
    centroids = np.stack([centroid_of.get(int(c), np.zeros(Z.shape[1], np.float32)) for c in stable])
    dist = np.where(stable >= 0, 1.0 - np.sum(Z * centroids, axis=1), np.nan)

    scores = external_scores(stable, [truth.get(r) for r in ids])
    chosen_json = json.dumps(sel.weights, sort_keys=True) if sel.weights else None
    metrics = [_metrics_row(run_id, "fused", res, scores, len(ids), fingerprint, moved=mapping.moved,
                            common=mapping.common, new_clusters=len(mapping.new_ids),
                            retired_clusters=len(mapping.retired_ids), agreement_nmi=1.0, fusion_strategy=spec,
                            weights_json=chosen_json, selection_score=sel.choice.scores.get(sel.choice.best),
                            selection_json=json.dumps(sel.record(), sort_keys=True, default=str))]
    if not sel.by_evidence:
        # the selected strategy's own row is this clustering, not a second run of it
        selected = f"fused:{pipeline.fusion_strategy}"
        metrics.append(_metrics_row(run_id, selected, res, scores, len(ids), fingerprint, agreement_nmi=1.0,
                                    fusion_strategy=pipeline.fusion_strategy))
    comparison, modality_rows = _comparison_rows(run_id, sel, dict(zip(ids, stable.tolist(), strict=True)), truth,
                                                 fingerprint)
    metrics += comparison
    if sel.by_evidence:
        save_choice(lake.root, FusionChoice(sel.weights, sel.choice.best, run_id, sel.choice.reason,
                                            zeroed(sel.weights), sel.choice.scores))
    seconds = time.perf_counter() - t_start
    return Recluster(
        run_id, spec, res, mapping, sel,
        assignments=assignment_frame(ids, batch_ids, stable, dist, res.algorithm, run_id, is_outlier=is_outlier),
        metrics=pl.DataFrame(metrics),
        modality_assignments=pl.concat(modality_rows) if modality_rows else None,
        chosen_json=chosen_json, seconds=seconds,
    )


def _comparison_rows(run_id: str, sel: FusionSelection, fused_of: dict[str, int], truth: dict,
                     fingerprint: str) -> tuple[list[dict], list[pl.DataFrame]]:
    """``cluster_metrics`` rows of every compared space (scores against the labels, agreement with the fused
    clustering) and the single modalities' own assignments."""
    metrics, modality_rows = [], []
    for space, (s_ids, s_res) in sel.fitted.items():
        s_scores = external_scores(s_res.labels, [truth.get(r) for r in s_ids])
        agreement = external_scores(s_res.labels, [str(fused_of.get(r)) if r in fused_of else None for r in s_ids])
        cand = SPACE_CANDIDATE.get(space) or (f"single_{space}" if space in EMBEDDING_TABLES else None)
        metrics.append(_metrics_row(run_id, space, s_res, s_scores, len(s_ids), fingerprint,
                                    agreement_nmi=agreement.get("nmi"), fusion_strategy=space.partition(":")[2] or None,
                                    weights_json=json.dumps(sel.candidates[cand], sort_keys=True)
                                    if cand in sel.candidates else None,
                                    selection_score=sel.choice.scores.get(cand)))
        if space in EMBEDDING_TABLES:
            modality_rows.append(pl.DataFrame({"record_id": s_ids, "modality": space,
                                               "cluster_id": s_res.labels.astype(np.int32), "run_id": run_id}))
    return metrics, modality_rows


#: The lake tables a full re-cluster writes (one asset spec each).
RECLUSTER_TABLES = ("recluster_assignments", "cluster_metrics", "modality_assignments")
