"""Keep payload keys of Qdrant points (``cluster_id``) equal to the lake, sending only what differs.

Qdrant itself is the ledger: one scroll reads the asked keys of every point (``record_id`` plus the keys to
sync, never vectors nor the rest of the payload), and only points whose values differ from the wanted ones
(a record that changed cluster, a point written before its record was clustered, a point whose earlier
update was lost in a crash) get a ``set_payload``. A refresh after one batch therefore writes the new
batch's points and the records a re-cluster moved, not every point. Because the comparison is against what
Qdrant holds, not against a separate record of what was sent, a lost or partial update is simply re-sent by
the next run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mm_platform.lib.storage.qdrant import QdrantStore


@dataclass(frozen=True)
class PayloadSync:
    sent: int  # points whose payload was set (changed or missing before)
    unchanged: int  # points already holding the wanted values
    not_in_qdrant: int  # wanted records without a point (not indexed yet, or deleted)
    points_scanned: int  # points read from Qdrant


def stored_payloads(store: QdrantStore, keys: list[str]) -> dict[str, dict[str, Any]]:
    """record_id -> {key: stored value or None} for every point of the collection (one scroll)."""
    out: dict[str, dict[str, Any]] = {}
    for rec in store.scroll_all(payload_keys=["record_id", *keys]):
        payload = dict(rec.payload or {})
        rid = payload.get("record_id")
        if rid is not None:
            out[str(rid)] = {k: payload.get(k) for k in keys}
    return out


def payload_changes(wanted: Mapping[str, Mapping[str, Any]],
                    stored: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The wanted payloads of records that have a point whose stored values differ (or are missing)."""
    changed: dict[str, Mapping[str, Any]] = {}
    for rid, payload in wanted.items():
        have = stored.get(rid)
        if have is not None and any(have.get(k) != v for k, v in payload.items()):
            changed[rid] = payload
    return changed


def sync_payloads(store: QdrantStore, wanted: Mapping[str, Mapping[str, Any]]) -> PayloadSync:
    """Set the wanted payload keys on the points that do not hold them yet; see the module doc."""
    if not store.exists():
        return PayloadSync(0, 0, len(wanted), 0)
    keys = sorted({k for payload in wanted.values() for k in payload})
    stored = stored_payloads(store, keys)
    changed = payload_changes(wanted, stored)
    sent = store.set_payloads(changed) if changed else 0
    present = sum(1 for rid in wanted if rid in stored)
    return PayloadSync(sent=sent, unchanged=present - len(changed), not_in_qdrant=len(wanted) - present,
                       points_scanned=len(stored))
