"""Shared-space layer: one shared space for every modality (the contrastive alignment heads).

``shared_space_model`` trains a projection head per modality (frozen encoders) with a symmetric InfoNCE loss
over every pair of modalities a record has, so that a record's text, image, audio and tabular vectors land
close together. ``shared_embeddings`` projects every current vector through the current heads, and the
mean of a record's projections is its ``shared_mean`` fused vector. Retraining writes a new version and the
projections follow; every projected row names the head version that made it.
"""

import json

import dagster as dg
import numpy as np

from mm_platform.defs.automation import GLOBAL_AUTOMATION, RECLUSTER_AUTOMATION
from mm_platform.defs.metadata import preview
from mm_platform.defs.resources import PipelineConfigResource, WarehouseResource
from mm_platform.defs.shared_space.metadata import (
    LOSS_GAP_CHECK,
    MAX_VAL_TRAIN_LOSS_RATIO,
    _recall_table,
    gating_table,
    loss_curve_table,
    loss_gap_check,
)
from mm_platform.lib.vectors.shared_space import AlignmentConfig, fit_shared_space
from mm_platform.lib.vectors.corpus import Corpus, load_alignment, load_corpus, save_alignment
from mm_platform.lib.vectors.shared_frames import shared_frame
from mm_platform.lib.storage.tables import empty_frame

#: Fewer records with two or more modalities than this: no model is trained (the metadata says why).
MIN_ALIGNMENT_ROWS = 20
def alignment_config(pipeline: PipelineConfigResource, corpus: Corpus) -> AlignmentConfig:
    """Training settings; modalities whose encoders already share a space (CLIP's text and image) are anchors:
    their space *is* the shared space and only the other modalities' heads are trained into it."""
    anchors = corpus.native_shared()
    return AlignmentConfig(shared_dim=AlignmentConfig.shared_dim if anchors else pipeline.shared_dim,
                           epochs=pipeline.alignment_epochs, seed=pipeline.seed, anchors=anchors)


@dg.asset(
    deps=["text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings", "fused_vectors",
          "aligned_records", "raw_records"],
    group_name="shared_space",
    kinds={"pytorch", "safetensors"},
    tags={"layer": "shared_space"},
    automation_condition=RECLUSTER_AUTOMATION,
    check_specs=[dg.AssetCheckSpec(LOSS_GAP_CHECK, asset="shared_space_model", description=(
        "All batches (global model): the validation loss of the alignment heads is at most "
        f"{MAX_VAL_TRAIN_LOSS_RATIO:g}x their training loss (WARN otherwise: the heads overfit)."))],
)
def shared_space_model(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """Projection heads (one per modality, frozen encoders) into one shared space, trained with a symmetric
    InfoNCE loss over every pair of modalities of the current records, 80/20 train/validation split by a
    fixed seed, with early stopping on the validation loss, dropout, weight decay and a hidden width scaled to
    the training rows. A ridge least-squares map and CCA are fitted on the same rows; the heads are kept only
    when their validation recall@10 beats the best of them, otherwise that linear map is saved and used by
    search and the shared-space strategy (``mapping_in_use``, ``mapping_reason``, per-pair ``gating``). Saved
    as safetensors (no pickle) under ``lake/_models/alignment/`` with its version (a hash of the weights and
    config) and the encoder models it was trained on. Metadata: validation retrieval
    recall@1/@10 for every ordered modality pair, and label hit@10 where labels exist. Runs with the full
    re-cluster (first data, nightly, ``mm-platform recluster``). In the ``clip`` profile text and image are
    anchors: CLIP's space is the shared space, and the audio and tabular heads are trained into it."""
    lake = warehouse.lake
    corpus = load_corpus(lake)
    multi = int((np.sum([p for p in corpus.present.values()], axis=0) >= 2).sum()) if corpus.present else 0
    if multi < MIN_ALIGNMENT_ROWS:
        note = f"{multi} records with two or more modalities; at least {MIN_ALIGNMENT_ROWS} are needed"
        context.log.warning(f"no alignment model trained: {note}")
        return dg.MaterializeResult(metadata={"trained": False, "note": note}, check_results=[loss_gap_check({})[0]])
    model, metrics = fit_shared_space(corpus.blocks, corpus.present, alignment_config(pipeline, corpus),
                                      labels=corpus.labels)
    path = save_alignment(lake, model, corpus, metrics)
    retrieval = metrics.get("retrieval", {})
    baseline = metrics.get("baselines", {}).get(metrics.get("baseline") or "", {}).get("retrieval", {})
    context.log.info(f"shared space {model.version} uses {model.mapping}: {metrics.get('mapping_reason')}")
    gap_check, warning = loss_gap_check(metrics)
    if warning:
        context.log.warning(warning)
    return dg.MaterializeResult(
        check_results=[gap_check],
        metadata={
            "trained": True,
            "warning": warning or "",
            "loss_curves": loss_curve_table(metrics),
            "version": model.version,
            "mapping_in_use": model.mapping,
            "mapping_reason": metrics.get("mapping_reason", ""),
            "use_heads": bool(metrics.get("use_heads")),
            "validation_recall_heads": metrics.get("validation_recall_heads"),
            "validation_recall_baseline": metrics.get("validation_recall_baseline"),
            "gating": gating_table(metrics.get("gating", {})),
            "heads_version": metrics.get("heads_version"),
            "hidden_dim": metrics.get("hidden_dim"),
            "n_parameters": metrics.get("n_parameters"),
            "best_epoch": metrics.get("best_epoch"),
            "epochs_run": metrics.get("epochs"),
            "stopped_early": bool(metrics.get("stopped_early")),
            "path": str(path),
            "modalities": list(model.modalities),
            "anchors": list(model.anchors),
            "shared_dim": model.shared_dim,
            "encoder_models": dg.MetadataValue.json(corpus.models),
            "n_train": metrics.get("n_train"),
            "n_val": metrics.get("n_val"),
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("val_loss"),
            "mean_recall@10": metrics.get("mean_recall@10"),
            "seconds": metrics.get("seconds"),
            "validation_retrieval": dg.MetadataValue.md(_recall_table(retrieval, baseline)),
            "metrics": dg.MetadataValue.json(json.loads(json.dumps(metrics, default=str))),
        }
    )


@dg.asset(
    deps=["shared_space_model", "text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings",
          "fused_vectors"],
    group_name="shared_space",
    kinds={"numpy", "parquet"},
    tags={"layer": "shared_space"},
    automation_condition=GLOBAL_AUTOMATION,
)
def shared_embeddings(
    context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource
) -> dg.MaterializeResult:
    """Every current record's vectors in the shared space: one row per (record, modality) it has, projected
    by the current alignment heads, and one ``mean`` row (the weighted mean of its projections, the
    ``shared_mean`` fusion). Every row names the head version; a retrained model re-projects everything.
    Cross-modal search (text→image, audio→text, fields→image, ...) compares vectors here."""
    lake = warehouse.lake
    corpus = load_corpus(lake)
    model = load_alignment(lake, corpus.models)
    if model is None or corpus.n == 0:
        df = empty_frame("shared_embeddings")
        lake.write_global("shared_embeddings", df)
        return dg.MaterializeResult(metadata={"dagster/row_count": 0,
                                              "note": "no current alignment model (asset shared_space_model)"})
    df = shared_frame(corpus, model, pipeline.weights())
    lake.write_global("shared_embeddings", df)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": df.height,
            "head_version": model.version,
            "rows_by_modality": {m: int(n) for m, n in df.group_by("modality").len().iter_rows()},
            "preview": preview(df, ["record_id", "modality", "head_version"]),
        }
    )
