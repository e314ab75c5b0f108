"""Typed record fields and a fitted, versioned tabular encoder.

Records carry ``fields: {name: number | string | null}`` (validated JSON types, see
:mod:`mm_platform.lib.manifest`). This module turns them into a fixed-size embedding block.

Fitting (:func:`fit_tabular`) infers one :class:`FieldSpec` per field name from the non-null values
(a blank string counts as null; booleans, which the manifest never lets through, are ignored):

* ``numeric`` when at least ``numeric_share`` of the values are numbers or numeric strings
  (``" 3.5"``, ``"1e3"``; not ``"nan"``/``"inf"``/``"1_000"``); ``mean``/``std`` (population) are taken
  over the values that parse, a zero or non-finite ``std`` becomes 1;
* ``empty`` when the field is always null (kept in the state, contributes no feature);
* ``identifier`` when a would-be categorical has more than ``max(50, 0.5 * n_non_null)`` distinct
  values *and* at least :data:`IDENTIFIER_DISTINCT_SHARE` of its values are distinct (serial
  numbers, free text, ids): one-hot encoding those would be noise, so they contribute no feature
  (but are still typed and stored);
* ``categorical`` otherwise, keeping the ``max_categories`` most frequent values (ties by name).

Raw features, per field in name order (see :attr:`TabularEncoderState.feature_names`):

* numeric ``f``: ``f`` = ``z = (x - mean) / std`` clipped to ``[-clip, clip]`` (0 when missing) and
  ``f:missing`` (1 when missing);
* categorical ``f``: one-hot ``f=<category>`` over the fitted categories, ``f:other`` for a value unseen
  at fit time (a new category in a later batch is encoded, not an error) and ``f:missing``.

Field balance: a categorical block is one-hot, so its squared norm is exactly 1 however many
categories it has; a numeric block is either ``(z, 0)`` whose squared norm ``z**2`` has expectation
``<= 1`` over the fit data (z is standardised, clipping only lowers it) or ``(0, 1)`` when missing.
So every field contributes a squared norm of about 1 to a row, whatever its kind or cardinality, and
no per-field weight is needed; ``clip`` bounds how much one outlying number can dominate (``clip**2``).
A row of all-missing fields is made of its missing indicators and is therefore a valid vector. The one
degenerate raw row -- every field numeric, present and *exactly* at its mean -- is all zeros and has no
direction; it is encoded as the uniform direction over its numeric value features (as if each sat a
hair above its mean) so that every row stays unit-norm.

Fixed output size :data:`TABULAR_DIM` (the fused layout must not depend on the data): with at most
``TABULAR_DIM`` raw features the vector is zero-padded, which preserves dot products and cosines
exactly; above, it is multiplied by a Gaussian random projection ``R`` (``raw_dim x TABULAR_DIM``,
entries ``N(0, 1/TABULAR_DIM)``) seeded from the state version. By Johnson-Lindenstrauss, norms and
cosines are then preserved only approximately (distortion ``~ O(1/sqrt(TABULAR_DIM))``). Rows are
L2-normalised last.

The state is versioned by content (:attr:`TabularEncoderState.version`), persisted as JSON
(:func:`save_state`/:func:`load_state`) and shared between processes with :func:`fit_or_load`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mm_platform.lib.fusion import l2_normalize

FieldValue = float | int | str | None
TypedValue = float | str | None

TABULAR_DIM = 64
FORMAT = "mm_platform.tabular_encoder"
FORMAT_VERSION = 1
KINDS: tuple[str, ...] = ("numeric", "categorical", "empty", "identifier")
IDENTIFIER_MIN_DISTINCT = 50
IDENTIFIER_DISTINCT_SHARE = 0.95
STATE_PREFIX = "tabular_encoder-"
CURRENT_NAME = "current.json"
LOCK_NAME = ".lock"
RESERVED_COLUMNS: tuple[str, ...] = (
    "record_id",
    "batch_id",
    "line_number",
    "fields_sha256",
    "n_fields",
    "n_missing",
    "n_invalid",
    "encoder_version",
    "values_json",
)

_isfinite = math.isfinite
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_VERSION_RE = re.compile(r"^[0-9a-f]{12}$")


# --------------------------------------------------------------------------------------------------
# value helpers
# --------------------------------------------------------------------------------------------------


def _short(v: Any, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def parse_number(value: object) -> float | None:
    """The finite float a JSON number or numeric string stands for, else ``None``.

    Numbers (not booleans) and strings such as ``" 3.5"``, ``"-2"``, ``"1e3"`` parse; ``"nan"``,
    ``"inf"``, ``"1_000"``, ``"0x10"`` and overflowing literals (``"1e999"``) do not.
    """
    t = type(value)
    if t is float:
        return value if _isfinite(value) else None  # type: ignore[return-value,arg-type]
    if t is str:
        s = value.strip()  # type: ignore[union-attr]
        if not _NUMBER_RE.fullmatch(s):
            return None
        f = float(s)
        return f if _isfinite(f) else None
    if t is bool or value is None:
        return None
    if isinstance(value, int | float):  # ints and int/float subclasses (numpy scalars)
        try:
            f = float(value)
        except OverflowError:
            return None
        return f if _isfinite(f) else None
    return None


def format_number(value: float | int) -> str:
    """Category label of a number: ``str(int)`` for ints and integral floats, else the shortest repr."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _as_category(value: object) -> str | None:
    """Category label of a raw value (``None`` for missing or an unsupported type)."""
    t = type(value)
    if t is str:
        label = value.strip()  # type: ignore[union-attr]
        return label or None
    if t is int:
        return str(value)
    if t is float:
        return format_number(value) if _isfinite(value) else None  # type: ignore[arg-type]
    if value is None or t is bool:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, int | float):
        return format_number(value) if isinstance(value, int) or _isfinite(value) else None
    return None


# --------------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldSpec:
    """What was learnt about one field at fit time."""

    name: str
    kind: str  #: one of :data:`KINDS`
    n_seen: int = 0  #: non-null values seen (numeric: values that parsed)
    mean: float | None = None  #: numeric only
    std: float | None = None  #: numeric only, > 0
    categories: tuple[str, ...] = ()  #: categorical only, most frequent first

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"field name must be a non-empty string, got {_short(self.name)}")
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {_short(self.kind)}")
        if isinstance(self.n_seen, bool) or not isinstance(self.n_seen, int) or self.n_seen < 0:
            raise ValueError(f"field {self.name!r}: n_seen must be an int >= 0, got {_short(self.n_seen)}")
        if not isinstance(self.categories, tuple):
            object.__setattr__(self, "categories", tuple(self.categories))
        if self.kind == "numeric":
            for attr in ("mean", "std"):
                v = getattr(self, attr)
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ValueError(f"numeric field {self.name!r}: {attr} must be a finite number, got {_short(v)}")
                object.__setattr__(self, attr, float(v))
            if self.std <= 0:  # type: ignore[operator]
                raise ValueError(f"numeric field {self.name!r}: std must be > 0, got {self.std!r}")
        elif self.mean is not None or self.std is not None:
            raise ValueError(f"{self.kind} field {self.name!r} must not carry mean/std")
        if self.kind == "categorical":
            if not all(isinstance(c, str) for c in self.categories):
                raise ValueError(f"categorical field {self.name!r}: categories must be strings")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"categorical field {self.name!r}: categories repeated")
        elif self.categories:
            raise ValueError(f"{self.kind} field {self.name!r} must not carry categories")
        if self.kind == "empty" and self.n_seen != 0:
            raise ValueError(f"empty field {self.name!r} must have n_seen 0, got {self.n_seen}")

    @property
    def feature_names(self) -> list[str]:
        """Names of this field's raw features (empty for ``empty``/``identifier`` fields)."""
        if self.kind == "numeric":
            return [self.name, f"{self.name}:missing"]
        if self.kind == "categorical":
            return [f"{self.name}={c}" for c in self.categories] + [f"{self.name}:other", f"{self.name}:missing"]
        return []

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "n_seen": self.n_seen,
            "mean": self.mean,
            "std": self.std,
            "categories": list(self.categories),
        }


@dataclass(frozen=True)
class TabularParams:
    """Fit parameters (validated)."""

    max_categories: int = 32
    numeric_share: float = 0.9
    clip: float = 5.0

    def __post_init__(self) -> None:
        mc = self.max_categories
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise ValueError(f"max_categories must be an int >= 1, got {_short(mc)}")
        ns = self.numeric_share
        if isinstance(ns, bool) or not isinstance(ns, int | float) or not (0 < ns <= 1):
            raise ValueError(f"numeric_share must be a number in (0, 1], got {_short(ns)}")
        c = self.clip
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"clip must be a finite number > 0, got {_short(c)}")
        object.__setattr__(self, "numeric_share", float(ns))
        object.__setattr__(self, "clip", float(c))

    def to_dict(self) -> dict[str, Any]:
        return {"max_categories": self.max_categories, "numeric_share": self.numeric_share, "clip": self.clip}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class TabularEncoderState:
    """A fitted tabular encoder: field specs sorted by name, fit parameters and a content version.

    ``version`` is the first 12 hex digits of the SHA-256 of the canonical JSON (sorted keys, no
    whitespace, shortest float reprs) of the format version, fields, params and ``fitted_rows``:
    the same data always gives the same version, and any edit changes it.
    """

    fields: tuple[FieldSpec, ...]
    params: TabularParams = dataclasses.field(default_factory=TabularParams)
    fitted_rows: int = 0
    version: str = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        if not all(isinstance(f, FieldSpec) for f in fields):
            raise ValueError("fields must be FieldSpec instances")
        names = [f.name for f in fields]
        if names != sorted(names) or len(set(names)) != len(names):
            raise ValueError(f"fields must be unique and sorted by name, got {names[:10]}")
        if not isinstance(self.params, TabularParams):
            raise ValueError(f"params must be TabularParams, got {type(self.params).__name__}")
        for f in fields:
            if f.kind == "categorical" and len(f.categories) > self.params.max_categories:
                raise ValueError(
                    f"field {f.name!r} has {len(f.categories)} categories > max_categories "
                    f"{self.params.max_categories}"
                )
        fr = self.fitted_rows
        if isinstance(fr, bool) or not isinstance(fr, int) or fr < 0:
            raise ValueError(f"fitted_rows must be an int >= 0, got {_short(fr)}")
        object.__setattr__(self, "fields", fields)
        digest = hashlib.sha256(_canonical(self._content()).encode("utf-8")).hexdigest()
        object.__setattr__(self, "version", digest[:12])

    def _content(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "fields": [f.to_dict() for f in self.fields],
            "params": self.params.to_dict(),
            "fitted_rows": self.fitted_rows,
        }

    @cached_property
    def _features(self) -> tuple[str, ...]:
        return tuple(n for f in self.fields for n in f.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """One name per raw feature, in encoding order (e.g. ``price``, ``price:missing``,
        ``material=steel``, ``material:other``, ``material:missing``)."""
        return list(self._features)

    @property
    def raw_dim(self) -> int:
        """Number of raw features (0: nothing to encode)."""
        return len(self._features)

    @property
    def dim(self) -> int:
        """Output dimension, always :data:`TABULAR_DIM`."""
        return TABULAR_DIM

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def field(self, name: str) -> FieldSpec | None:
        """The spec of field ``name`` (``None`` when unknown)."""
        return self._by_name.get(name)

    @cached_property
    def _by_name(self) -> dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}

    @cached_property
    def projection(self) -> np.ndarray | None:
        """The ``(raw_dim, TABULAR_DIM)`` Gaussian projection (``None`` when padding suffices).

        Seeded from ``sha256("tabular-projection:" + version)`` through NumPy's legacy
        ``RandomState`` (MT19937), whose stream NumPy keeps stable across releases.
        """
        if self.raw_dim <= TABULAR_DIM:
            return None
        seed_bytes = hashlib.sha256(f"tabular-projection:{self.version}".encode()).digest()
        rng = np.random.RandomState(np.frombuffer(seed_bytes, dtype="<u4").astype(np.uint32))
        return rng.standard_normal((self.raw_dim, TABULAR_DIM)) / math.sqrt(TABULAR_DIM)

    def to_json(self) -> str:
        """Stable, human-readable JSON (exact float round trip)."""
        payload = {"format": FORMAT, "version": self.version, **self._content()}
        return json.dumps(payload, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> TabularEncoderState:
        """Parse and validate :meth:`to_json` output.

        Raises:
            ValueError: invalid JSON, wrong format/version tag, missing or extra keys, values of the
                wrong type, or a stored ``version`` that does not match the content (tampered/corrupt).
        """
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"tabular encoder state is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"tabular encoder state must be a JSON object, got {type(obj).__name__}")
        expected = {"format", "format_version", "version", "fields", "params", "fitted_rows"}
        if set(obj) != expected:
            missing, extra = sorted(expected - set(obj)), sorted(set(obj) - expected)
            raise ValueError(f"tabular encoder state keys wrong: missing {missing}, unexpected {extra}")
        if obj["format"] != FORMAT:
            raise ValueError(f"not a tabular encoder state: format {_short(obj['format'])}")
        if obj["format_version"] != FORMAT_VERSION or isinstance(obj["format_version"], bool):
            raise ValueError(f"unsupported tabular encoder format_version {_short(obj['format_version'])}")
        params = obj["params"]
        if not isinstance(params, dict) or set(params) != {"max_categories", "numeric_share", "clip"}:
            raise ValueError(f"bad params in tabular encoder state: {_short(params)}")
        if not isinstance(obj["fields"], list):
            raise ValueError("fields in tabular encoder state must be a list")
        specs: list[FieldSpec] = []
        field_keys = {"name", "kind", "n_seen", "mean", "std", "categories"}
        for i, fd in enumerate(obj["fields"]):
            if not isinstance(fd, dict) or set(fd) != field_keys:
                raise ValueError(f"field #{i} in tabular encoder state is malformed: {_short(fd)}")
            if not isinstance(fd["categories"], list):
                raise ValueError(f"field #{i}: categories must be a list")
            try:
                specs.append(FieldSpec(
                    name=fd["name"], kind=fd["kind"], n_seen=fd["n_seen"], mean=fd["mean"],
                    std=fd["std"], categories=tuple(fd["categories"]),
                ))
            except TypeError as exc:
                raise ValueError(f"field #{i} in tabular encoder state: {exc}") from None
        try:
            state = cls(fields=tuple(specs), params=TabularParams(**params), fitted_rows=obj["fitted_rows"])
        except TypeError as exc:
            raise ValueError(f"tabular encoder state: {exc}") from None
        if state.version != obj["version"]:
            raise ValueError(
                f"tabular encoder state version mismatch: file says {_short(obj['version'])}, content hashes "
                f"to {state.version!r} (tampered or corrupt)"
            )
        return state


# --------------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# typing rows
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# typed frame
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# persistence
# --------------------------------------------------------------------------------------------------


def state_path(directory: Path | str, version: str) -> Path:
    """``<directory>/tabular_encoder-<version>.json``."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version):
        raise ValueError(f"bad tabular encoder version {_short(version)} (expected 12 lowercase hex digits)")
    return Path(directory) / f"{STATE_PREFIX}{version}.json"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_state(state: TabularEncoderState, directory: Path | str) -> Path:
    """Write the state as ``tabular_encoder-<version>.json`` and point ``current.json`` at it.

    Both writes are atomic (temp file + ``os.replace``). Returns the state file path.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = state_path(d, state.version)
    _atomic_write(path, state.to_json())
    _atomic_write(d / CURRENT_NAME, _canonical({"version": state.version, "file": path.name}) + "\n")
    return path


def load_state(directory: Path | str, version: str | None = None) -> TabularEncoderState | None:
    """Load state ``version`` (the one ``current.json`` points at when ``None``).

    Returns ``None`` when nothing is saved (no ``current.json``, or no file for ``version``).

    Raises:
        ValueError: a malformed ``current.json`` or state file, or a file whose content does not match
            its version.
    """
    d = Path(directory)
    if version is None:
        try:
            text = (d / CURRENT_NAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{d / CURRENT_NAME}: not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("version"), str):
            raise ValueError(f"{d / CURRENT_NAME}: expected {{'version': ..., 'file': ...}}, got {_short(obj)}")
        version = obj["version"]
        path = state_path(d, version)
        if not path.exists():
            raise ValueError(f"{d / CURRENT_NAME} points at {path.name}, which does not exist")
    else:
        path = state_path(d, version)
        if not path.exists():
            return None
    try:
        state = TabularEncoderState.from_json(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if state.version != version:
        raise ValueError(f"{path}: holds state {state.version}, expected {version}")
    return state


def fit_or_load(
    directory: Path | str, rows: Sequence[Mapping[str, FieldValue] | None], **params: Any
) -> tuple[TabularEncoderState, bool]:
    """The current saved state, or a state fitted on ``rows`` and saved -- ``(state, fitted_now)``.

    Runs under an exclusive ``fcntl.flock`` on ``<directory>/.lock``, so concurrent callers agree on
    one state: the first to take the lock fits on its rows and saves; the others load that state (their
    ``params`` are then ignored). A fitted state with no usable feature (``raw_dim == 0``) is returned
    but *not* saved, so a later batch with usable fields can still fit one.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            existing = load_state(d)
            if existing is not None:
                return existing, False
            state = fit_tabular(rows, **params)
            if state.raw_dim > 0:
                save_state(state, d)
            return state, True
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
