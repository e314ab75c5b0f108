"""Encoding typed rows: raw per-field features, then a fixed-size unit-norm :data:`TABULAR_DIM` block."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from mm_platform.lib.arrays import l2_normalize
from mm_platform.lib.features.tabular.numbers import _as_category, parse_number
from mm_platform.lib.features.tabular.spec import TABULAR_DIM, TabularEncoderState
from mm_platform.lib.features.tabular.typed import TypedRows


def _nan_if_none(v: float | None) -> float:
    return math.nan if v is None else v


def encode_raw(state: TabularEncoderState, typed: TypedRows | Sequence[Mapping[str, object]]) -> np.ndarray:
    """The ``(n, raw_dim)`` float64 raw feature matrix (before padding/projection/normalisation).

    Accepts :class:`TypedRows` or plain value dicts (raw field values are coerced as in
    :func:`type_rows`; an unusable value counts as missing).
    """
    rows = typed.values if isinstance(typed, TypedRows) else list(typed)
    n = len(rows)
    out = np.zeros((n, state.raw_dim), dtype=np.float64)
    clip = state.params.clip
    col = 0
    numeric_value_cols: list[int] = []
    rows_idx = np.arange(n)
    for spec in state.fields:
        name = spec.name
        cells = [row.get(name) if row is not None else None for row in rows]
        if spec.kind == "numeric":
            assert spec.mean is not None and spec.std is not None
            numeric_value_cols.append(col)
            x = np.array(
                [v if type(v) is float else _nan_if_none(parse_number(v)) for v in cells], dtype=np.float64
            )
            x[~np.isfinite(x)] = np.nan
            missing = np.isnan(x)
            with np.errstate(over="ignore", invalid="ignore"):
                z = np.clip((x - spec.mean) / spec.std, -clip, clip)
            out[:, col] = np.where(missing, 0.0, z)
            out[:, col + 1] = missing
            col += 2
        elif spec.kind == "categorical":
            k = len(spec.categories)
            index = {c: j for j, c in enumerate(spec.categories)}
            pos = np.array(
                [k + 1 if (lab := _as_category(v)) is None else index.get(lab, k) for v in cells], dtype=np.int64
            )
            if n:
                out[rows_idx, col + pos] = 1.0
            col += k + 2
    assert col == state.raw_dim
    if n and numeric_value_cols:
        zero = ~np.any(out != 0.0, axis=1)
        if zero.any():
            # only possible when every field is numeric, present and exactly at its mean
            out[np.ix_(zero, numeric_value_cols)] = 1.0
    return out


def encode_tabular(
    state: TabularEncoderState, typed: TypedRows | Sequence[Mapping[str, object]]
) -> np.ndarray:
    """Encode rows into ``(n, TABULAR_DIM)`` float32 unit-norm vectors.

    Raw features (module docstring) are zero-padded (``raw_dim <= TABULAR_DIM``: exact) or projected
    with :attr:`TabularEncoderState.projection` (approximate), then L2-normalised.

    Raises:
        ValueError: the state has no usable field (``state.raw_dim == 0``: every field empty or an
            identifier) -- callers check that first.
    """
    if state.raw_dim == 0:
        kinds = Counter(f.kind for f in state.fields)
        raise ValueError(
            f"tabular encoder state {state.version} has no usable field to encode "
            f"({len(state.fields)} fields: {dict(sorted(kinds.items()))}); check state.raw_dim == 0 first"
        )
    raw = encode_raw(state, typed)
    proj = state.projection
    if proj is None:
        full = np.zeros((raw.shape[0], TABULAR_DIM), dtype=np.float64)
        full[:, : state.raw_dim] = raw
    else:
        full = raw @ proj
    return l2_normalize(full)
