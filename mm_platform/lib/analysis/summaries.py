"""What the current clusters are, and where each record lies on the 2-D map, without Dagster: the logic of
the ``cluster_summary`` and ``embedding_map`` assets (moved verbatim from ``defs/clusters/assets.py``).

A cluster's name is the nearest configured label prompt in the shared space (``MM_CLUSTER_LABEL_PROMPTS``),
else terms chosen by maximal marginal relevance (:mod:`mm_platform.lib.analysis.clustering.names`); the encoder comes in
as a factory (``text_encoder()``) so that a missing one costs only the names it would give.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from mm_platform.lib.analysis.clustering.names import cluster_names
from mm_platform.lib.analysis.clustering import label_summary, representatives, top_terms
from mm_platform.lib.vectors.corpus import EMBEDDING_TABLES, Corpus, load_alignment, load_corpus, shared_mean_matrix
from mm_platform.lib.analysis.embedding_map import scatter_png
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.analysis.map_projection import MapUpdate, load_projection, save_projection, update_map
from mm_platform.lib.analysis.recluster import ClusterSettings, clustering_input, layout_of, load_cluster_model
from mm_platform.lib.analysis.recluster import modality_agreement
from mm_platform.lib.analysis.global_layer import LakeVectors, cluster_means, representatives_by_id

MAP_FILE = "_reports/embedding_map.png"
#: The PNG draws a seeded sample of this many records at most (the table keeps every record).
MAP_PNG_MAX_POINTS = 50_000


class SummarySettings(ClusterSettings, Protocol):
    """The pipeline settings the summary and the map read besides the clustering ones."""

    map_method: str
    map_fit_sample: int

    def label_prompts(self) -> list[str]: ...


def name_by_prompts(lake: Lake, text_encoder: Callable[[], object], pipeline: SummarySettings,
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
    P = model.project("text", text_encoder().encode(prompts))
    M = shared_mean_matrix(corpus, model, pipeline.weights())
    labels = np.array([cluster_of.get(r, -1) for r in corpus.record_ids])
    names: dict[int, str] = {}
    for c in sorted(set(labels.tolist()) - {-1}):
        centre = M[labels == c].mean(axis=0)
        if np.linalg.norm(centre) > 0:
            names[int(c)] = prompts[int(np.argmax(P @ (centre / np.linalg.norm(centre))))]
    return names


def mmr_cluster_names(warn: Callable[[str], None], lake: Lake, text_encoder: Callable[[], object],
                      texts_by_cluster: dict[int, list[str]], labels_by_id: dict[str, int],
                      skip: set[int]) -> dict[int, list[str]]:
    """cluster -> name terms by maximal marginal relevance (:mod:`mm_platform.lib.analysis.clustering.names`): candidates
    from c-TF-IDF without stop words and corpus-frequent words, ranked against the cluster's centre in the text
    encoder's space (the mean of its members' stored text embeddings) and kept apart from each other. Without a
    usable text encoder, the ranking uses the c-TF-IDF scores and word overlap alone."""
    todo = {c: t for c, t in texts_by_cluster.items() if c not in skip and t}
    if not todo:
        return {}
    embed, centres = None, None
    try:
        text = text_encoder()
        # summed batch by batch: never every text embedding at once
        centres = cluster_means(LakeVectors(lake, "text_embeddings"), labels_by_id, set(todo)) or None
        embed = text.encode
    except Exception as exc:  # noqa: BLE001 - names must not fail the summary; the reason is logged
        warn(f"cluster names without the text encoder ({type(exc).__name__}: {exc})")
    return cluster_names(texts_by_cluster, n_words=3, embed=embed, centres=centres)




def summary_frame(lake: Lake, pipeline: SummarySettings, text_encoder: Callable[[], object],
                  warn: Callable[[str], None]) -> pl.DataFrame | None:
    """One row per current cluster (see the ``cluster_summary`` asset); None when nothing is clustered."""
    cl = lake.current_clusters()
    if cl.height == 0:
        return None
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
    prompt_names = name_by_prompts(lake, text_encoder, pipeline, labels_by_id, corpus)
    mmr_names = mmr_cluster_names(warn, lake, text_encoder, texts_by_cluster, labels_by_id, skip=set(prompt_names))
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
    return pl.DataFrame(rows).sort("cluster_id")


def _map_input(lake: Lake, pipeline: ClusterSettings,
               batch_id: str) -> tuple[list[str], list[str], np.ndarray, str]:
    ids, batch_ids, X, spec = clustering_input(lake, pipeline, batch_id)
    return ids, batch_ids, X, layout_of(spec)


def update_embedding_map(lake: Lake, pipeline: SummarySettings) -> tuple[MapUpdate, pl.DataFrame | None]:
    """The map update (projection refitted after a re-cluster, else new records placed against it) and the
    ``embedding_map`` table with each record's cluster and label; the table is None below 3 records. Saves a
    refitted projection."""
    model = load_cluster_model(lake)
    update = update_map(
        lake.read_table("embedding_map"), lake.current_records(), method=pipeline.map_method,
        run_id=model.run_id if model else None, seed=pipeline.seed, projection=load_projection(lake.root),
        fit_sample=pipeline.map_fit_sample,
        read_batch=lambda b: _map_input(lake, pipeline, b))
    if update.frame.height < 3:
        return update, None
    if update.refit and update.projection is not None:
        save_projection(lake.root, update.projection)
    cl = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    truth = dict(lake.read_current("aligned_records").select("record_id", "label").iter_rows())
    ids = update.frame["record_id"].to_list()
    df = update.frame.with_columns(
        pl.Series("cluster_id", [cl.get(r, -1) for r in ids], dtype=pl.Int32),
        pl.Series("label", [truth.get(r) for r in ids], dtype=pl.String),
    ).select("record_id", "batch_id", "x", "y", "cluster_id", "label", "method", "space", "run_id")
    return update, df


def draw_map(lake: Lake, df: pl.DataFrame, seed: int) -> Path:
    """The PNG scatter of the map coloured by cluster (named from ``cluster_summary``), a seeded sample of
    :data:`MAP_PNG_MAX_POINTS` at most, saved as ``lake/_reports/embedding_map.png``."""
    cl = dict(lake.current_clusters().select("record_id", "cluster_id").iter_rows())
    names = dict(lake.read_table("cluster_summary").select("cluster_id", "name").iter_rows())
    drawn = df if df.height <= MAP_PNG_MAX_POINTS else df.sample(MAP_PNG_MAX_POINTS, seed=seed)
    width = len(str(max(cl.values(), default=0)))
    legend = [c if c < 0 or c not in names else f"{c:0{width}d} {names[c]}" for c in drawn["cluster_id"].to_list()]
    method, spec = df["method"][0], df["space"][0]
    sample_note = f" ({drawn.height} drawn)" if drawn.height < df.height else ""
    return scatter_png(drawn.select("x", "y").to_numpy(), legend, lake.root / MAP_FILE,
                       title=f"{df.height} records{sample_note}, {method.upper()} of {spec}, coloured by cluster")
