"""Small helpers that turn results into Dagster materialization metadata (previews, counts)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import dagster as dg
import polars as pl

_MD_SPECIAL = {
    "&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_",
    "[": "\\[", "]": "\\]", "(": "\\(", ")": "\\)", "|": "\\|", "#": "\\#", "!": "\\!",
}
_MD_SPECIAL_RE = re.compile("|".join(re.escape(k) for k in _MD_SPECIAL))
_SCRIPT_URL_RE = re.compile(r"(java|vb)script\s*:|data\s*:\s*text/html", re.IGNORECASE)


def md_escape(value: object) -> str:
    """User text made inert for Dagster's markdown metadata renderer.

    HTML (``<``, ``>``, ``&``) becomes entities, markdown syntax (links ``[..](..)``, emphasis, code,
    table pipes, headings, images) is backslash-escaped, newlines become spaces, and script URL schemes
    (``javascript:``, ``vbscript:``, ``data:text/html``) lose their colon so nothing can become a live link.
    """
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    text = _MD_SPECIAL_RE.sub(lambda m: _MD_SPECIAL[m.group(0)], text)
    return _SCRIPT_URL_RE.sub(lambda m: m.group(0).replace(":", "&#58;"), text)


def _cell(value: object, width: int = 48) -> str:
    if isinstance(value, list | tuple):
        text = f"[{len(value)} items]" if len(value) > 6 else ", ".join(map(str, value))
    elif isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = "" if value is None else str(value)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return md_escape(text)


def preview(df: pl.DataFrame, columns: Sequence[str] | None = None, n: int = 5) -> dg.MetadataValue:
    """A markdown table of the first ``n`` rows (vectors shown as their length)."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    head = df.select(cols).head(n)
    lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    if df.height > n:
        lines.append(f"\n… {df.height - n} more rows")
    return dg.MetadataValue.md("\n".join(lines))


def counts(series: pl.Series) -> dict[str, int]:
    vc = series.value_counts(sort=True)
    return {str(r[0]): int(r[1]) for r in vc.iter_rows()}


OWNERS = ["team:mm-platform"]
MODALITIES = ("text", "image", "audio", "tabular")


def ui_spec(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Owner ``team:mm-platform`` and ``layer`` / ``modality`` tags on an asset (the UI filters by them).

    ``layer`` defaults to the asset's group; ``modality`` is the modality named in its name
    (``raw_text``, ``raw_images``, ``image_embeddings``), else ``multimodal``. Tags an asset already sets are kept."""
    name = spec.key.path[-1]
    tokens = set(name.split("_"))
    modality = next((m for m in MODALITIES if m in tokens or f"{m}s" in tokens), "multimodal")
    tags = {"layer": spec.group_name or "default", "modality": modality, **(spec.tags or {})}
    owners = list(dict.fromkeys([*(spec.owners or []), *OWNERS]))
    spec = spec.replace_attributes(owners=owners, tags=tags)
    schema = lake_column_schema(name)
    if schema is not None and "dagster/column_schema" not in (spec.metadata or {}):
        spec = spec.merge_attributes(metadata={"dagster/column_schema": schema})
    return spec


def _column_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return f"list<{_column_type(dtype.inner)}>"
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    return _table_type(dtype)


def lake_column_schema(table: str) -> dg.TableSchema | None:
    """The column schema of a lake table (``lib/storage/lake.py``'s fixed schemas), for the asset page's Columns tab;
    None for an asset that is not a lake table."""
    from mm_platform.lib.storage.lake import ALL_TABLES

    columns = ALL_TABLES.get(table)
    if columns is None:
        return None
    return dg.TableSchema(columns=[dg.TableColumn(name=c, type=_column_type(t)) for c, t in columns.items()])


def with_ui_attributes(assets: Sequence) -> list:
    """``assets`` with :func:`ui_spec` applied to every spec."""
    return list(dg.map_asset_specs(ui_spec, list(assets)))


def _table_type(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype == pl.Boolean:
        return "bool"
    return "string"


def _table_value(value: object) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return float(f"{value:.4g}")  # 4 significant digits
    if isinstance(value, list | tuple):
        return f"[{len(value)} items]" if len(value) > 6 else ", ".join(map(str, value))
    return str(value)


def table(df: pl.DataFrame, columns: Sequence[str] | None = None, n: int = 20) -> dg.MetadataValue:
    """A ``MetadataValue.table`` of the first ``n`` rows with a column schema; floats rounded to 4
    significant digits, text kept whole (the UI renders it as text, not markdown)."""
    cols = [c for c in (columns or df.columns) if c in df.columns]
    head = df.select(cols).head(n)
    schema = dg.TableSchema(columns=[dg.TableColumn(c, _table_type(head.schema[c])) for c in cols])
    records = [dg.TableRecord({c: _table_value(v) for c, v in zip(cols, row, strict=True)})
               for row in head.iter_rows()]
    return dg.MetadataValue.table(records, schema=schema)
