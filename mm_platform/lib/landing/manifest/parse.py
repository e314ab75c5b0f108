"""Parsing ``records.jsonl``: one :class:`ManifestRecord` or :class:`Rejection` per line (the rules are in
:mod:`mm_platform.lib.landing.manifest`)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mm_platform.lib import media
from mm_platform.lib.media import MediaError

BATCH_ID_RE: re.Pattern[str] = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MANIFEST_NAME = "records.jsonl"
MODALITIES: tuple[str, ...] = ("text", "image", "audio", "fields")
OPS: tuple[str, ...] = ("upsert", "delete")

MAX_RECORD_ID_CHARS = 256
MAX_LABEL_CHARS = 256
MAX_ENTITY_ID_CHARS = 256
MAX_FIELD_NAME_CHARS = 128
MAX_FIELDS = 256
MAX_FIELD_STR_CHARS = 10_000

FieldValue = float | int | str | None


@dataclass(frozen=True)
class Rejection:
    """One problem found in a manifest line (or in the media a line points at)."""

    batch_id: str
    line_number: int  # 1-based physical line in records.jsonl
    record_id: str | None  # when known
    modality: str  # "record" | "text" | "image" | "audio" | "fields" | "timestamp" | "label"
    reason: str  # stable snake_case code
    detail: str  # human-readable, specific


@dataclass(frozen=True)
class ManifestRecord:
    """A manifest line that passed record-level validation (possibly with some parts rejected)."""

    batch_id: str
    line_number: int
    record_id: str
    op: str  # "upsert" | "delete"
    timestamp: datetime | None  # timezone-aware UTC
    text: str | None  # normalised (NFC, stripped)
    image: str | None  # relative path as written
    audio: str | None  # relative path as written
    fields: dict[str, FieldValue] | None
    label: str | None
    entity_id: str | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities present on this record, in :data:`MODALITIES` order."""
        return tuple(m for m in MODALITIES if getattr(self, m) is not None)


@dataclass
class ParsedManifest:
    """Result of :func:`parse_manifest`."""

    batch_id: str
    manifest_sha256: str
    n_lines: int  # non-blank lines
    records: list[ManifestRecord] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


@dataclass(frozen=True)
class BatchInfo:
    """A complete landing batch (its manifest exists)."""

    batch_id: str
    path: Path
    manifest_path: Path
    manifest_mtime: float
    manifest_sha256: str


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def is_valid_batch_id(s: str) -> bool:
    """True when ``s`` matches :data:`BATCH_ID_RE` and is not ``.`` or ``..``."""
    return isinstance(s, str) and bool(BATCH_ID_RE.fullmatch(s)) and s not in (".", "..")


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_clean_str(s: str) -> bool:
    """UTF-8 encodable (no lone surrogates) and free of NUL."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in s


def _has_control(s: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in s)


#: Bidirectional formatting controls (embeddings, overrides, isolates, marks): text holding one can display
#: differently from what it is ("Trojan Source"), so no id may contain them.
BIDI_CONTROLS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)] + ["\u200e", "\u200f", "\u061c"]
)
#: Categories of characters that draw nothing: controls, format (zero-width) chars, separators, marks alone,
#: private use and unassigned.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"})
#: Letters and symbols that render blank although their category says otherwise.
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def id_display_problem(s: str) -> str | None:
    """Why ``s`` cannot serve as an id a person reads, or None: it holds a bidirectional control, or no
    visible character at all (only whitespace, zero-width or other format characters)."""
    bidi = sorted({f"U+{ord(c):04X}" for c in s if c in BIDI_CONTROLS})
    if bidi:
        return f"contains bidirectional control characters ({', '.join(bidi)})"
    if not any(unicodedata.category(c) not in _INVISIBLE_CATEGORIES and c not in _BLANK_GLYPHS for c in s):
        return "has no visible character (only whitespace, zero-width or format characters)"
    return None


def _short(v: Any, n: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= n else r[: n - 3] + "..."


class _JsonProblem(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _JsonProblem(f"non-standard JSON constant {name}")


def _pairs_no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _JsonProblem(f"duplicate key {_short(k)}")
        out[k] = v
    return out


def parse_timestamp(value: object) -> datetime:
    """Parse an ISO-8601 timestamp string to an aware UTC datetime (naive input = UTC).

    Accepts what ``datetime.fromisoformat`` accepts (incl. ``Z``, offsets, date-only). Raises
    ``ValueError`` with a specific message otherwise.
    """
    if not isinstance(value, str):
        raise ValueError(f"timestamp must be an ISO-8601 string, got {type(value).__name__} {_short(value)}")
    s = value.strip()
    if not s:
        raise ValueError("timestamp is empty")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {_short(value)}") from None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp out of range in UTC: {_short(value)}") from None


def _check_fields(value: object) -> dict[str, FieldValue]:
    if not isinstance(value, dict):
        raise ValueError(f"fields must be a JSON object, got {type(value).__name__}")
    if not value:
        raise ValueError("fields object is empty")
    if len(value) > MAX_FIELDS:
        raise ValueError(f"fields has {len(value)} entries > limit {MAX_FIELDS}")
    problems: list[str] = []
    out: dict[str, FieldValue] = {}
    for k, v in value.items():
        if not k.strip() or len(k) > MAX_FIELD_NAME_CHARS or not _is_clean_str(k) or _has_control(k):
            problems.append(f"bad field name {_short(k, 40)}")
            continue
        if v is None:
            out[k] = None
        elif isinstance(v, bool):
            problems.append(f"{k}: booleans not allowed (got {v!r})")
        elif isinstance(v, int):
            if abs(v) >= 2**63:
                problems.append(f"{k}: integer out of 64-bit range")
            else:
                out[k] = v
        elif isinstance(v, float):
            if not math.isfinite(v):
                problems.append(f"{k}: non-finite number {v!r}")
            else:
                out[k] = v
        elif isinstance(v, str):
            if not _is_clean_str(v):
                problems.append(f"{k}: string has lone surrogates or NUL")
            elif len(v) > MAX_FIELD_STR_CHARS:
                problems.append(f"{k}: string longer than {MAX_FIELD_STR_CHARS} chars")
            else:
                out[k] = v
        else:
            problems.append(f"{k}: value must be number, string or null, got {type(v).__name__}")
    if problems:
        raise ValueError("; ".join(problems[:10]) + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    return out


# --------------------------------------------------------------------------------------------------
# line parsing
# --------------------------------------------------------------------------------------------------


def _decode_object(line_number: int, raw: bytes) -> dict[str, Any] | tuple[str, str]:
    """The line's JSON object, or ``(reason, detail)`` of the record-level rejection."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ("invalid_encoding",
                f"line is not valid UTF-8: byte {raw[exc.start:exc.start + 1].hex()} at offset {exc.start}")
    if line_number == 1 and line.startswith("\ufeff"):
        line = line[1:]
    try:
        obj = json.loads(line, object_pairs_hook=_pairs_no_dupes, parse_constant=_reject_constant)
    except _JsonProblem as exc:
        return "malformed_json", str(exc)
    except (ValueError, RecursionError) as exc:
        return "malformed_json", f"invalid JSON: {exc}; line starts {_short(line, 60)}"
    if not isinstance(obj, dict):
        return "malformed_json", f"expected a JSON object, got {type(obj).__name__}"
    return obj


def _record_id_problem(rid: object) -> tuple[str, str] | None:
    """``(reason, detail)`` when ``rid`` is not a usable record id."""
    if rid is None:
        return "missing_record_id", "record_id is missing or null"
    if not isinstance(rid, str):
        return "invalid_record_id", f"record_id must be a string, got {type(rid).__name__} {_short(rid)}"
    if not rid.strip():
        return "invalid_record_id", "record_id is empty or whitespace"
    if not _is_clean_str(rid) or _has_control(rid):
        return "invalid_record_id", f"record_id contains surrogates/control characters: {_short(rid)}"
    if rid != rid.strip():
        return "invalid_record_id", f"record_id has leading/trailing whitespace: {_short(rid)}"
    if len(rid) > MAX_RECORD_ID_CHARS:
        return "invalid_record_id", f"record_id longer than {MAX_RECORD_ID_CHARS} characters"
    problem = id_display_problem(rid)
    return ("invalid_record_id", f"record_id {problem}: {_short(rid)}") if problem else None


def _check_label(lab: object) -> str:
    """The stripped label; ``ValueError`` with the detail of an ``invalid_label`` rejection otherwise."""
    if not isinstance(lab, str):
        raise ValueError(f"label must be a string, got {type(lab).__name__} {_short(lab)}")
    if not _is_clean_str(lab) or _has_control(lab):
        raise ValueError(f"label contains surrogates/control characters: {_short(lab)}")
    if not lab.strip():
        raise ValueError("label is empty or whitespace")
    if len(lab.strip()) > MAX_LABEL_CHARS:
        raise ValueError(f"label longer than {MAX_LABEL_CHARS} characters")
    return lab.strip()


def _check_entity(raw: object) -> str:
    """The stripped entity id; ``ValueError`` with the detail of an ``invalid_entity_id`` rejection otherwise."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ValueError(f"entity_id must be a string (or integer), got {type(raw).__name__} {_short(raw)}")
    ent = str(raw).strip()
    if not ent or not _is_clean_str(ent) or _has_control(ent) or len(ent) > MAX_ENTITY_ID_CHARS:
        raise ValueError(f"entity_id must be 1-{MAX_ENTITY_ID_CHARS} printable characters: {_short(raw)}")
    if problem := id_display_problem(ent):
        raise ValueError(f"entity_id {problem}: {_short(ent)}")
    return ent


def _parse_line(
    batch_id: str, line_number: int, raw: bytes
) -> tuple[ManifestRecord | None, list[Rejection]]:
    """Validate one non-blank line (duplicates are handled by the caller)."""

    def rec_reject(reason: str, detail: str, rid: str | None = None) -> tuple[None, list[Rejection]]:
        return None, [Rejection(batch_id, line_number, rid, "record", reason, detail)]

    obj = _decode_object(line_number, raw)
    if isinstance(obj, tuple):
        return rec_reject(*obj)
    rid = obj.get("record_id")
    if (id_problem := _record_id_problem(rid)) is not None:
        return rec_reject(*id_problem)
    op = obj.get("op", None)
    if op is None:
        op = "upsert"
    if op not in OPS:
        return rec_reject("invalid_op", f"op must be one of {OPS}, got {_short(op)}", rid)

    rejections: list[Rejection] = []

    def part(modality: str, reason: str, check: Any, value: Any, prefix: str = "") -> Any:
        """``check(value)``, or None with a rejection of that part of the line."""
        try:
            return check(value)
        except MediaError as exc:
            rejections.append(Rejection(batch_id, line_number, rid, modality, exc.reason, prefix + exc.detail))
        except ValueError as exc:
            rejections.append(Rejection(batch_id, line_number, rid, modality, reason, str(exc)))
        return None

    ts: datetime | None = None
    if obj.get("timestamp") is not None:
        ts = part("timestamp", "invalid_timestamp", parse_timestamp, obj["timestamp"])
    if op == "delete":
        return ManifestRecord(batch_id, line_number, rid, "delete", ts, None, None, None, None, None), rejections

    if not any(obj.get(m) is not None for m in MODALITIES):
        return rec_reject("no_modality", f"upsert has none of {', '.join(MODALITIES)} (all missing or null)", rid)
    present = {k: obj[k] for k in (*MODALITIES, "label", "entity_id") if obj.get(k) is not None}
    text = part("text", "invalid_text", media.normalize_text, present["text"]) if "text" in present else None
    paths: dict[str, str | None] = {
        m: part(m, "invalid_path", media.check_relative_path, present[m], f"{m} ") if m in present else None
        for m in ("image", "audio")}
    fields = part("fields", "invalid_fields", _check_fields, present["fields"]) if "fields" in present else None
    label = part("label", "invalid_label", _check_label, present["label"]) if "label" in present else None
    entity = part("entity_id", "invalid_entity_id", _check_entity, present["entity_id"]) if "entity_id" in present else None

    if text is None and paths["image"] is None and paths["audio"] is None and fields is None:
        # every modality the line carried was rejected: the modality rejections account for it
        return None, rejections
    rec = ManifestRecord(
        batch_id, line_number, rid, "upsert", ts, text, paths["image"], paths["audio"], fields, label, entity
    )
    return rec, rejections


def parse_manifest(batch_dir: Path, batch_id: str | None = None) -> ParsedManifest:
    """Parse ``<batch_dir>/records.jsonl`` into valid records and rejections.

    The manifest is read once in binary, line by line (``\\n`` separated, a trailing ``\\r`` is
    dropped), hashing exactly the bytes that are parsed. Blank/whitespace-only lines are skipped
    and not counted in ``n_lines``; line numbers are physical 1-based line numbers. See the module
    docstring for the full accounting rules and reason codes. Duplicate ``record_id``: the first
    line that yields a record keeps the id; later lines get ``duplicate_record_id``.

    ``batch_id`` defaults to the folder name. Raises ``ValueError`` for an invalid batch id and
    ``FileNotFoundError`` when the manifest does not exist (the batch is not complete); never
    raises for bad manifest *content*.
    """
    batch_dir = Path(batch_dir)
    bid = batch_id if batch_id is not None else batch_dir.name
    if not is_valid_batch_id(bid):
        raise ValueError(f"invalid batch id {bid!r}")
    h = hashlib.sha256()
    out = ParsedManifest(batch_id=bid, manifest_sha256="", n_lines=0)
    seen: dict[str, int] = {}
    with open(batch_dir / MANIFEST_NAME, "rb") as fh:
        for line_number, raw in enumerate(fh, start=1):
            h.update(raw)
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if body.endswith(b"\r"):
                body = body[:-1]
            if not body.strip() or (line_number == 1 and body.strip() == b"\xef\xbb\xbf"):
                continue
            out.n_lines += 1
            rec, rejs = _parse_line(bid, line_number, body)
            if rec is not None and rec.record_id in seen:
                rejs = [
                    Rejection(
                        bid,
                        line_number,
                        rec.record_id,
                        "record",
                        "duplicate_record_id",
                        f"record_id {rec.record_id!r} already used on line {seen[rec.record_id]}",
                    )
                ]
                rec = None
            if rec is not None:
                seen[rec.record_id] = line_number
                out.records.append(rec)
            out.rejections.extend(rejs)
    out.manifest_sha256 = h.hexdigest()
    return out
