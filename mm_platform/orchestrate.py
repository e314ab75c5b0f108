"""Running the asset graph from the CLI: the same Definitions, a real Dagster instance, synchronously.

``ingest`` registers every pending complete batch as a partition and executes the batch job for it in
process (new records are placed into the existing clusters at once), then refreshes summaries, Qdrant
payloads and SQL marts when anything changed. A full re-cluster runs when none exists yet, or when asked
(``--recluster``, ``mm-platform recluster``). A batch is pending when its manifest hash differs from the one
in the ``batches`` ledger, or when it was embedded under another model profile than the current one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from mm_platform.lib.lake import Lake
from mm_platform.lib.ledger import (
    global_layer_stale,
    mark_global_failed,
    mark_global_fresh,
    recluster_owed,
    repair_lake,
)
from mm_platform.lib.manifest import BatchInfo, list_complete_batches
from mm_platform.lib.settings import Paths

INSTANCE_TEMPLATE = Path(__file__).parent / "instance" / "dagster.yaml"


def ensure_dagster_home(paths: Paths) -> Path:
    """``$DAGSTER_HOME`` if set, else ``$MM_DATA_DIR/dagster_home``; creates it with our dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance(paths: Paths) -> dg.DagsterInstance:
    ensure_dagster_home(paths)
    return dg.DagsterInstance.get()


def ingested_hashes(lake: Lake) -> dict[str, str]:
    ledger = lake.read_table("batches")
    return dict(ledger.select("batch_id", "manifest_sha256").iter_rows())


def current_profile() -> str:
    """The profile key the environment's encoder settings resolve to (no model is loaded)."""
    from mm_platform.defs.resources import current_profile_key

    with dg.build_resources({"encoders": _encoders_resource()}) as res:
        return current_profile_key(res.encoders.settings())


def _encoders_resource():
    from mm_platform.defs.resources import build_resources

    return build_resources()["encoders"]


def pending_batches(paths: Paths, lake: Lake, profile: str | None = None) -> list[BatchInfo]:
    """Complete batches not ingested with their current manifest (and, given ``profile``, that profile), and
    batches whose lake files are not as written (``repair_lake`` moves those aside first)."""
    complete = list_complete_batches(paths.landing_dir)
    damaged = repair_lake(lake, {b.batch_id for b in complete})
    ledger = lake.read_table("batches")
    done = {b: (h, p) for b, h, p in ledger.select("batch_id", "manifest_sha256", "profile_key").iter_rows()}
    return [
        b for b in complete
        if b.batch_id in damaged or b.batch_id not in done or done[b.batch_id][0] != b.manifest_sha256
        or (profile is not None and done[b.batch_id][1] != profile)
    ]


@dataclass
class BatchOutcome:
    batch_id: str
    success: bool
    seconds: float
    error: str = ""


@dataclass
class IngestReport:
    batches: list[BatchOutcome] = field(default_factory=list)
    global_refreshed: bool = False
    reclustered: bool = False
    global_error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(b.success for b in self.batches) and not self.global_error


def _first_error(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and ("Error occurred while executing" in err.message
                                             or err.message.startswith("Exceeded max_retries")):
                err = err.cause
            return f"{event.step_key}: {err.message.strip()}"
    return "run failed"


def run_config(log_level: str) -> dict:
    return {"loggers": {"console": {"config": {"log_level": log_level.upper()}}}}


def _run_global(job_name: str, instance: dg.DagsterInstance, lake: Lake, log_level: str,
                echo: Callable[[str], None], report: IngestReport) -> None:
    from mm_platform.definitions import defs

    what = "full re-cluster, summaries, Qdrant payloads, SQL marts" if job_name == "recluster_job" else \
        "cluster summaries, Qdrant payloads, SQL marts"
    echo(f"{what}: refreshing …")
    t0 = time.monotonic()
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=run_config(log_level), tags={"mm/source": "cli"},
    )
    report.global_refreshed = result.success
    report.reclustered = result.success and job_name == "recluster_job"
    report.global_error = "" if result.success else _first_error(result)
    if result.success:
        mark_global_fresh(lake, job_name)
    else:
        mark_global_failed(lake, job_name, report.global_error)
    echo("global layer: " + (f"done in {time.monotonic() - t0:.1f}s" if result.success
                              else f"FAILED: {report.global_error}"))


def ingest(
    paths: Paths,
    batch_ids: list[str] | None = None,
    force: bool = False,
    recluster: bool = False,
    log_level: str = "WARNING",
    echo: Callable[[str], None] = print,
) -> IngestReport:
    """Materialize every pending batch (or the named ones) through the batch job, then the global layer."""
    from mm_platform.definitions import defs
    from mm_platform.defs.clusters.assets import load_cluster_model
    from mm_platform.defs.partitions import batches_partitions

    start = time.monotonic()
    instance = get_instance(paths)
    lake = Lake(paths.lake_dir)
    complete = {b.batch_id: b for b in list_complete_batches(paths.landing_dir)}
    pending = {b.batch_id for b in pending_batches(paths, lake, current_profile())}
    if batch_ids:
        unknown = [b for b in batch_ids if b not in complete]
        if unknown:
            raise ValueError(f"no complete batch (with records.jsonl) named {unknown} in {paths.landing_dir}")
        todo = [complete[b] for b in batch_ids if force or b in pending]
    else:
        todo = [b for b in complete.values() if force or b.batch_id in pending]
    report = IngestReport()
    known = set(instance.get_dynamic_partitions(batches_partitions.name))
    new = [b.batch_id for b in todo if b.batch_id not in known]
    if new:
        instance.add_dynamic_partitions(batches_partitions.name, new)
    job = defs.resolve_job_def("batch_ingest_job")
    for i, batch in enumerate(todo, start=1):
        echo(f"[{i}/{len(todo)}] batch {batch.batch_id}: ingesting …")
        t0 = time.monotonic()
        result = job.execute_in_process(
            partition_key=batch.batch_id, instance=instance, raise_on_error=False,
            run_config=run_config(log_level),
            tags={"mm/batch_id": batch.batch_id, "mm/manifest_sha256": batch.manifest_sha256, "mm/source": "cli"},
        )
        outcome = BatchOutcome(batch.batch_id, result.success, time.monotonic() - t0,
                               "" if result.success else _first_error(result))
        report.batches.append(outcome)
        echo(f"[{i}/{len(todo)}] batch {batch.batch_id}: "
             + (f"done in {outcome.seconds:.1f}s" if outcome.success else f"FAILED: {outcome.error}"))
    owed = recluster_owed(lake)
    if lake.partitions("fused_vectors") and (recluster or owed or load_cluster_model(lake) is None):
        if owed and not recluster:
            echo(f"full re-cluster owed ({owed}): running it again")
        _run_global("recluster_job", instance, lake, log_level, echo, report)
    elif any(b.success for b in report.batches) or global_layer_stale(lake):
        _run_global("refresh_job", instance, lake, log_level, echo, report)
    report.seconds = time.monotonic() - start
    return report


def table_counts(lake: Lake) -> dict[str, int]:
    from mm_platform.lib.lake import ALL_TABLES

    return {t: lake.read_table(t).height for t in ALL_TABLES}
