"""SQL models (``dbt_like_sql/``) as assets: one asset per ``.sql`` file, dependencies parsed from the SQL
(a warehouse view such as ``current_clusters`` or ``aligned_records_history`` maps to the assets it reads).

As dagster-dbt does for dbt projects, all models are one subsettable multi-asset: one asset per model in
the graph and the UI, one step per run (models run in dependency order in a single in-memory DuckDB that
sees the lake's views), each written as a Delta table ``<lake>/<model>`` in one commit and getting a view of its
own in the warehouse file.
"""

from pathlib import Path

import dagster as dg
import duckdb
import polars as pl


from mm_platform.defs.automation import GLOBAL_AUTOMATION
from mm_platform.defs.metadata import preview
from mm_platform.defs.resources import WarehouseResource
from mm_platform.lib.storage.lake import VIEW_SOURCES, register_table_view
from mm_platform.lib.settings import setting
from mm_platform.lib.storage.sql_models import SqlModel, discover_models, run_models, topo_order

#: The SQL project: ``$MM_SQL_DIR``, else ``dbt_like_sql/`` beside the package.
SQL_DIR = Path(setting("MM_SQL_DIR") or Path(__file__).resolve().parents[3] / "dbt_like_sql")


def model_deps(model: SqlModel) -> list[dg.AssetKey]:
    return sorted({dg.AssetKey(table)
                   for dep in model.deps for table in VIEW_SOURCES.get(dep, (dep,))})


def model_spec(model: SqlModel) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=model.name,
        deps=model_deps(model),
        group_name="sql_models",
        kinds={"duckdb", "sql"},
        tags={"layer": model.layer},
        description=model.description or f"SQL model {model.name}",
        metadata={"sql_path": str(model.path), "layer": model.layer,
                  "sql": dg.MetadataValue.md(f"```sql\n{model.sql.strip()}\n```")},
        automation_condition=GLOBAL_AUTOMATION,
    )


def build_sql_models_asset(models: dict[str, SqlModel]) -> dg.AssetsDefinition:
    order = topo_order(models)

    @dg.multi_asset(
        name="dbt_like_sql_models",
        specs=[model_spec(models[name]) for name in order],
        can_subset=True,
        description="The SQL models of dbt_like_sql/, run in dependency order.",
    )
    def _sql_models(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        lake = warehouse.lake
        selected = {k.to_user_string() for k in context.selected_asset_keys}
        with warehouse.compute_connection(needs={dep for m in models.values() for dep in m.deps}) as con:

            def write(con: duckdb.DuckDBPyConnection, name: str, df: pl.DataFrame) -> None:
                lake.write_global(name, df)  # one Delta commit: readers see the previous result or this one, whole
                register_table_view(con, lake, name)

            for name, df in run_models(con, models, write, select=selected,
                                       materialized=lambda dep: dep in lake.model_tables()):
                yield dg.MaterializeResult(asset_key=name, metadata={"dagster/row_count": df.height,
                                                                     "preview": preview(df.head(5))})
        warehouse.refresh_views(context.log)

    return _sql_models


def build_sql_model_assets(root: Path = SQL_DIR) -> list[dg.AssetsDefinition]:
    if not root.is_dir():
        return []
    models = discover_models(root)
    return [build_sql_models_asset(models)] if models else []



