"""Fitting a :class:`~mm_platform.lib.features.tabular.spec.TabularEncoderState`: one inferred field spec per field name."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from mm_platform.lib.features.tabular.numbers import _as_category, _short, parse_number
from mm_platform.lib.features.tabular.spec import (
    IDENTIFIER_DISTINCT_SHARE,
    IDENTIFIER_MIN_DISTINCT,
    FieldSpec,
    FieldValue,
    TabularEncoderState,
    TabularParams,
)


def _check_row(i: int, row: object) -> Mapping[str, object]:
    if row is None:
        return {}
    if not isinstance(row, Mapping):
        raise ValueError(f"row {i}: fields must be a mapping or None, got {type(row).__name__}")
    return row


def _infer_field(name: str, values: list[object], params: TabularParams) -> FieldSpec:
    n_present = 0
    parsed: list[float] = []
    for v in values:
        t = type(v)
        if v is None or t is bool:
            continue
        if t is str:
            if not v.strip():  # type: ignore[union-attr]
                continue
        elif not isinstance(v, str | int | float):
            continue
        n_present += 1
        num = parse_number(v)
        if num is not None:
            parsed.append(num)
    if not n_present:
        return FieldSpec(name, "empty")
    if len(parsed) >= params.numeric_share * n_present - 1e-9:  # tolerance: 0.9 * 30 > 27.0 in floats
        arr = np.asarray(parsed, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(arr.mean())
            if not math.isfinite(mean):
                mean = float(np.median(arr))
            std = float(np.sqrt(np.mean((arr - mean) ** 2)))
        if not math.isfinite(std) or std <= 0:
            std = 1.0
        return FieldSpec(name, "numeric", n_seen=len(parsed), mean=mean, std=std)
    counts = Counter(c for c in map(_as_category, values) if c is not None)
    n = sum(counts.values())
    n_distinct = len(counts)
    if n_distinct > max(IDENTIFIER_MIN_DISTINCT, 0.5 * n) and n_distinct >= IDENTIFIER_DISTINCT_SHARE * n:
        return FieldSpec(name, "identifier", n_seen=n)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: params.max_categories]
    return FieldSpec(name, "categorical", n_seen=n, categories=tuple(c for c, _ in ranked))


def fit_tabular(
    rows: Sequence[Mapping[str, FieldValue] | None],
    *,
    max_categories: int = 32,
    numeric_share: float = 0.9,
    clip: float = 5.0,
) -> TabularEncoderState:
    """Infer field types and statistics from ``rows`` (see the module docstring for the rules).

    Every field name seen in any row becomes a :class:`FieldSpec` (``empty`` when always null).

    Raises:
        ValueError: bad parameters, or a row that is neither a mapping nor ``None``.
    """
    params = TabularParams(max_categories=max_categories, numeric_share=numeric_share, clip=clip)
    columns: dict[str, list[object]] = {}
    n_rows = 0
    for i, row in enumerate(rows):
        n_rows += 1
        for k, v in _check_row(i, row).items():
            if not isinstance(k, str) or not k:
                raise ValueError(f"row {i}: field names must be non-empty strings, got {_short(k)}")
            columns.setdefault(k, []).append(v)
    specs = tuple(_infer_field(name, columns[name], params) for name in sorted(columns))
    return TabularEncoderState(fields=specs, params=params, fitted_rows=n_rows)
