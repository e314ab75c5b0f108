"""The lake_housekeeping asset: compaction and vacuum of the Delta lake, reported in its metadata."""

from pathlib import Path

import dagster as dg
import polars as pl
from deltalake import write_deltalake

from mm_platform.defs.resources import WarehouseResource
from mm_platform.definitions import defs
from mm_platform.lib.storage.lake import Lake


def test_lake_housekeeping_compacts_and_reports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MM_LAKE_VACUUM_RETENTION_HOURS", "0")  # floored to 1 hour: nothing young is vacuumed
    lake = Lake(tmp_path / "lake")
    lake.write_global("mart_small", pl.DataFrame({"n": [0]}))
    for i in range(1, 4):  # small files appended by another engine
        write_deltalake(lake.table_uri("mart_small"), pl.DataFrame({"n": [i]}).to_arrow(), mode="append")
    res = dg.materialize([defs.get_assets_def("lake_housekeeping")], resources={
        "warehouse": WarehouseResource(lake_dir=str(lake.root), duckdb_path=str(tmp_path / "w.duckdb"))})
    assert res.success
    meta = res.asset_materializations_for_node("lake_housekeeping")[0].metadata
    assert meta["retention_hours"].value == 1.0
    assert meta["files_removed"].value == 4 and meta["files_added"].value == 1
    assert meta["files_vacuumed"].value == 0
    assert "mart_small" in meta["changed_tables"].value
    assert lake.read_table("mart_small")["n"].sum() == 6 and lake.verify(settle_s=0) == []
