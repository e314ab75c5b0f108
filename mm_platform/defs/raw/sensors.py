"""The landing sensor: registers each new or rewritten complete batch as a partition and requests its run."""


import json
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource
from mm_platform.lib.locks import IngestLock
from mm_platform.lib.landing.manifest import BatchInfo, list_complete_batches
from mm_platform.lib.settings import BY_NAME, Paths

BATCH_JOB_NAME = "batch_ingest_job"
DEFAULT_MAX_BATCHES_PER_TICK = int(BY_NAME["MM_SENSOR_MAX_BATCHES"].default)


@dataclass
class LandingCursor:
    """Sensor state: the newest manifest mtime handled and the manifest hash of every batch seen.

    Never wall-clock: a batch is new when its manifest hash differs from the one recorded, so an unchanged
    batch is never requested twice and a rewritten manifest is requested again. ``revisions`` counts the
    manifest versions seen per batch, so a manifest rewritten back to earlier bytes (A → B → A) still gets
    a run key Dagster has not used."""

    newest_mtime: float = 0.0
    seen: dict[str, str] = field(default_factory=dict)
    revisions: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> "LandingCursor":
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(newest_mtime=float(data.get("newest_mtime", 0.0)), seen=dict(data.get("seen", {})),
                   revisions={k: int(v) for k, v in data.get("revisions", {}).items()})

    def dumps(self) -> str:
        return json.dumps({"newest_mtime": self.newest_mtime, "seen": self.seen, "revisions": self.revisions},
                          sort_keys=True)

    def record(self, batch: BatchInfo) -> int:
        """Note a new manifest version of ``batch``; returns its revision number (1 for the first)."""
        self.seen[batch.batch_id] = batch.manifest_sha256
        self.newest_mtime = max(self.newest_mtime, batch.manifest_mtime)
        self.revisions[batch.batch_id] = self.revisions.get(batch.batch_id, 0) + 1
        return self.revisions[batch.batch_id]


def run_key(batch: BatchInfo, revision: int = 1) -> str:
    """batch id + manifest content hash (+ the revision, unique per manifest change)."""
    return f"{batch.batch_id}:{batch.manifest_sha256}:{revision}"


def unlaunched_batches(landing_dir: Path, cursor: LandingCursor) -> list[BatchInfo]:
    """Complete batches whose manifest hash this sensor has not launched a run for, oldest manifest first
    (whether a batch is ingested is the ledger's rule, :func:`mm_platform.lib.landing.ledger.batch_pending`)."""
    return [b for b in list_complete_batches(landing_dir) if cursor.seen.get(b.batch_id) != b.manifest_sha256]


def build_landing_sensor(max_batches_per_tick: int = DEFAULT_MAX_BATCHES_PER_TICK) -> dg.SensorDefinition:
    @dg.sensor(
        name="landing_sensor",
        job_name=BATCH_JOB_NAME,
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watches the landing dir; each new or rewritten complete batch (records.jsonl present) "
        "becomes a partition of `batches` and one run of the batch job (run_key = batch id + manifest hash).",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, landing: LandingResource) -> dg.SensorResult:
        holder = IngestLock(Paths.from_env().data_dir).busy()
        if holder is not None:  # a CLI ingest is processing the landing dir: its batches are not ours to launch
            return dg.SensorResult(skip_reason=dg.SkipReason(
                f"`mm-platform ingest` (pid {holder}) holds the data dir's ingest lock; waiting for it"))
        cursor = LandingCursor.parse(context.cursor)
        todo = unlaunched_batches(landing.path, cursor)[:max_batches_per_tick]
        if not todo:
            return dg.SensorResult(skip_reason=dg.SkipReason("no new or changed complete batch"))
        known = set(context.instance.get_dynamic_partitions(batches_partitions.name))
        new_ids = [b.batch_id for b in todo if b.batch_id not in known]
        revisions = {b.batch_id: cursor.record(b) for b in todo}
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=run_key(b, revisions[b.batch_id]), partition_key=b.batch_id,
                              tags={"mm/batch_id": b.batch_id, "mm/manifest_sha256": b.manifest_sha256})
                for b in todo
            ],
            dynamic_partitions_requests=[batches_partitions.build_add_request(new_ids)] if new_ids else [],
            cursor=cursor.dumps(),
        )

    return landing_sensor
