"""The code location loads, with every layer's assets, checks, jobs, sensors and schedules."""

import dagster as dg

from mm_platform.definitions import defs

BATCH_ASSETS = {"raw_records", "raw_text", "raw_images", "raw_audio", "raw_tabular", "rejected_records",
                "stream_features", "alignment_report", "aligned_records", "text_embeddings", "image_embeddings",
                "audio_embeddings", "tabular_embeddings", "fused_vectors", "cluster_assignments", "vector_points",
                "batches"}
GLOBAL_ASSETS = {"shared_space_model", "shared_embeddings", "recluster_assignments", "cluster_metrics",
                 "modality_assignments", "cluster_summary", "embedding_map",
                 "classifier_metrics", "predictions", "qdrant_cluster_payloads"}
GROUPS = {"raw", "streams", "aligned", "quarantine", "embeddings", "fusion", "shared_space", "clusters", "classifiers",
          "vector_index", "sql_models", "storage"}


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)


def test_assets_groups_and_partitions():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert BATCH_ASSETS | GLOBAL_ASSETS <= keys
    assert {"stg_raw_records", "cluster_profiles", "batch_quality"} <= keys
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == GROUPS
    for name in BATCH_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def is not None and node.partitions_def.name == "batches"
        assert node.description, f"{name} has no docstring"
    for name in GLOBAL_ASSETS:
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def is None and node.description, name
        assert node.automation_condition is not None
    # the models fitted with the full re-cluster share its cron condition
    for name in ("shared_space_model", "classifier_metrics", "predictions"):
        assert "0 3 * * *" in str(graph.get(dg.AssetKey(name)).automation_condition.get_snapshot())
    # the full re-cluster runs on a cron automation condition, and so does what summarises clusters; nothing
    # is eager (eager conditions start runs in the middle of a batch run): the global_layer_sensor follows
    # new batches
    for name in GLOBAL_ASSETS:
        snapshot = str(graph.get(dg.AssetKey(name)).automation_condition.get_snapshot())
        assert "0 3 * * *" in snapshot and "eager" not in snapshot.lower(), name


def test_sql_model_dependencies_are_parsed_into_the_graph():
    graph = defs.resolve_asset_graph()
    clusters_stg = graph.get(dg.AssetKey("stg_clusters"))  # reads the `clusters` view: both cluster writers
    assert {p.to_user_string() for p in clusters_stg.parent_keys} == {
        "recluster_assignments", "cluster_assignments", "raw_records", "aligned_records"}
    profiles = graph.get(dg.AssetKey("cluster_profiles"))
    assert {p.to_user_string() for p in profiles.parent_keys} == {"int_records_with_clusters", "stg_cluster_summary"}
    staging = graph.get(dg.AssetKey("stg_raw_records"))
    assert {p.to_user_string() for p in staging.parent_keys} == {"raw_records"}


def test_checks_jobs_sensors_schedules():
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {"every_line_accounted", "vectors_valid", "clusters_cover_fused_vectors", "summary_sizes_match"} <= checks
    for job in ("batch_ingest_job", "recluster_job", "refresh_job"):
        assert defs.resolve_job_def(job)
    recluster = {k.to_user_string() for k in defs.resolve_job_def("recluster_job").asset_layer.executable_asset_keys}
    assert {"shared_space_model", "recluster_assignments", "classifier_metrics", "predictions", "embedding_map"} <= recluster
    sensors = {s.name for s in defs.sensors}
    assert {"landing_sensor", "global_automation_sensor", "global_layer_sensor"} <= sensors
    assert {s.name for s in defs.schedules} == {"nightly_recluster", "weekly_lake_housekeeping"}
    housekeeping = defs.resolve_job_def("lake_housekeeping_job").asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in housekeeping} == {"lake_housekeeping"}


def test_every_lake_table_is_an_asset():
    """Each lake table has its own asset (or spec of a multi-asset), so the lineage shows who writes it."""
    from mm_platform.lib.storage.lake import ALL_TABLES

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(ALL_TABLES) - keys == set()
    # the re-cluster's tables and the batch ledger are specs of one step each
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey("cluster_metrics")).assets_def.node_def.name == "clusters"
    assert graph.get(dg.AssetKey("batches")).assets_def.node_def.name == "vector_points"


def test_no_derived_view_shares_a_name_with_an_asset():
    """A warehouse view computed from several tables (``current_clusters``, ``record_versions``, ...) never
    takes the name of an asset that writes something else."""
    from mm_platform.lib.storage.lake import DERIVED_VIEWS

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(DERIVED_VIEWS) & keys == set()
    assert "current_clusters" in DERIVED_VIEWS


def test_qdrant_writers_share_a_pool():
    graph = defs.resolve_asset_graph()
    for name in ("vector_points", "qdrant_cluster_payloads"):
        assert graph.get(dg.AssetKey(name)).pools == {"qdrant"}


def test_lineage_groups_read_left_to_right():
    """No group takes inputs from a group downstream of it (the UI then draws the groups in pipeline order):
    the group graph is acyclic, and the quarantine comes after the stages it gathers from."""
    graph = defs.resolve_asset_graph()
    edges: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        for parent in node.parent_keys:
            up = graph.get(parent).group_name
            if up != node.group_name:
                edges.setdefault(node.group_name, set()).add(up)
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(group: str, path: tuple[str, ...]) -> None:
        assert state.get(group) != 1, f"groups depend on each other in a cycle: {' <- '.join((*path, group))}"
        if state.get(group) == 2:
            return
        state[group] = 1
        for up in sorted(edges.get(group, ())):
            visit(up, (*path, group))
        state[group] = 2
        order.append(group)

    for group in sorted(GROUPS):
        visit(group, ())
    assert order.index("raw") < order.index("aligned") < order.index("quarantine")
    assert "quarantine" in edges and {"raw", "aligned"} <= edges["quarantine"]


def test_dg_project_shape_names_the_one_entry_point() -> None:
    """`dg dev` / `dg check defs` (make ui / make check-defs) load the same code location as workspace.yaml."""
    import importlib
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    dg_conf = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["dg"]
    assert dg_conf["directory_type"] == "project"
    target = dg_conf["project"]["code_location_target_module"]
    workspace = yaml.safe_load((root / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert target == workspace["module_name"] == "mm_platform.definitions"
    assert isinstance(importlib.import_module(target).defs, dg.Definitions)
