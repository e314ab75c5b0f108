"""Checks on the cluster tables."""

import dagster as dg

from mm_platform.defs.resources import WarehouseResource


@dg.asset_check(asset="recluster_assignments", description="every current fused vector has exactly one current cluster")
def clusters_cover_fused_vectors(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    lake = warehouse.lake
    fused = set(lake.read_current("fused_vectors")["record_id"].to_list())
    assigned = lake.current_clusters()["record_id"].to_list()
    missing = fused - set(assigned)
    extra = set(assigned) - fused
    return dg.AssetCheckResult(
        passed=not missing and not extra,
        description="all batches (current state): every current fused vector has exactly one current cluster",
        metadata={"batch_id": "all (global)", "fused": len(fused), "assigned": len(assigned), "missing": sorted(missing)[:20],
                  "not_current": sorted(extra)[:20]},
    )


@dg.asset_check(asset="cluster_summary", description="summary sizes add up to the clustered records")
def summary_sizes_match(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    lake = warehouse.lake
    total = int(lake.read_table("cluster_summary")["size"].sum() or 0)
    n = lake.current_clusters().height
    return dg.AssetCheckResult(passed=total == n, description="all batches (current state): summary sizes add up to the clustered records",
        metadata={"batch_id": "all (global)", "summary_total": total, "clustered": n})
