"""The one way a path or a name goes into SQL text: as a quoted literal or a quoted identifier.

Values that can be bound as parameters (``con.execute(sql, [value])``) should be; these two are for the
places DuckDB does not take a parameter (file paths inside ``CREATE VIEW``/``COPY``, view and table names).
"""

from __future__ import annotations

import os
import re


def sql_literal(value: str | os.PathLike[str]) -> str:
    """``value`` as a SQL string literal: single quotes doubled. NUL bytes cannot be represented: rejected."""
    s = os.fspath(value)
    if "\x00" in s:
        raise ValueError(f"NUL byte in a SQL string literal: {s!r}")
    return "'" + s.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier: double quotes doubled. Empty names and NUL bytes are rejected."""
    if not name or "\x00" in name:
        raise ValueError(f"not a usable SQL identifier: {name!r}")
    return '"' + name.replace('"', '""') + '"'

def glob_escape(path: str) -> str:
    """``path`` as a DuckDB glob matching only itself: ``[``, ``]``, ``*``, ``?`` become one-character classes."""
    return re.sub(r"([\[\]*?])", r"[\1]", path)
