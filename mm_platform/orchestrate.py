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

from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.landing.ledger import (
    global_layer_stale,
    mark_global_failed,
    mark_global_fresh,
    pending_batches,
    recluster_owed,
)
from mm_platform.lib.locks import IngestLock
from mm_platform.lib.landing.manifest import list_complete_batches
from mm_platform.lib.settings import Paths
from mm_platform.run_control import (  # noqa: F401  (RunInterrupted, execute_job, reap_dead_runs: public here too)
    RunInterrupted,
    _daemon_batch_runs,
    _terminate_raises,
    check_not_signalled,
    SIGNALLED,
    execute_job,
    reap_dead_runs,
)

INSTANCE_TEMPLATE = Path(__file__).parent / "instance" / "dagster.yaml"
TEMPLATE_MARKER = "# mm_platform instance template v"
# the shipped templates before the version marker, byte for byte: replaced on upgrade like marked old versions
_UNMARKED_TEMPLATES_SHA256 = {"7da4c1405bcd24ce37b8801109597b2c9b448b8af166e19d06be9a6b407ccdc9"}


def _template_version(text: str) -> int | None:
    for line in text.splitlines()[:3]:
        if line.startswith(TEMPLATE_MARKER):
            rest = line[len(TEMPLATE_MARKER):].split()[0]
            return int(rest) if rest.isdigit() else None
    return None


def _is_old_template(text: str, current: int) -> bool:
    import hashlib

    version = _template_version(text)
    if version is not None:
        return version < current
    return hashlib.sha256(text.encode()).hexdigest() in _UNMARKED_TEMPLATES_SHA256


def ensure_dagster_home(paths: Paths) -> Path:
    """``$DAGSTER_HOME`` if set, else ``$MM_DATA_DIR/dagster_home``; creates it with our dagster.yaml.

    An existing dagster.yaml that is an older version of our template is upgraded (the old one is kept as
    dagster.yaml.bak); any other file (the user's own) is left alone."""
    home = Path(os.environ.get("DAGSTER_HOME") or paths.dagster_home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(INSTANCE_TEMPLATE, target)
    else:
        template = INSTANCE_TEMPLATE.read_text()
        existing = target.read_text()
        if existing != template and _is_old_template(existing, _template_version(template) or 0):
            shutil.copyfile(target, home / "dagster.yaml.bak")
            shutil.copyfile(INSTANCE_TEMPLATE, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance(paths: Paths) -> dg.DagsterInstance:
    ensure_dagster_home(paths)
    return dg.DagsterInstance.get()


def current_profile(instance: dg.DagsterInstance | None = None) -> str:
    """The profile key the environment's encoder settings resolve to (no model is loaded). Pass the instance at
    hand: without one, Dagster makes an ephemeral instance to build the resource (60 ms)."""
    from mm_platform.defs.resources import current_profile_key

    with dg.build_resources({"encoders": _encoders_resource()}, instance=instance) as res:
        return current_profile_key(res.encoders.settings())


def _encoders_resource():
    from mm_platform.defs.resources import build_resources

    return build_resources()["encoders"]


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
    what = "full re-cluster, summaries, Qdrant payloads, SQL marts" if job_name == "recluster_job" else \
        "cluster summaries, Qdrant payloads, SQL marts"
    check_not_signalled("the global layer")
    echo(f"{what}: refreshing …")
    t0 = time.monotonic()
    result = execute_job(job_name, instance, echo, run_config=run_config(log_level), tags={"mm/source": "cli"})
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
    """Materialize every pending batch (or the named ones) through the batch job, then the global layer.

    One ingest at a time per data directory: waits for the data dir's ingest lock, then recovers runs of
    crashed ingests (``reap_dead_runs``) and only then computes what is pending. SIGTERM/SIGINT stop it
    with ``RunInterrupted`` (run marked failed, slots freed, lock released)."""
    start = time.monotonic()
    instance = get_instance(paths)
    lock = IngestLock(paths.data_dir)
    lock.acquire(echo=echo)
    SIGNALLED.clear()
    try:
        with _terminate_raises():
            reap_dead_runs(instance, echo)
        return _ingest_locked(paths, instance, batch_ids, force, recluster, log_level, echo, start)
    finally:
        lock.release()


def _ingest_locked(paths: Paths, instance: dg.DagsterInstance, batch_ids: list[str] | None, force: bool,
                   recluster: bool, log_level: str, echo: Callable[[str], None], start: float) -> IngestReport:
    from mm_platform.lib.analysis.recluster import load_cluster_model
    from mm_platform.defs.partitions import batches_partitions

    lake = Lake(paths.lake_dir)
    complete = {b.batch_id: b for b in list_complete_batches(paths.landing_dir)}
    pending = {b.batch_id for b in pending_batches(paths, lake, current_profile(instance))}
    if batch_ids:
        unknown = [b for b in batch_ids if b not in complete]
        if unknown:
            raise ValueError(f"no complete batch (with records.jsonl) named {unknown} in {paths.landing_dir}")
        todo = [complete[b] for b in batch_ids if force or b in pending]
    else:
        todo = [b for b in complete.values() if force or b.batch_id in pending]
    in_flight = _daemon_batch_runs(instance)
    for b in [b for b in todo if b.batch_id in in_flight]:
        echo(f"batch {b.batch_id}: run {in_flight[b.batch_id]} launched by the daemon (dagster dev) is ingesting "
             "it; skipped (run ingest again after it ends)")
    todo = [b for b in todo if b.batch_id not in in_flight]
    report = IngestReport()
    known = set(instance.get_dynamic_partitions(batches_partitions.name))
    new = [b.batch_id for b in todo if b.batch_id not in known]
    if new:
        instance.add_dynamic_partitions(batches_partitions.name, new)
    for i, batch in enumerate(todo, start=1):
        check_not_signalled(f"batch {batch.batch_id}")
        echo(f"[{i}/{len(todo)}] batch {batch.batch_id}: ingesting …")
        t0 = time.monotonic()
        result = execute_job(
            "batch_ingest_job", instance, echo, partition_key=batch.batch_id, run_config=run_config(log_level),
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
