"""SQL models (``dbt_like_sql/``) as assets: one asset per ``.sql`` file, dependencies parsed from the SQL
(a warehouse view such as ``clusters`` or ``aligned_records_history`` maps to the assets it reads).

Each model runs in an in-memory DuckDB that sees the lake's views (and upstream models), writes its result
to ``<lake>/<model>/part.parquet`` atomically, and gets a view of its own in the warehouse file.
"""


import os
from pathlib import Path

import dagster as dg
import polars as pl

from mm_platform.defs.clusters.assets import GLOBAL_AUTOMATION
from mm_platform.defs.metadata import preview
from mm_platform.defs.resources import WarehouseResource
from mm_platform.lib.lake import VIEW_SOURCES
from mm_platform.lib.sql_models import SqlModel, discover_models, run_model

#: The SQL project: ``$MM_SQL_DIR``, else ``dbt_like_sql/`` beside the package.
SQL_DIR = Path(os.environ.get("MM_SQL_DIR") or Path(__file__).resolve().parents[3] / "dbt_like_sql")


#: Lake tables written by an asset of another name.
TABLE_ASSETS = {"recluster_assignments": "clusters", "cluster_metrics": "clusters", "batches": "vector_points"}


def _ensure_upstream_views(con, model: SqlModel, models: dict[str, SqlModel], lake) -> None:
    """Upstream models that were never materialized are defined as plain views, so a model can always run."""
    for dep in sorted(model.deps):
        upstream = models.get(dep)
        if upstream is None or lake.global_path(dep).exists():
            continue
        _ensure_upstream_views(con, upstream, models, lake)
        con.execute(f'CREATE OR REPLACE VIEW "{dep}" AS {upstream.sql.strip().rstrip(";")}')


def build_sql_model_asset(model: SqlModel, models: dict[str, SqlModel]) -> dg.AssetsDefinition:
    """An asset that materializes ``model``; its deps are the tables and models its SQL reads."""

    @dg.asset(
        name=model.name,
        deps=sorted({dg.AssetKey(TABLE_ASSETS.get(table, table))
                     for dep in model.deps for table in VIEW_SOURCES.get(dep, (dep,))}),
        group_name="sql_models",
        kinds={"duckdb", "sql"},
        tags={"layer": model.layer},
        description=model.description or f"SQL model {model.name}",
        metadata={"sql_path": str(model.path), "layer": model.layer,
                  "sql": dg.MetadataValue.md(f"```sql\n{model.sql.strip()}\n```")},
        automation_condition=GLOBAL_AUTOMATION,
    )
    def _sql_model(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        lake = warehouse.lake
        with warehouse.compute_connection() as con:
            _ensure_upstream_views(con, model, models, lake)
            rows = run_model(con, model, lake.global_path(model.name))
        head = pl.read_parquet(lake.global_path(model.name)).head(5)
        warehouse.refresh_views(context.log)
        return dg.MaterializeResult(metadata={"dagster/row_count": rows, "preview": preview(head)})

    return _sql_model


def build_sql_model_assets(root: Path = SQL_DIR) -> list[dg.AssetsDefinition]:
    if not root.is_dir():
        return []
    models = discover_models(root)
    return [build_sql_model_asset(m, models) for m in models.values()]
