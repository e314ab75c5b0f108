"""Checks on the global cluster tables."""


import dagster as dg

from mm_platform.defs.clusters.assets import cluster_summary, clusters
from mm_platform.defs.resources import WarehouseResource


@dg.asset_check(asset=clusters, description="every fused vector has exactly one cluster assignment")
def clusters_cover_fused_vectors(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    lake = warehouse.lake
    fused = set(lake.read_table("fused_vectors")["record_id"].to_list())
    assigned = lake.read_table("clusters")["record_id"].to_list()
    missing = fused - set(assigned)
    dupes = len(assigned) - len(set(assigned))
    return dg.AssetCheckResult(
        passed=not missing and not dupes,
        metadata={"fused": len(fused), "assigned": len(assigned), "missing": sorted(missing)[:20], "duplicates": dupes},
    )


@dg.asset_check(asset=cluster_summary, description="summary sizes add up to the clustered records")
def summary_sizes_match(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    lake = warehouse.lake
    total = int(lake.read_table("cluster_summary")["size"].sum() or 0)
    n = lake.read_table("clusters").height
    return dg.AssetCheckResult(passed=total == n, metadata={"summary_total": total, "clustered": n})
