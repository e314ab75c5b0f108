"""The ingest ledger, readable without Dagster or torch: what was ingested, under which model settings,
and whether the global layer saw the current fused vectors. Lets `mm-platform ingest` answer "nothing new"
in a fraction of a second of work."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

from mm_platform.lib.landing.manifest import BatchInfo, list_complete_batches
from mm_platform.lib.settings import Paths, setting
from mm_platform.lib.storage.lake import Lake

GLOBAL_STAMP = "_global_refresh.fingerprint"
#: Present while a full re-cluster is owed: the last one failed, or a table only it writes was damaged.
RECLUSTER_OWED = "_recluster.owed"
#: Global tables only a full re-cluster rewrites (the refresh rewrites the other global tables).
RECLUSTER_TABLES = ("recluster_assignments", "cluster_metrics", "modality_assignments", "classifier_metrics",
                    "predictions")

log = logging.getLogger("mm_platform.lake")


def encoder_request_key(env: Mapping[str, str] | None = None) -> str:
    """The model settings as requested in the environment (before `auto` is resolved)."""
    return request_key(*(setting(name, env) for name in ("MM_MODEL_PROFILE", "MM_CLIP_ARCH", "MM_CLIP_PRETRAINED",
                                                           "MM_CLIP_CONFIG", "MM_CLAP_MODEL")))


def request_key(profile: str, clip_arch: str, clip_pretrained: str, clip_config: str, clap_model: str) -> str:
    """One spelling of the requested model settings, for the ledger and the encoders resource alike."""
    return "|".join((profile, clip_arch, clip_pretrained, clip_config, clap_model))


def fused_fingerprint(lake: Lake) -> str:
    """Identifies the clustering input: the fused vectors table's last data-changing Delta version (a
    compaction, which changes no row, does not count)."""
    return hashlib.sha256(f"{lake.uri}|{lake.data_version('fused_vectors')}".encode()).hexdigest()[:16]


def global_layer_stale(lake: Lake) -> bool:
    """True when the last successful global refresh did not see the current fused vectors."""
    if not lake.partitions("fused_vectors"):
        return False
    stamp = lake.root / GLOBAL_STAMP
    return not stamp.exists() or stamp.read_text() != fused_fingerprint(lake)


def mark_global_fresh(lake: Lake, job_name: str = "refresh_job") -> None:
    """A global run succeeded: the stamp records the fused vectors it saw; a full re-cluster pays its debt."""
    (lake.root / GLOBAL_STAMP).write_text(fused_fingerprint(lake))
    if job_name == "recluster_job":
        (lake.root / RECLUSTER_OWED).unlink(missing_ok=True)


def mark_global_failed(lake: Lake, job_name: str, error: str) -> None:
    """A global run failed: the layer is stale, and a failed re-cluster is owed to the next ingest."""
    (lake.root / GLOBAL_STAMP).unlink(missing_ok=True)
    if job_name == "recluster_job":
        owe_recluster(lake, f"the last full re-cluster failed: {error}")


def owe_recluster(lake: Lake, why: str) -> None:
    lake.root.mkdir(parents=True, exist_ok=True)
    (lake.root / RECLUSTER_OWED).write_text(why)


def recluster_owed(lake: Lake) -> str | None:
    """Why the next ingest must run a full re-cluster (a failed one, a damaged re-cluster table), or None."""
    path = lake.root / RECLUSTER_OWED
    return path.read_text() or "a full re-cluster is owed" if path.exists() else None


def repair_lake(lake: Lake, landed: set[str] | None = None) -> set[str]:
    """Check every recorded lake file against what was written; move damaged ones to ``_quarantine/``.

    Returns the batches to re-run (their partitions are rewritten, embeddings from the cached vectors).
    A damaged global table is moved aside too and the global layer marked stale, so the next refresh
    rewrites it. Says what it found on the ``mm_platform.lake`` logger (a warning, shown on stderr).
    """
    rerun: set[str] = set()
    damage = lake.verify()
    for d in damage:
        moved = lake.quarantine(d)
        msg = d.describe() + (f"; moved to {moved}" if moved else "")
        if d.batch_id is None:
            lake.forget(d.table, None)
            (lake.root / GLOBAL_STAMP).unlink(missing_ok=True)
            if d.table in RECLUSTER_TABLES:
                owe_recluster(lake, f"{d.table} was damaged")
            how = "the next ingest re-clusters to rewrite it" if d.table in RECLUSTER_TABLES else \
                "the next refresh rewrites it"
            log.warning("%s; global layer marked stale, %s", msg, how)
        elif landed is not None and d.batch_id not in landed:
            log.warning("%s; batch %s is no longer in the landing dir, so it cannot be rewritten", msg, d.batch_id)
        else:
            rerun.add(d.batch_id)
            log.warning("%s; batch %s will be re-ingested (embeddings from the cached vectors)", msg, d.batch_id)
    if damage:
        lake.ensure_initialized()
    return rerun


def nothing_to_do(paths: Paths, env: Mapping[str, str] | None = None) -> bool:
    """True when every complete batch is ingested with its current manifest under the model settings the
    environment requests now, every lake file is as written (``Lake.verify``: a stat per file), and the global
    layer is fresh. (A change in what `auto` resolves to is picked
    up by the next ingest that has work, or by `ingest --force`.)"""
    lake = Lake(paths.lake_dir)
    done, request = ingested(lake), encoder_request_key(env)
    if any(batch_pending(b, done, request=request) for b in list_complete_batches(paths.landing_dir)):
        return False  # work to do (the ingest verifies the lake itself: no need to here)
    if lake.verify():  # a lake file differs from what was written (or is gone): ingest repairs it
        return False
    return not global_layer_stale(lake) and recluster_owed(lake) is None


def ingested_hashes(lake: Lake) -> dict[str, str]:
    """batch id -> the manifest hash it was ingested with."""
    ledger = lake.read_table("batches")
    return dict(ledger.select("batch_id", "manifest_sha256").iter_rows())


def pending_batches(paths: Paths, lake: Lake, profile: str | None = None, *,
                    request: str | None = None) -> list[BatchInfo]:
    """Complete batches not ingested with their current manifest, and batches whose lake files are not as
    written (``repair_lake`` moves those aside first). Given ``profile`` (a resolved profile key, what
    `mm-platform ingest` compares) or ``request`` (the settings as requested, :func:`encoder_request_key`:
    what `status` compares without resolving `auto`, so without importing torch), also the batches
    ingested under other model settings."""
    complete = list_complete_batches(paths.landing_dir)
    damaged = repair_lake(lake, {b.batch_id for b in complete})
    done = ingested(lake)
    return [b for b in complete
            if b.batch_id in damaged or batch_pending(b, done, profile=profile, request=request)]


#: batch id -> (manifest hash, resolved profile key, requested model settings) it was ingested with
Ingested = Mapping[str, tuple[str, str, str]]


def ingested(lake: Lake) -> dict[str, tuple[str, str, str]]:
    """What the ``batches`` ledger says each batch was ingested with."""
    ledger = lake.read_table("batches")
    return {b: (h, p, r) for b, h, p, r in
            ledger.select("batch_id", "manifest_sha256", "profile_key", "profile_request").iter_rows()}


def batch_pending(batch: BatchInfo, done: Ingested, *, profile: str | None = None,
                  request: str | None = None) -> bool:
    """The one "pending batch" rule: never ingested, ingested with another manifest, or (given ``profile`` /
    ``request``) under other model settings. `ingest`, `status` and :func:`nothing_to_do` all ask it; the
    landing sensor only tracks which manifests it has launched (a run it launched may still fail)."""
    row = done.get(batch.batch_id)
    if row is None:
        return True
    manifest, profile_key, requested = row
    return (manifest != batch.manifest_sha256 or (profile is not None and profile_key != profile)
            or (request is not None and requested != request))


def table_counts(lake: Lake) -> dict[str, int]:
    """Rows per lake table."""
    from mm_platform.lib.storage.lake import ALL_TABLES

    return {t: lake.read_table(t).height for t in ALL_TABLES}
