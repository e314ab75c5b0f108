"""Classifiers layer: when records carry labels, how well does each fusion strategy predict them?

Early fusion (one classifier on the concatenated modalities), late fusion (one classifier per modality,
probabilities averaged over the modalities a record has) and late fusion with learned modality weights,
against every single modality, all scored by stratified cross-validation on the same folds; the fused
classifiers then label the unlabelled records.
"""

import json
import uuid
from datetime import UTC, datetime

import dagster as dg
import polars as pl

from mm_platform.defs.automation import RECLUSTER_AUTOMATION
from mm_platform.defs.classifiers.metadata import confusion_table
from mm_platform.defs.metadata import preview, table
from mm_platform.defs.resources import PipelineConfigResource, WarehouseResource
from mm_platform.lib.analysis.classify import InsufficientLabels, evaluate_classifiers
from mm_platform.lib.vectors.corpus import load_corpus
from mm_platform.lib.storage.tables import empty_frame

INPUTS = [dg.AssetKey(k) for k in ("text_embeddings", "image_embeddings", "audio_embeddings", "tabular_embeddings",
                                   "fused_vectors", "aligned_records")]
#: Fewer labelled records than this (or fewer than two classes): nothing is trained, and the metadata says so.
MIN_LABELLED = 20


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "classifier_metrics",
            deps=INPUTS,
            group_name="classifiers", kinds={"scikitlearn", "parquet"}, tags={"layer": "classifiers"},
            automation_condition=RECLUSTER_AUTOMATION,
            description="Cross-validated macro-F1 and accuracy of the early-fusion, late-fusion (unweighted and "
                        "with learned modality weights) and each single-modality classifier (logistic "
                        "regression, stratified 5-fold, same folds).",
        ),
        dg.AssetSpec(
            "predictions",
            deps=INPUTS,
            group_name="classifiers", kinds={"scikitlearn", "parquet"}, tags={"layer": "classifiers"},
            automation_condition=RECLUSTER_AUTOMATION,
            description="A predicted label and its probability for every current record without a label, "
                        "from the early-, late- and learned-late-fusion classifiers trained on all labelled "
                        "records.",
        ),
    ],
    can_subset=False,
)
def classifiers(context: dg.AssetExecutionContext, warehouse: WarehouseResource, pipeline: PipelineConfigResource):
    """Train and score the fused and single-modality classifiers on the current labelled records."""
    lake = warehouse.lake
    corpus = load_corpus(lake)
    run_id = uuid.uuid4().hex[:12]
    labelled = [lab for lab in corpus.labels if lab]
    skipped = None
    if len(labelled) < MIN_LABELLED or len(set(labelled)) < 2:
        skipped = f"{len(labelled)} labelled records in {len(set(labelled))} classes: too few to train classifiers"
    else:
        try:
            metrics, predicted = evaluate_classifiers(corpus.blocks, corpus.present, corpus.labels,
                                                      seed=pipeline.seed)
        except InsufficientLabels as exc:
            skipped = f"classifiers not trained: {exc}"
    if skipped is not None:
        context.log.warning(skipped)
        lake.write_global("classifier_metrics", empty_frame("classifier_metrics"))
        lake.write_global("predictions", empty_frame("predictions"))
        for key in ("classifier_metrics", "predictions"):
            yield dg.MaterializeResult(asset_key=key, metadata={"dagster/row_count": 0, "skipped": skipped})
        return
    now = datetime.now(UTC)
    mdf = pl.DataFrame([
        {"run_id": run_id, "created_at": now, "strategy": m["strategy"], "modalities": m["modalities"],
         "macro_f1": m["macro_f1"], "macro_f1_std": m["macro_f1_std"], "accuracy": m["accuracy"],
         "n_labelled": m["n_labelled"], "n_classes": m["n_classes"], "folds": m["folds"],
         "weights_json": json.dumps(m["weights"], sort_keys=True) if m.get("weights") else None}
        for m in metrics
    ], schema=lake.read_table("classifier_metrics").schema)
    lake.write_global("classifier_metrics", mdf)
    rows = [
        {"record_id": corpus.record_ids[p["row"]], "batch_id": corpus.batch_ids[p["row"]], "strategy": strategy,
         "predicted_label": p["label"], "probability": float(p["probability"]), "run_id": run_id}
        for strategy, preds in predicted.items() for p in preds
    ]
    pdf = pl.DataFrame(rows, schema=lake.read_table("predictions").schema)
    lake.write_global("predictions", pdf)
    best = max(metrics, key=lambda m: m["macro_f1"])
    yield dg.MaterializeResult(
        asset_key="classifier_metrics",
        metadata={
            "dagster/row_count": mdf.height,
            "macro_f1": {m["strategy"]: round(m["macro_f1"], 4) for m in metrics},
            "best_strategy": best["strategy"],
            "learned_modality_weights": next((m["weights"] for m in metrics if m.get("weights")), {}),
            "n_labelled": metrics[0]["n_labelled"],
            "notes": sorted({n for m in metrics for n in m.get("notes", [])}),
            "metrics": table(mdf, ["strategy", "macro_f1", "macro_f1_std", "accuracy"], n=mdf.height),
            "confusion_matrix": confusion_table(best),
        },
    )
    yield dg.MaterializeResult(
        asset_key="predictions",
        metadata={
            "dagster/row_count": pdf.height,
            "unlabelled_records": pdf["record_id"].n_unique() if pdf.height else 0,
            "preview": preview(pdf, ["record_id", "strategy", "predicted_label", "probability"]),
        },
    )
