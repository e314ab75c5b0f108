"""Clusters layer: full re-clusters with stable ids, eager assignment of new batches, explanations.

- ``clusters`` re-clusters every current record from its fused vector (in a PCA space), maps the new
  clusters onto the previous ids by overlap so a cluster keeps its id across re-clusterings, scores every
  space against the labels, and saves the cluster model (projection + centroids). It runs on a cron
  automation condition (nightly), when it has never run, and on demand (``mm-platform recluster``).
- ``cluster_assignments`` places each new batch's records into the existing clusters at once.
- ``cluster_summary`` explains the current clusters.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl

from mm_platform.defs.automation import GLOBAL_AUTOMATION, RECLUSTER_AUTOMATION
from mm_platform.defs.embeddings.assets import audio_embeddings, image_embeddings, tabular_embeddings, text_embeddings
from mm_platform.defs.fusion.assets import EMBEDDING_TABLES, fused_vectors
from mm_platform.defs.ingest.assets import aligned_records, raw_records, raw_text
from mm_platform.defs.metadata import md_escape, preview, table
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import EncodersResource, PipelineConfigResource, WarehouseResource
from mm_platform.lib.cluster_stability import ClusterModel, apply_mapping, build_model, fit_projection, match_cluster_ids
from mm_platform.lib.clustering import (
    ClusterResult,
    apply_outlier_policy,
    dbscan_cluster,
    external_scores,
    fit_on_sample,
    hdbscan_cluster,
    kmeans_auto,
    label_summary,
    representatives,
    top_terms,
)
from mm_platform.lib.cluster_names import cluster_names
from mm_platform.lib.embedding_map import png_markdown, scatter_png
from mm_platform.lib.map_projection import load_projection, save_projection, update_map
from mm_platform.lib.corpus import Corpus, early_matrix, load_alignment, load_corpus, shared_mean_matrix
from mm_platform.lib.global_layer import (LakeVectors, cluster_chunks, cluster_means, representatives_by_id,
                                         sampled_corpus, space_chunks)
from mm_platform.lib.lake import Lake
from mm_platform.lib.settings import serve_url
from mm_platform.lib.ledger import fused_fingerprint
from mm_platform.lib.fusion_choice import (
    FusionChoice,
    candidate_weights,
    layout_matrix,
    load_layout,
    save_choice,
    zeroed,
)
from mm_platform.lib.modality_weights import ModalityWeights, StrategyChoice, evidence_weights, select_partition
from mm_platform.lib.vectors import embedding_matrix

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


def run_clustering(X: np.ndarray, pipeline: PipelineConfigResource) -> tuple[ClusterResult, np.ndarray, tuple]:
    """Cluster ``X`` as configured in its PCA space; returns the result, the space, and (mean, components).
    K-Means picks k by silhouette (MiniBatchKMeans on a sample above 20k rows); HDBSCAN and DBSCAN are
    fitted on a sample above 20k rows and the rest assigned; seeds are fixed, so a re-run gives the same
    clusters."""
    mean, comps, Z = fit_projection(X, pipeline.cluster_reduce_dim, seed=pipeline.seed)
    res = cluster_reduced(Z, pipeline)
    res.params["reduction"] = f"pca{comps.shape[0]}" if comps is not None else "none"
    return res, Z, (mean, comps)


def cluster_reduced(Z: np.ndarray, pipeline: PipelineConfigResource) -> ClusterResult:
    """The configured clustering of rows already in the reduced space (see :func:`run_clustering`)."""
    if pipeline.cluster_algorithm not in ALGORITHMS:
        raise dg.Failure(f"unknown cluster algorithm {pipeline.cluster_algorithm!r} ({' | '.join(ALGORITHMS)})")
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


def _stored_spec(lake: Lake, pipeline: PipelineConfigResource) -> str:
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


def _map_input(lake: Lake, pipeline: PipelineConfigResource,
               batch_id: str) -> tuple[list[str], list[str], np.ndarray, str]:
    ids, batch_ids, X, spec = clustering_input(lake, pipeline, batch_id)
    return ids, batch_ids, X, layout_of(spec)


def clustering_input(lake: Lake, pipeline: PipelineConfigResource, batch_id: str | None = None,
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
            raise dg.Failure("MM_FUSION_STRATEGY=shared_mean needs a current alignment model: materialize "
                             "alignment_model (it runs with `mm-platform recluster`)")
        X = shared_mean_matrix(corpus, model, pipeline.weights())
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
        return ([corpus.record_ids[i] for i in keep], [corpus.batch_ids[i] for i in keep], X[keep],
                f"shared_mean@{model.version}")
    raise dg.Failure(f"unknown fusion strategy {pipeline.fusion_strategy!r} (early | shared_mean)")


def _strategy_rows(corpus: Corpus, alignment, pipeline: PipelineConfigResource) -> dict[str, tuple[list, np.ndarray]]:
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


def _comparison_spaces(corpus: Corpus, alignment, pipeline: PipelineConfigResource, evidence: ModalityWeights,
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


def _select_fusion(lake: Lake, corpus: Corpus, alignment, pipeline: PipelineConfigResource) -> FusionSelection:
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
    for space, (s_ids, s_X) in compared.items():
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
    use_labels = pipeline.fusion_select == "auto"
    choice = (select_partition(partitions, evidence, labels=corpus.labels if use_labels else None) if partitions
              else StrategyChoice("early_uniform", {}, "nothing to compare"))
    sel = FusionSelection(evidence, choice, cands, fitted, by_evidence, evidence_s=evidence_s,
                          cluster_seconds=cluster_s, note=note)
    sel.seconds = evidence_s + time.perf_counter() - t1
    if by_evidence:
        sel.weights = cands.get(choice.best, cands["early_uniform"])
        X = layout_matrix(corpus.blocks, corpus.present, layout, sel.weights)
        keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
        sel.ids, sel.batch_ids, sel.X = [corpus.record_ids[i] for i in keep], [corpus.batch_ids[i] for i in keep], X[keep]
        sel.spec = "early:" + ",".join(f"{m}={w:g}" for m, w in sel.weights.items()) + f" ({choice.best})"
        reused = {"early_uniform": "fused:early", "early_evidence": "fused:early_evidence"}.get(choice.best)
        if reused in full_fits and len(compared[reused][0]) == len(sel.ids):
            sel.fitted_main = full_fits[reused]
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


@dg.asset(
    deps=[fused_vectors, text_embeddings, image_embeddings, audio_embeddings, tabular_embeddings, aligned_records,
          raw_records, dg.AssetKey("alignment_model")],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=RECLUSTER_AUTOMATION,
)
def clusters(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """A full re-cluster of every current record (PCA space; K-Means with k by silhouette, HDBSCAN or DBSCAN
    with outliers as -1, kept or moved to the nearest cluster by ``MM_OUTLIER_POLICY``), on the vectors of
    ``MM_FUSION_STRATEGY``: ``early`` (the fused vectors) or ``shared_mean`` (the mean of a record's
    shared-space projections). New clusters take the ids of the previous clusters they overlap most, so a
    cluster keeps its id and name as data grows; how many records moved is recorded. Every other fusion
    strategy, text+image alone, and each single modality are clustered the same way for comparison:
    silhouette, NMI/ARI against the labels and agreement (NMI) with the fused clustering go to
    ``cluster_metrics``. Saves the cluster model that places new batches at once.

    Unless ``MM_FUSION_SELECT=fixed`` (or ``MM_FUSION_STRATEGY=shared_mean``), the fusion itself is chosen here:
    evidence weights (kNN agreement between modalities, no labels) are computed on a sample, every fusion
    candidate (uniform, evidence weights, each single modality, text+image) is scored on the modalities' kNN
    graphs (or by NMI on the labels when at least 20 records are labelled and the mode is ``auto``), the best
    is clustered as the default and its weights are stored for the next batches' ``fused_vectors``, with the
    evidence and the reason in ``cluster_metrics`` (``weights_json``, ``selection_score``, ``selection_json``)
    and in the metadata (``fusion_choice``, ``modalities_weighted_zero``)."""
    lake = warehouse.lake
    run_id = uuid.uuid4().hex[:12]
    # above GLOBAL_SAMPLE records the comparison runs on a sample and the clustering batch by batch
    corpus, whole = sampled_corpus(lake, seed=pipeline.seed)
    ids, batch_ids, X, spec = (clustering_input(lake, pipeline, corpus=corpus) if whole
                               else (corpus.record_ids, corpus.batch_ids, None, _stored_spec(lake, pipeline)))
    fp = fused_fingerprint(lake)
    if not ids:
        lake.write_global("recluster_assignments", pl.DataFrame(schema=lake.read_table("recluster_assignments").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "k": 0})
    truth = dict(lake.read_current("aligned_records").select("record_id", "label").iter_rows())
    previous = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    t_start = time.perf_counter()
    alignment = load_alignment(lake, corpus.models)
    if not whole and pipeline.fusion_strategy == "shared_mean":
        if alignment is None:
            raise dg.Failure("MM_FUSION_STRATEGY=shared_mean needs a current alignment model: materialize "
                             "alignment_model (it runs with `mm-platform recluster`)")
        spec = f"shared_mean@{alignment.version}"
    sel = _select_fusion(lake, corpus, alignment, pipeline)
    if sel.by_evidence:
        ids, batch_ids, X, spec = sel.ids, sel.batch_ids, sel.X, sel.spec
    t_main = time.perf_counter()
    if whole:
        res, Z, (mean, comps) = sel.fitted_main if sel.fitted_main is not None else run_clustering(X, pipeline)
        input_dim = X.shape[1]
    else:
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
    metrics = [_metrics_row(run_id, "fused", res, scores, len(ids), fp, moved=mapping.moved, common=mapping.common,
                            new_clusters=len(mapping.new_ids), retired_clusters=len(mapping.retired_ids),
                            agreement_nmi=1.0, fusion_strategy=spec, weights_json=chosen_json,
                            selection_score=sel.choice.scores.get(sel.choice.best),
                            selection_json=json.dumps(sel.record(), sort_keys=True, default=str))]
    if not sel.by_evidence:
        # the selected strategy's own row is this clustering, not a second run of it
        selected = f"fused:{pipeline.fusion_strategy}"
        metrics.append(_metrics_row(run_id, selected, res, scores, len(ids), fp, agreement_nmi=1.0,
                                    fusion_strategy=pipeline.fusion_strategy))
    fused_of = dict(zip(ids, stable.tolist(), strict=True))
    modality_rows = []
    for space, (s_ids, s_res) in sel.fitted.items():
        s_scores = external_scores(s_res.labels, [truth.get(r) for r in s_ids])
        agreement = external_scores(s_res.labels, [str(fused_of.get(r)) if r in fused_of else None for r in s_ids])
        cand = SPACE_CANDIDATE.get(space) or (f"single_{space}" if space in EMBEDDING_TABLES else None)
        metrics.append(_metrics_row(run_id, space, s_res, s_scores, len(s_ids), fp,
                                    agreement_nmi=agreement.get("nmi"), fusion_strategy=space.partition(":")[2] or None,
                                    weights_json=json.dumps(sel.candidates[cand], sort_keys=True)
                                    if cand in sel.candidates else None,
                                    selection_score=sel.choice.scores.get(cand)))
        if space in EMBEDDING_TABLES:
            modality_rows.append(pl.DataFrame({"record_id": s_ids, "modality": space,
                                               "cluster_id": s_res.labels.astype(np.int32), "run_id": run_id}))
    lake.write_global("modality_assignments", pl.concat(modality_rows) if modality_rows else
                      pl.DataFrame(schema=lake.read_table("modality_assignments").schema))
    if sel.by_evidence:
        save_choice(lake.root, FusionChoice(sel.weights, sel.choice.best, run_id, sel.choice.reason,
                                            zeroed(sel.weights), sel.choice.scores))
    recluster_s = time.perf_counter() - t_start

    df = assignment_frame(ids, batch_ids, stable, dist, res.algorithm, run_id, is_outlier=is_outlier)
    lake.write_global("recluster_assignments", df)
    metrics_df = pl.DataFrame(metrics)
    lake.write_global("cluster_metrics", metrics_df)
    sizes = df.group_by("cluster_id").len().sort("cluster_id")
    md: dict[str, object] = {
        "dagster/row_count": df.height,
        "algorithm": res.algorithm,
        "fusion_strategy": spec,
        "outlier_policy": pipeline.outlier_policy,
        "k": res.k,
        "outliers": res.n_outliers,
        "silhouette": res.silhouette,
        "reduction": res.params.get("reduction"),
        "cluster_sizes": {str(c): int(n) for c, n in sizes.iter_rows()},
        "k_scores": {str(k): round(v, 4) for k, v in res.k_scores.items()},
        "records_moved": mapping.moved,
        "records_compared": mapping.common,
        "moved_fraction": round(mapping.moved_fraction, 4),
        "new_cluster_ids": mapping.new_ids,
        "retired_cluster_ids": mapping.retired_ids,
        "run_id": run_id,
        # one row per space (the selected fusion, each other strategy, text+image, each modality)
        "metrics": table(metrics_df.sort("nmi", descending=True, nulls_last=True),
                         ["space", "algorithm", "k", "n_records", "n_outliers", "silhouette", "nmi", "ari",
                          "agreement_nmi"], n=50),
        "evidence_weights": dg.MetadataValue.json({**sel.evidence.as_dict(), "seconds": round(sel.evidence_s, 4)}),
        "fusion_choice": dg.MetadataValue.json(sel.record()),
        "fusion_weights": chosen_json or "",
        "weighting_seconds": round(sel.seconds, 4),
        "weighting_share_of_recluster": round(sel.seconds / recluster_s, 4) if recluster_s > 0 else 0.0,
    }
    zero = zeroed(sel.weights) if sel.by_evidence else sel.evidence.zeroed
    if zero:
        md["modalities_weighted_zero"] = ", ".join(zero)
    context.log.info(f"re-clustered {len(ids)} records into {res.k} clusters; {mapping.moved} of "
                     f"{mapping.common} previously clustered records changed cluster")
    return dg.MaterializeResult(metadata=md)


@dg.asset(
    partitions_def=batches_partitions,
    deps=[fused_vectors, raw_records, text_embeddings, image_embeddings, audio_embeddings, tabular_embeddings],
    group_name="clusters",
    kinds={"numpy", "parquet"},
    tags={"layer": "clusters"},
)
def cluster_assignments(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """The batch's records placed into the existing clusters at once (nearest centroid of the last full
    re-cluster, in its PCA space, on the same fusion strategy), so new data is clustered without waiting for
    the next re-cluster. Empty until a first full clustering exists."""
    batch_id = context.partition_key
    lake = warehouse.lake
    model = load_cluster_model(lake)
    ids, batch_ids, X, _ = clustering_input(lake, pipeline, batch_id) if model is not None else ([], [], None, "")
    if model is None or not ids:
        lake.write_partition("cluster_assignments", batch_id, pl.DataFrame(schema=lake.read_table("cluster_assignments").schema))
        reason = "no cluster model yet: the first full clustering places these records" if model is None else "no vectors"
        return dg.MaterializeResult(metadata={"dagster/row_count": 0, "note": reason})
    if X.shape[1] != model.input_dim:
        raise dg.Failure(
            f"fused vectors of batch {batch_id} have {X.shape[1]} dims, the cluster model expects "
            f"{model.input_dim} (model or fusion changed): run a full re-cluster (`mm-platform recluster`)"
        )
    labels, dist = model.assign(X)
    df = assignment_frame(ids, batch_ids, labels, dist, f"{model.algorithm}+assign", model.run_id)
    lake.write_partition("cluster_assignments", batch_id, df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "model_run_id": model.run_id,
            "outliers": int((labels == -1).sum()),
            "mean_distance": float(np.nanmean(dist)) if len(dist) else 0.0,
            "preview": preview(df, ["record_id", "cluster_id", "distance_to_centroid"]),
        }
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


def name_by_prompts(lake: Lake, encoders: EncodersResource, pipeline: PipelineConfigResource,
                    cluster_of: dict[str, int], corpus: Corpus | None) -> dict[int, str]:
    """cluster -> the label prompt nearest to the cluster's centre in the shared space (text head applied to
    the prompt's text embedding; the centre is the mean of its members' shared-mean vectors). Empty without
    prompts or without a current alignment model."""
    prompts = pipeline.label_prompts()
    if not prompts or corpus is None:
        return {}
    model = load_alignment(lake, corpus.models)
    if model is None or "text" not in model.modalities:
        return {}
    P = model.project("text", encoders.encoders.text().encode(prompts))
    M = shared_mean_matrix(corpus, model, pipeline.weights())
    labels = np.array([cluster_of.get(r, -1) for r in corpus.record_ids])
    names: dict[int, str] = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        centre = M[labels == c].mean(axis=0)
        if np.linalg.norm(centre) > 0:
            names[int(c)] = prompts[int(np.argmax(P @ (centre / np.linalg.norm(centre))))]
    return names


def mmr_cluster_names(context, lake: Lake, encoders: EncodersResource, texts_by_cluster: dict[int, list[str]],
                      labels_by_id: dict[str, int], skip: set[int]) -> dict[int, list[str]]:
    """cluster -> name terms by maximal marginal relevance (:mod:`mm_platform.lib.cluster_names`): candidates
    from c-TF-IDF without stop words and corpus-frequent words, ranked against the cluster's centre in the text
    encoder's space (the mean of its members' stored text embeddings) and kept apart from each other. Without a
    usable text encoder, the ranking uses the c-TF-IDF scores and word overlap alone."""
    todo = {c: t for c, t in texts_by_cluster.items() if c not in skip and t}
    if not todo:
        return {}
    embed, centres = None, None
    try:
        text = encoders.encoders.text()
        # summed batch by batch: never every text embedding at once
        centres = cluster_means(LakeVectors(lake, "text_embeddings"), labels_by_id, set(todo)) or None
        embed = text.encode
    except Exception as exc:  # noqa: BLE001 - names must not fail the summary; the reason is logged
        context.log.warning(f"cluster names without the text encoder ({type(exc).__name__}: {exc})")
    return cluster_names(texts_by_cluster, n_words=3, embed=embed, centres=centres)


@dg.asset(
    deps=[clusters, cluster_assignments, raw_text, aligned_records, fused_vectors, dg.AssetKey("alignment_model")],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def cluster_summary(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource,
    encoders: EncodersResource,
) -> dg.MaterializeResult:
    """What each current cluster is: size, outliers, modality coverage, the records closest to its centre,
    its top terms (class-based TF-IDF over its texts), a name — the nearest of the configured label
    prompts (``MM_CLUSTER_LABEL_PROMPTS``) in the shared space, else its top terms — its label counts, and
    per-modality agreement: for each modality, the share of the cluster's members (that have it) which that
    modality alone clusters together."""
    lake = warehouse.lake
    cl = lake.current_clusters()
    if cl.height == 0:
        lake.write_global("cluster_summary", pl.DataFrame(schema=lake.read_table("cluster_summary").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    # the corpus is needed only by the shared-space strategy and by prompt names: load it once for both
    needs_corpus = pipeline.fusion_strategy == "shared_mean" or bool(pipeline.label_prompts())
    corpus = load_corpus(lake) if needs_corpus else None
    labels_by_id = dict(cl.select("record_id", "cluster_id").iter_rows())
    if pipeline.fusion_strategy == "early":  # the fused vectors batch by batch, never all at once
        reps = representatives_by_id(LakeVectors(lake), labels_by_id, n=3)
    else:
        fused_ids, _, X, _ = clustering_input(lake, pipeline, corpus=corpus)
        keep = [i for i, r in enumerate(fused_ids) if r in labels_by_id]
        ids = [fused_ids[i] for i in keep]
        reps = representatives(X[keep], np.array([labels_by_id[r] for r in ids]), ids, n=3)

    aligned = lake.read_current("aligned_records").drop("batch_id")
    texts = lake.read_current("raw_text").select("record_id", "text")
    members = cl.select("record_id", "cluster_id", "run_id", "algorithm", "is_outlier").join(
        aligned, on="record_id", how="left")
    members = members.join(texts, on="record_id", how="left")
    texts_by_cluster = {
        int(c): [t for t in g["text"].to_list() if t] for (c,), g in members.group_by("cluster_id") if c != -1
    }
    terms = top_terms(texts_by_cluster, n=8)
    prompt_names = name_by_prompts(lake, encoders, pipeline, labels_by_id, corpus)
    mmr_names = mmr_cluster_names(context, lake, encoders, texts_by_cluster, labels_by_id,
                                  skip=set(prompt_names))
    label_counts = label_summary(members["cluster_id"].to_numpy(), members["label"].to_list())
    model = load_cluster_model(lake)
    agreement = modality_agreement(cl, lake.read_table("modality_assignments"))
    rows = []
    for (c,), g in members.group_by("cluster_id"):
        c = int(c)
        words = [t for t, _ in terms.get(c, [])]
        name, source = ("outliers", "outliers") if c == -1 else (
            (prompt_names[c], "label_prompt") if c in prompt_names
            else (" / ".join(mmr_names.get(c) or words[:3]) if words else f"cluster {c}", "top_terms"))
        rows.append({
            "cluster_id": c, "name": name, "size": g.height,
            "representative_record_ids": reps.get(c, []), "top_terms": words,
            "label_counts_json": json.dumps(label_counts.get(c, {}), sort_keys=True),
            **{f"{m}_coverage": float(g[f"has_{m}"].fill_null(False).mean()) for m in EMBEDDING_TABLES},
            "algorithm": g["algorithm"][0].removesuffix("+assign"),
            "run_id": model.run_id if model else g["run_id"][0],
            "name_source": source,
            "agreement_json": json.dumps(agreement.get(c, {}), sort_keys=True),
            "n_outliers": int(g["is_outlier"].fill_null(False).sum()),
        })
    df = pl.DataFrame(rows).sort("cluster_id")
    lake.write_global("cluster_summary", df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "clusters": dg.MetadataValue.md("\n".join(
                f"- **{r['cluster_id']}** ({r['size']}): {md_escape(r['name'])} — e.g. "
                f"{', '.join(md_escape(i) for i in r['representative_record_ids'])}"
                for r in df.iter_rows(named=True))),
            "preview": preview(df, ["cluster_id", "name", "size", "top_terms", "text_coverage", "image_coverage",
                                    "audio_coverage", "tabular_coverage"]),
        }
    )


MAP_FILE = "_reports/embedding_map.png"
#: The PNG draws a seeded sample of this many records at most (the table keeps every record).
MAP_PNG_MAX_POINTS = 50_000


@dg.asset(
    deps=[clusters, cluster_summary, cluster_assignments, fused_vectors, aligned_records],
    group_name="clusters",
    kinds={"scikitlearn", "parquet"},
    tags={"layer": "clusters"},
    automation_condition=GLOBAL_AUTOMATION,
)
def embedding_map(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """2-D coordinates of every current record in the space the clusters were computed on (PCA by default;
    ``MM_MAP_METHOD=tsne`` fits t-SNE on a seeded sample of 3,000 and places the rest at their nearest
    sampled neighbours), with its cluster and label, and a PNG scatter coloured by cluster in the
    metadata (also saved as ``lake/_reports/embedding_map.png``). The projection is fitted only after a
    re-cluster (stored under ``lake/_models/embedding_map/``); a refresh places just the new records against
    it and keeps every other record's coordinates."""
    lake = warehouse.lake
    model = load_cluster_model(lake)
    update = update_map(
        lake.read_table("embedding_map"), lake.current_records(), method=pipeline.map_method,
        run_id=model.run_id if model else None, seed=pipeline.seed, projection=load_projection(lake.root),
        fit_sample=pipeline.map_fit_sample,
        read_batch=lambda b: _map_input(lake, pipeline, b))
    if update.frame.height < 3:
        lake.write_global("embedding_map", pl.DataFrame(schema=lake.read_table("embedding_map").schema))
        return dg.MaterializeResult(metadata={"dagster/row_count": 0})
    if update.refit and update.projection is not None:
        save_projection(lake.root, update.projection)
    cl = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    truth = dict(lake.read_current("aligned_records").select("record_id", "label").iter_rows())
    ids = update.frame["record_id"].to_list()
    df = update.frame.with_columns(
        pl.Series("cluster_id", [cl.get(r, -1) for r in ids], dtype=pl.Int32),
        pl.Series("label", [truth.get(r) for r in ids], dtype=pl.String),
    ).select("record_id", "batch_id", "x", "y", "cluster_id", "label", "method", "space", "run_id")
    lake.write_global("embedding_map", df)
    names = dict(lake.read_table("cluster_summary").select("cluster_id", "name").iter_rows())
    drawn = df if df.height <= MAP_PNG_MAX_POINTS else df.sample(MAP_PNG_MAX_POINTS, seed=pipeline.seed)
    width = len(str(max(cl.values(), default=0)))
    legend = [c if c < 0 or c not in names else f"{c:0{width}d} {names[c]}" for c in drawn["cluster_id"].to_list()]
    method, spec = df["method"][0], df["space"][0]
    sample_note = f" ({drawn.height} drawn)" if drawn.height < df.height else ""
    png = scatter_png(drawn.select("x", "y").to_numpy(), legend, lake.root / MAP_FILE,
                      title=f"{df.height} records{sample_note}, {method.upper()} of {spec}, coloured by cluster")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "method": method,
            "space": spec,
            "refit": update.refit,
            "refit_reason": update.reason,
            "records_placed": update.placed,
            "records_kept": update.kept,
            "png_path": str(png),
            "map": dg.MetadataValue.md(png_markdown(png, "embedding map coloured by cluster")),
            "explorer": dg.MetadataValue.url(f"{serve_url()}/map"),
        }
    )
