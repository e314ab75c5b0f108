"""Landing-zone contract: ``records.jsonl`` manifest parsing (:mod:`.parse`) and media checks (:mod:`.media_checks`);
batch discovery is :mod:`mm_platform.lib.landing.batches`.

Layout: ``$MM_LANDING_DIR/<batch_id>/`` with ``batch_id`` matching :data:`BATCH_ID_RE` (and not
``.``/``..``). Producers write media first and the manifest :data:`MANIFEST_NAME` last, so a
batch is *complete* exactly when its manifest exists.

Each manifest line is one JSON object::

    {"record_id": str,                      # required
     "op": "upsert" | "delete",             # optional, default "upsert"
     "timestamp": ISO-8601 str,             # optional; naive = UTC; stored as aware UTC
     "text": str, "image": rel path, "audio": rel path,
     "fields": {name: number | string | null},
     "entity_id": str,                      # optional: the device/store/patient the record is about;
                                            # stream readings of that entity are joined to it
     "label": str}                          # optional ground-truth / business label

Accounting rules (bad input never crashes and never disappears):

* Blank (whitespace-only) lines are skipped: they are neither records nor rejections and are not
  counted in :attr:`ParsedManifest.n_lines`. Line numbers still count them (1-based, physical).
* Every non-blank line yields a :class:`ManifestRecord`, or at least one :class:`Rejection`, or
  both (a record kept with its valid modalities while a broken optional part is rejected).
* Record-level problems (``modality="record"``) reject the whole line: ``invalid_encoding``,
  ``malformed_json`` (also: not an object, duplicate keys, NaN/Infinity), ``missing_record_id``,
  ``invalid_record_id``, ``invalid_op``, ``no_modality`` (an upsert without any of text/image/
  audio/fields), ``duplicate_record_id`` (the first *accepted* line with an id wins).
* A broken optional part rejects only that part (modality = ``"text"``, ``"image"``, ``"audio"``,
  ``"fields"``, ``"timestamp"``, ``"entity_id"`` or ``"label"``). If every modality the line carried is rejected,
  no record is produced and those modality rejections account for the line.
* ``delete`` lines need only ``record_id`` (a timestamp is still parsed); payload keys are ignored.
* Unknown top-level keys are ignored (forward compatibility).
* Path checks here are syntactic only; :func:`check_record_media` / :func:`validate_batch` do the
  file checks through :mod:`mm_platform.lib.media`.
"""

from __future__ import annotations

from mm_platform.lib.landing.batches import list_complete_batches
from mm_platform.lib.landing.manifest.media_checks import (
    MediaCheck,
    ValidatedBatch,
    check_record_media,
    validate_batch,
)
from mm_platform.lib.landing.manifest.parse import (  # noqa: F401
    BATCH_ID_RE,
    BIDI_CONTROLS,
    MANIFEST_NAME,
    MAX_ENTITY_ID_CHARS,
    MAX_FIELD_NAME_CHARS,
    MAX_FIELD_STR_CHARS,
    MAX_FIELDS,
    MAX_LABEL_CHARS,
    MAX_RECORD_ID_CHARS,
    MODALITIES,
    OPS,
    BatchInfo,
    FieldValue,
    ManifestRecord,
    ParsedManifest,
    Rejection,
    file_sha256,
    id_display_problem,
    is_valid_batch_id,
    parse_manifest,
    parse_timestamp,
)

__all__ = [
    "BATCH_ID_RE",
    "MANIFEST_NAME",
    "MODALITIES",
    "OPS",
    "BatchInfo",
    "ManifestRecord",
    "MediaCheck",
    "ParsedManifest",
    "Rejection",
    "ValidatedBatch",
    "check_record_media",
    "file_sha256",
    "is_valid_batch_id",
    "list_complete_batches",
    "parse_manifest",
    "parse_timestamp",
    "validate_batch",
]
