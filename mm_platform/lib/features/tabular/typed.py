"""Typing record fields against a fitted state (per-value problems kept, never raised) and the typed-fields frame."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl

from mm_platform.lib.features.tabular.fit import _check_row
from mm_platform.lib.features.tabular.numbers import (
    _as_category,
    _is_missing,
    _isfinite,
    _short,
    format_number,
    parse_number,
)
from mm_platform.lib.features.tabular.spec import RESERVED_COLUMNS, FieldValue, TabularEncoderState, TypedValue


@dataclass(frozen=True)
class FieldProblem:
    """An unusable field value (the value is treated as missing; the record keeps its other fields)."""

    row: int  #: 0-based index into the rows given to :func:`type_rows`
    field: str
    reason: str  #: ``invalid_field_value``
    detail: str


@dataclass
class TypedRows:
    """Result of :func:`type_rows`.

    ``values[i]`` has every state field (``None`` when missing) plus any unknown field row ``i``
    carried (best-effort: numbers as float, strings as str; stored, never encoded).
    """

    values: list[dict[str, TypedValue]]
    problems: list[FieldProblem] = dataclasses.field(default_factory=list)
    unknown_fields: dict[str, int] = dataclasses.field(default_factory=dict)  #: name -> rows carrying it

    def n_missing(self, i: int, state: TabularEncoderState) -> int:
        """Number of state fields missing (null, blank or invalid) in row ``i``."""
        return sum(1 for f in state.fields if self.values[i].get(f.name) is None)


def _type_value(kind: str, value: object) -> tuple[TypedValue, str | None]:
    """(typed value, problem detail or None)."""
    t = type(value)
    if kind == "numeric" and t is float and _isfinite(value):  # type: ignore[arg-type]
        return value, None  # type: ignore[return-value]
    if value is None:
        return None, None
    if t is str:
        if not value.strip():  # type: ignore[union-attr]
            return None, None
    elif t is bool or not isinstance(value, str | int | float):
        return None, f"unsupported value type {t.__name__}: {_short(value)}"
    if kind == "numeric":
        num = parse_number(value)
        if num is None:
            return None, f"expected a number, got {_short(value)}"
        return num, None
    label = _as_category(value)
    if label is None:
        return None, f"unusable value {_short(value)}"
    return label, None


def _type_unknown(value: object) -> TypedValue:
    if _is_missing(value) or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return parse_number(value)
    if isinstance(value, str):
        return value
    return None


def type_rows(state: TabularEncoderState, rows: Sequence[Mapping[str, FieldValue] | None]) -> TypedRows:
    """Type each row's fields by the state's specs.

    Numeric fields become floats (numeric strings are coerced); a value that is not a number in a
    numeric field (or an unsupported type anywhere) yields a :class:`FieldProblem` with reason
    ``invalid_field_value`` and becomes missing. Categorical, identifier and empty fields become
    strings (numbers as by :func:`format_number`, strings stripped). Blank strings are missing.
    """
    values: list[dict[str, TypedValue]] = []
    problems: list[FieldProblem] = []
    unknown: Counter[str] = Counter()
    for i, raw_row in enumerate(rows):
        row = _check_row(i, raw_row)
        out: dict[str, TypedValue] = {}
        for spec in state.fields:
            typed, problem = _type_value(spec.kind, row.get(spec.name))
            out[spec.name] = typed
            if problem is not None:
                problems.append(FieldProblem(i, spec.name, "invalid_field_value", f"{spec.name}: {problem}"))
        for k in sorted(k for k in row if state.field(k) is None):
            unknown[k] += 1
            out[k] = _type_unknown(row[k])
        values.append(out)
    return TypedRows(values=values, problems=problems, unknown_fields=dict(sorted(unknown.items())))






def field_column_names(names: Sequence[str]) -> dict[str, str]:
    """Column name of each field: the field name, or ``field_``-prefixed (repeatedly, until unique)
    when it is one of :data:`RESERVED_COLUMNS` or would collide with another column."""
    used = set(RESERVED_COLUMNS) | {n for n in names if n not in RESERVED_COLUMNS}
    out: dict[str, str] = {}
    for n in names:
        if n not in RESERVED_COLUMNS:
            out[n] = n
    for n in sorted(n for n in names if n in RESERVED_COLUMNS):
        c = "field_" + n
        while c in used:
            c = "field_" + c
        used.add(c)
        out[n] = c
    return {n: out[n] for n in names}


def typed_frame(record_ids: Sequence[str], typed: TypedRows, state: TabularEncoderState) -> pl.DataFrame:
    """One row per record: ``record_id``, the state's fields in name order (Float64 for numeric, String
    otherwise; empty fields are all-null String), then the unknown fields in name order (Float64 when
    every non-null value is a number, else String with numbers formatted by :func:`format_number`).
    Column names come from :func:`field_column_names`.

    Raises:
        ValueError: ``len(record_ids) != len(typed.values)``.
    """
    ids = list(record_ids)
    if len(ids) != len(typed.values):
        raise ValueError(f"typed_frame: {len(ids)} record ids for {len(typed.values)} typed rows")
    unknown = sorted(typed.unknown_fields)
    state_names = [f.name for f in state.fields]
    names = field_column_names(state_names + [u for u in unknown if u not in state._by_name])
    columns: dict[str, pl.Series] = {"record_id": pl.Series("record_id", ids, dtype=pl.String)}
    for spec in state.fields:
        vals = [r.get(spec.name) for r in typed.values]
        cname = names[spec.name]
        if spec.kind == "numeric":
            columns[cname] = pl.Series(cname, [parse_number(v) for v in vals], dtype=pl.Float64)
        else:
            columns[cname] = pl.Series(
                cname, [format_number(v) if isinstance(v, int | float) else v for v in vals], dtype=pl.String
            )
    for u in unknown:
        if u in state._by_name:
            continue
        vals = [r.get(u) for r in typed.values]
        non_null = [v for v in vals if v is not None]
        cname = names[u]
        if non_null and all(isinstance(v, float) for v in non_null):
            columns[cname] = pl.Series(cname, vals, dtype=pl.Float64)
        else:
            columns[cname] = pl.Series(
                cname, [format_number(v) if isinstance(v, float) else v for v in vals], dtype=pl.String
            )
    return pl.DataFrame(list(columns.values()))
