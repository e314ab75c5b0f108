"""The fitted tabular encoder's state: per-field specs, fit parameters and the versioned :class:`TabularEncoderState`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from mm_platform.lib.features.tabular.numbers import _short

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

_VERSION_RE = re.compile(r"^[0-9a-f]{12}$")




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
