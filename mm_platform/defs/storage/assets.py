"""Lake housekeeping: compaction of small files and vacuum of unreferenced ones, as an asset on a weekly
schedule. Safe while readers read: compaction is one commit that changes no row, and vacuum removes only
files that no version younger than the retention (``MM_LAKE_VACUUM_RETENTION_HOURS``) references."""

import dagster as dg

from mm_platform.defs.resources import WarehouseResource
from mm_platform.lib.settings import vacuum_retention_hours

HOUSEKEEPING_CRON = "0 4 * * 0"  # Sundays 04:00


@dg.asset(
    group_name="storage",
    kinds={"deltalake"},
    description="Compact small files of every lake table and vacuum files no recent version references.",
)
def lake_housekeeping(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    retention = vacuum_retention_hours()
    stats = warehouse.lake.housekeeping(retention)
    totals = {k: sum(s[k] for s in stats.values()) for k in ("files_added", "files_removed", "files_vacuumed")}
    context.log.info(f"lake housekeeping (retention {retention:g} h): {totals}")
    busy = {t: s for t, s in stats.items() if any(s.values())}
    return dg.MaterializeResult(metadata={
        "retention_hours": retention, **totals, "tables": len(stats),
        "changed_tables": dg.MetadataValue.json(busy),
    })


lake_housekeeping_job = dg.define_asset_job("lake_housekeeping_job", selection=[lake_housekeeping])

weekly_lake_housekeeping_schedule = dg.ScheduleDefinition(
    name="weekly_lake_housekeeping",
    job=lake_housekeeping_job,
    cron_schedule=HOUSEKEEPING_CRON,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Compaction and vacuum of the Delta lake every Sunday at 04:00.",
)
