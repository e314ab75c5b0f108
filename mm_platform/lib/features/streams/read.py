"""Reading stream files: discovery, timestamp parsing, numeric value columns (rules in
:mod:`mm_platform.lib.features.streams`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from mm_platform.lib.storage.tables import ALIGNMENT_REPORT_SCHEMA  # noqa: F401  (the table schema lives with the lake tables)

STREAM_DIR = "streams"
STREAM_NAME_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STREAM_EXTENSIONS: tuple[str, ...] = (".csv", ".parquet")
STRATEGIES: tuple[str, ...] = ("backward", "forward", "nearest")
UNMATCHED_REASONS: tuple[str, ...] = ("no_timestamp", "no_entity", "no_reading_within_tolerance")
MAX_STREAM_ROWS = 5_000_000
MAX_STREAM_BYTES = 1 << 30
MAX_BAD_ROW_DETAILS = 1000

TS = "timestamp"
ENTITY = "entity_id"
_UTC_DT = pl.Datetime("us", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MIN_S = -62135596800.0  # 0001-01-01T00:00:00Z
_MAX_S = 253402300799.0  # 9999-12-31T23:59:59Z
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_TOL_RE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?$")
_TOL_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}



class StreamError(ValueError):
    """A stream file that cannot be used at all.

    ``reason``: ``unreadable_stream``, ``missing_timestamp_column``, ``no_value_columns``,
    ``empty_stream``, ``stream_too_large``, ``invalid_stream_name`` or ``unsupported_stream_format``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class StreamProblem:
    """A file-level problem found by :func:`discover_streams`."""

    path: Path
    reason: str  #: invalid_stream_name | unsupported_stream_format | path_outside_batch | not_a_file | ...
    detail: str


@dataclass
class StreamTable:
    """A readable stream (see the module docstring for the cleaning rules)."""

    name: str
    path: Path
    frame: pl.DataFrame  #: timestamp Datetime(us, UTC), [entity_id String], value columns Float64; sorted
    n_rows: int  #: data rows in the file
    value_columns: list[str]
    has_entity: bool
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  #: first MAX_BAD_ROW_DETAILS dropped rows
    bad_cells: int = 0  #: non-numeric/non-finite value cells (in rows with a usable timestamp)
    problems: list[str] = field(default_factory=list)  #: file-level messages (dropped columns, ...)
    n_bad_rows: int = 0  #: all dropped rows (``bad_rows`` keeps only the first details)
    n_duplicates: int = 0  #: readings dropped as duplicates of a later one


def _short(v: object, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


def stream_name(path: Path | str) -> str:
    """Stream name of a file: its name without the extension."""
    p = Path(path)
    return p.name[: -len(p.suffix)] if p.suffix else p.name


# --------------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------------


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def discover_streams(batch_dir: Path | str) -> tuple[list[Path], list[StreamProblem]]:
    """Stream files of a batch (sorted by name) and the problems with other entries of ``streams/``.

    Hidden entries (leading ``.``) are skipped silently. No ``streams`` directory: ``([], [])``.
    Problem reasons: ``not_a_directory`` (``streams`` itself), ``path_outside_batch`` (a symlink
    resolving outside the batch), ``not_a_file`` (directory, special file, dangling symlink),
    ``unsupported_stream_format``, ``invalid_stream_name``, ``duplicate_stream_name`` (``a.csv`` and
    ``a.parquet``: the first in name order wins).
    """
    batch = Path(batch_dir)
    root = batch.resolve()
    sdir = batch / STREAM_DIR
    if not sdir.exists() and not sdir.is_symlink():
        return [], []
    problems: list[StreamProblem] = []
    if not _within(sdir.resolve(), root):
        return [], [StreamProblem(sdir, "path_outside_batch", f"{STREAM_DIR} resolves outside the batch")]
    if not sdir.is_dir():
        return [], [StreamProblem(sdir, "not_a_directory", f"{STREAM_DIR} exists but is not a directory")]
    found: list[Path] = []
    seen: dict[str, Path] = {}
    for entry in sorted(sdir.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            target = entry.resolve()
            if not _within(target, root):
                problems.append(StreamProblem(entry, "path_outside_batch", f"symlink to {target} is outside the batch"))
                continue
        if not entry.exists():
            problems.append(StreamProblem(entry, "not_a_file", "dangling symlink"))
            continue
        if not entry.is_file():
            what = "directory" if entry.is_dir() else "special file"
            problems.append(StreamProblem(entry, "not_a_file", f"{what}, expected a .csv or .parquet file"))
            continue
        if entry.suffix.lower() not in STREAM_EXTENSIONS:
            problems.append(StreamProblem(
                entry, "unsupported_stream_format", f"extension {entry.suffix or '(none)'!r}; expected .csv or .parquet"
            ))
            continue
        name = stream_name(entry)
        if not STREAM_NAME_RE.fullmatch(name):
            problems.append(StreamProblem(
                entry, "invalid_stream_name", f"stream name {_short(name)} must match {STREAM_NAME_RE.pattern}"
            ))
            continue
        if name in seen:
            problems.append(StreamProblem(
                entry, "duplicate_stream_name", f"stream {name!r} already provided by {seen[name].name}"
            ))
            continue
        seen[name] = entry
        found.append(entry)
    return found, problems


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _parse_ts_string(s: str | None) -> tuple[int | None, str | None]:
    """(epoch microseconds, problem)."""
    if s is None:
        return None, "timestamp is null"
    t = s.strip()
    if not t:
        return None, "timestamp is empty"
    if _NUMBER_RE.fullmatch(t):
        return _epoch_us(float(t), s)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        return None, f"not an ISO-8601 timestamp or epoch seconds: {_short(s)}"
    try:
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    except (OverflowError, ValueError):
        return None, f"timestamp out of range in UTC: {_short(s)}"
    return (dt - _EPOCH) // _US, None


def _epoch_us(x: float, raw: object) -> tuple[int | None, str | None]:
    if not math.isfinite(x) or not (_MIN_S <= x <= _MAX_S):
        return None, f"epoch seconds out of range: {_short(raw)}"
    return round(x * 1_000_000), None


def _timestamp_micros(col: pl.Series) -> tuple[pl.Series, list[str | None]]:
    """(Int64 epoch-µs series with nulls, per-row problem or None)."""
    dt = col.dtype
    n = col.len()
    if dt == pl.String or dt == pl.Null:
        micros: list[int | None] = []
        errs: list[str | None] = []
        for s in col.cast(pl.String).to_list():
            us, err = _parse_ts_string(s)
            micros.append(us)
            errs.append(err)
        return pl.Series(micros, dtype=pl.Int64), errs
    if isinstance(dt, pl.Datetime) or dt == pl.Date:
        c = col.cast(pl.Datetime("us")) if dt == pl.Date else col
        if c.dtype.time_zone is None:  # type: ignore[union-attr]
            c = c.dt.replace_time_zone("UTC")
        c = c.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        out = c.dt.epoch("us")
        return out, [None if v is not None else "timestamp is null" for v in out.to_list()]
    if dt.is_numeric():
        values = col.to_list()
        micros = []
        errs = []
        for v in values:
            if v is None:
                micros.append(None)
                errs.append("timestamp is null")
            elif isinstance(v, int):
                if not (_MIN_S <= v <= _MAX_S):
                    micros.append(None)
                    errs.append(f"epoch seconds out of range: {v}")
                else:
                    micros.append(v * 1_000_000)
                    errs.append(None)
            else:
                us, err = _epoch_us(float(v), v)
                micros.append(us)
                errs.append(err)
        return pl.Series(micros, dtype=pl.Int64), errs
    raise StreamError("unreadable_stream", f"timestamp column has unsupported type {dt} ({n} rows)")


def _find_column(columns: list[str], wanted: str) -> str | None:
    if wanted in columns:
        return wanted
    for c in columns:
        if c.strip().lstrip("\ufeff").strip().lower() == wanted:
            return c
    return None


def _to_float(col: pl.Series) -> tuple[pl.Series | None, pl.Series | None, str | None]:
    """(Float64 values with nulls, bool 'bad cell' mask, problem) -- values None when unusable."""
    dt = col.dtype
    c = pl.col("v")
    if dt == pl.String:
        stripped = c.str.strip_chars()
        raw = pl.when(stripped != "").then(stripped)
    elif dt == pl.Boolean or dt == pl.Null or dt.is_numeric():
        raw = c
    else:
        return None, None, f"column {col.name!r} has unsupported type {dt}; dropped"
    num = raw.cast(pl.Float64, strict=False)
    finite = num.is_finite().fill_null(False)
    res = pl.DataFrame({"v": col}).select(
        pl.when(finite).then(num).alias("values"),
        (raw.is_not_null() & ~finite).alias("bad"),
    )
    values, bad = res["values"].alias(col.name), res["bad"]
    if bool(bad.any()) and values.is_null().all():
        return None, None, f"column {col.name!r} has no numeric value; dropped"
    return values, bad, None


def _read_frame(path: Path, fmt: str, max_rows: int) -> pl.DataFrame:
    if fmt == ".csv":
        df = pl.read_csv(path, infer_schema=False, n_rows=max_rows + 1, raise_if_empty=True)
        if df.height > max_rows:
            raise StreamError("stream_too_large", f"more than {max_rows} rows")
        return df
    n = int(pl.scan_parquet(path).select(pl.len()).collect().item())
    if n > max_rows:
        raise StreamError("stream_too_large", f"{n} rows > limit {max_rows}")
    return pl.read_parquet(path)


def read_stream(
    path: Path | str, *, max_rows: int = MAX_STREAM_ROWS, max_bytes: int = MAX_STREAM_BYTES
) -> StreamTable:
    """Read, clean and sort one stream file.

    Raises:
        StreamError: the file cannot be used at all (see :class:`StreamError` for reasons). Any
            polars/pyarrow/OS error while reading is translated to ``unreadable_stream``.
    """
    p = Path(path)
    name = stream_name(p)
    fmt = p.suffix.lower()
    if fmt not in STREAM_EXTENSIONS:
        raise StreamError("unsupported_stream_format", f"{p.name}: expected .csv or .parquet")
    if not STREAM_NAME_RE.fullmatch(name):
        raise StreamError("invalid_stream_name", f"stream name {_short(name)} must match {STREAM_NAME_RE.pattern}")
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise StreamError("unreadable_stream", f"{p.name}: {exc.strerror or exc}") from None
    if not p.is_file():
        raise StreamError("unreadable_stream", f"{p.name}: not a regular file")
    if size > max_bytes:
        raise StreamError("stream_too_large", f"{p.name}: {size} bytes > limit {max_bytes}")
    if size == 0:
        raise StreamError("empty_stream", f"{p.name}: file is empty")
    try:
        return _read_stream(p, name, fmt, max_rows)
    except StreamError:
        raise
    except Exception as exc:  # polars / pyarrow / OS / decoding errors: never escape untranslated
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StreamError("unreadable_stream", f"{p.name}: {type(exc).__name__}: {msg[:300]}") from None


def _read_stream(p: Path, name: str, fmt: str, max_rows: int) -> StreamTable:
    df = _read_frame(p, fmt, max_rows)
    n_rows = df.height
    columns = df.columns
    ts_col = _find_column(columns, TS)
    if ts_col is None:
        raise StreamError("missing_timestamp_column", f"{p.name}: no 'timestamp' column among {columns[:20]}")
    ent_col = _find_column([c for c in columns if c != ts_col], ENTITY)
    problems: list[str] = []
    candidates = [c for c in columns if c not in (ts_col, ent_col)]
    if not candidates:
        raise StreamError("no_value_columns", f"{p.name}: only {[c for c in (ts_col, ent_col) if c]} columns")
    if n_rows == 0:
        raise StreamError("empty_stream", f"{p.name}: header only, no data rows")

    micros, ts_errs = _timestamp_micros(df[ts_col])
    row_err: list[str | None] = list(ts_errs)
    entity: pl.Series | None = None
    if ent_col is not None:
        entity = df[ent_col].cast(pl.String).str.strip_chars()
        for i, e in enumerate(entity.to_list()):
            if row_err[i] is None and not e:
                row_err[i] = "entity_id is empty"
    keep = pl.Series([e is None for e in row_err], dtype=pl.Boolean)
    bad_idx = [i for i, e in enumerate(row_err) if e is not None]
    bad_rows = [(i + 1, str(row_err[i])) for i in bad_idx[:MAX_BAD_ROW_DETAILS]]
    if not keep.any():
        first = "; ".join(f"row {r}: {d}" for r, d in bad_rows[:3])
        raise StreamError("empty_stream", f"{p.name}: none of {n_rows} rows is usable ({first})")

    out: dict[str, pl.Series] = {TS: micros.filter(keep).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")}
    if entity is not None:
        out[ENTITY] = entity.filter(keep).alias(ENTITY)
    bad_cells = 0
    value_columns: list[str] = []
    for c in candidates:
        values, bad, problem = _to_float(df[c].filter(keep))
        if values is None or bad is None:
            problems.append(str(problem))
            continue
        bad_cells += int(bad.sum())
        value_columns.append(c)
        out[c] = values
    if not value_columns:
        raise StreamError("no_value_columns", f"{p.name}: no usable value column ({'; '.join(problems)})")
    frame = pl.DataFrame(out)
    key = [ENTITY, TS] if entity is not None else [TS]
    deduped = frame.unique(subset=key, keep="last", maintain_order=True)
    n_dup = frame.height - deduped.height
    frame = deduped.sort(key, maintain_order=True)
    return StreamTable(
        name=name, path=p, frame=frame, n_rows=n_rows, value_columns=value_columns,
        has_entity=entity is not None, bad_rows=bad_rows, bad_cells=bad_cells, problems=problems,
        n_bad_rows=len(bad_idx), n_duplicates=n_dup,
    )


# --------------------------------------------------------------------------------------------------
# alignment
# --------------------------------------------------------------------------------------------------
