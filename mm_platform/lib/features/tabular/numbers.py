"""Field values as numbers and categories: strict number parsing, canonical number text, missing values."""

from __future__ import annotations

import math
import re
from typing import Any

_isfinite = math.isfinite
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")





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
