"""Time-series streams of a landing batch and their as-of alignment to records.

A batch may carry ``streams/<name>.csv`` or ``streams/<name>.parquet`` (extension case-insensitive,
``<name>`` matching :data:`STREAM_NAME_RE`). A stream file has:

* a ``timestamp`` column (matched case-insensitively when no exact ``timestamp`` exists): ISO-8601
  strings (naive means UTC, offsets converted to UTC -- the rules of
  :func:`mm_platform.lib.landing.manifest.parse_timestamp`), a Datetime/Date column (naive means UTC), or epoch
  seconds (a numeric column, or a cell that is a plain number such as ``1700000000`` or ``1.7e9`` -- so
  write dates with dashes);
* an optional ``entity_id`` column (cast to string, stripped);
* value columns, cast to Float64. Blank cells are null; non-numeric or non-finite cells become null
  and are counted in :attr:`StreamTable.bad_cells`. A column with cells but not one number in them (a
  text column) is dropped with a file-level problem; a column of another type (list, struct, ...) too.

Rows whose timestamp is null or unparseable (or, when the stream has ``entity_id``, whose entity is
empty) are dropped and listed in :attr:`StreamTable.bad_rows` (row numbers are 1-based data rows,
header excluded). Duplicate ``(entity_id, timestamp)`` readings keep the last one in file order.

Alignment (:func:`align_stream`) attaches to each record the reading of its entity that is the last at
or before (``backward``), the first at or after (``forward``) or the closest to (``nearest``; a tie
goes to the earlier reading) the record's timestamp, if ``|record - reading| <= tolerance``
(inclusive).
"""

from __future__ import annotations

from mm_platform.lib.features.streams.align import align_stream, alignment_report_row, parse_tolerance
from mm_platform.lib.features.streams.read import (  # noqa: F401
    ALIGNMENT_REPORT_SCHEMA,
    ENTITY,
    MAX_BAD_ROW_DETAILS,
    MAX_STREAM_BYTES,
    MAX_STREAM_ROWS,
    STRATEGIES,
    STREAM_DIR,
    STREAM_EXTENSIONS,
    STREAM_NAME_RE,
    TS,
    UNMATCHED_REASONS,
    StreamError,
    StreamProblem,
    StreamTable,
    discover_streams,
    read_stream,
    stream_name,
)

__all__ = [
    "ALIGNMENT_REPORT_SCHEMA",
    "ENTITY",
    "MAX_BAD_ROW_DETAILS",
    "MAX_STREAM_BYTES",
    "MAX_STREAM_ROWS",
    "STRATEGIES",
    "STREAM_DIR",
    "STREAM_EXTENSIONS",
    "STREAM_NAME_RE",
    "StreamError",
    "StreamProblem",
    "StreamTable",
    "TS",
    "UNMATCHED_REASONS",
    "align_stream",
    "alignment_report_row",
    "discover_streams",
    "parse_tolerance",
    "read_stream",
    "stream_name",
]
