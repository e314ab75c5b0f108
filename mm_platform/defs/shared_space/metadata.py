"""Metadata and check results of the shared-space assets (Dagster objects built from plain dicts)."""

import dagster as dg

#: Validation loss more than this many times the training loss: the model overfits (a WARN check + warning).
MAX_VAL_TRAIN_LOSS_RATIO = 2.0
LOSS_GAP_CHECK = "validation_loss_close_to_training"


def loss_gap_check(metrics: dict) -> tuple[dg.AssetCheckResult, str | None]:
    """WARN check (and a warning text) when validation loss is far above training loss."""
    train, val = metrics.get("train_loss"), metrics.get("val_loss")
    ratio = float(val) / float(train) if train and val is not None and train > 0 else None
    warning = None
    if ratio is not None and ratio > MAX_VAL_TRAIN_LOSS_RATIO:
        warning = (f"validation loss {val:.4g} is {ratio:.3g}x the training loss {train:.4g} "
                   f"(> {MAX_VAL_TRAIN_LOSS_RATIO:g}x): the heads overfit the training records; more records "
                   "with several modalities or fewer epochs (MM_ALIGNMENT_EPOCHS) help")
    if warning and metrics.get("mapping_in_use") not in (None, "heads"):
        warning += f"; the heads are not in use (the {metrics['mapping_in_use']} baseline is)"
    return dg.AssetCheckResult(
        check_name=LOSS_GAP_CHECK,
        passed=warning is None,
        severity=dg.AssetCheckSeverity.WARN,
        description=warning or (f"val/train loss ratio {ratio:.3g} <= {MAX_VAL_TRAIN_LOSS_RATIO:g}"
                                if ratio is not None else "no validation or training loss to compare"),
        metadata={"batch_id": "all (global)", "train_loss": train, "val_loss": val,
                  "val_train_ratio": None if ratio is None else round(ratio, 4),
                  "max_ratio": MAX_VAL_TRAIN_LOSS_RATIO},
    ), warning


def loss_curve_table(metrics: dict) -> dg.MetadataValue:
    """Per-epoch training and validation loss as a table (4 significant digits)."""
    train, val = metrics.get("train_loss_curve") or [], metrics.get("val_loss_curve") or []

    def r(v):
        return None if v is None else float(f"{v:.4g}")
    rows = [dg.TableRecord({"epoch": i + 1, "train_loss": r(t), "val_loss": r(val[i] if i < len(val) else None)})
            for i, t in enumerate(train)]
    schema = dg.TableSchema(columns=[dg.TableColumn("epoch", "int"), dg.TableColumn("train_loss", "float"),
                                     dg.TableColumn("val_loss", "float")])
    return dg.MetadataValue.table(rows, schema=schema)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def _recall_table(retrieval: dict, baseline: dict | None = None) -> str:
    """Validation recall per ordered pair: the heads', and the baseline's recall@10 when given."""
    baseline = baseline or {}
    lines = ["| pair | recall@1 | recall@10 | baseline recall@10 | label hit@10 | queries |",
             "|---|---|---|---|---|---|"]
    for pair, r in sorted(retrieval.items()):
        lines.append(f"| {pair} | {_fmt(r.get('recall@1'))} | {_fmt(r.get('recall@10'))} | "
                     f"{_fmt(baseline.get(pair, {}).get('recall@10'))} | {_fmt(r.get('label_recall@10'))} | "
                     f"{r.get('n_queries', '')} |")
    return "\n".join(lines)


def gating_table(gating: dict) -> dg.MetadataValue:
    """Per modality pair: validation recall@10 of the heads and of the best linear baseline, and use_heads."""
    rows = [dg.TableRecord({"pair": pair, "validation_recall_heads": g.get("validation_recall_heads"),
                            "validation_recall_baseline": g.get("validation_recall_baseline"),
                            "use_heads": g.get("use_heads")}) for pair, g in sorted(gating.items())]
    schema = dg.TableSchema(columns=[dg.TableColumn("pair", "string"),
                                     dg.TableColumn("validation_recall_heads", "float"),
                                     dg.TableColumn("validation_recall_baseline", "float"),
                                     dg.TableColumn("use_heads", "bool")])
    return dg.MetadataValue.table(rows, schema=schema)
