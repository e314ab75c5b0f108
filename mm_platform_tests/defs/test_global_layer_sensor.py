"""The global-layer sensor (mm_platform/defs/jobs.py) on a real temporary Dagster instance: one global run
once the batch runs settle, never while one is in flight, at most one per batch run."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from mm_platform.defs.jobs import global_layer_request, global_layer_sensor, recluster_job, refresh_job

S = dg.DagsterRunStatus


@pytest.fixture()
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def batch_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, batch: str = "b1", **tags: str):
    return create_run_for_test(instance, job_name="batch_ingest_job", status=status,
                               tags={"dagster/partition": batch, **tags})


def test_nothing_before_the_first_batch(instance):
    assert isinstance(global_layer_request(instance), dg.SkipReason)


def test_waits_while_any_batch_run_is_in_flight_then_asks_once(instance):
    batch_run(instance, S.SUCCESS, "b1")
    running = batch_run(instance, S.STARTED, "b2")
    skip = global_layer_request(instance)
    assert isinstance(skip, dg.SkipReason) and "in flight" in skip.skip_message
    instance.report_run_failed(running)  # the last batch failed: b1's success still gets its global run
    request = global_layer_request(instance)
    assert isinstance(request, dg.RunRequest)
    # first data: the full re-cluster (alignment, clusters, classifiers, then the refresh)
    assert request.job_name == recluster_job.name
    assert request.tags["mm/after_batch"] == "b1"
    # the same settled state asks with the same run key: the daemon never launches it twice
    assert global_layer_request(instance).run_key == request.run_key


def test_refresh_after_clusters_exist_and_never_beside_a_global_run(instance):
    instance.report_runless_asset_event(dg.AssetMaterialization("recluster_assignments"))
    first = batch_run(instance, S.SUCCESS, "b1")
    request = global_layer_request(instance)
    assert request.job_name == refresh_job.name and first.run_id in request.run_key
    create_run_for_test(instance, job_name=refresh_job.name, status=S.STARTED)
    assert "in flight" in global_layer_request(instance).skip_message
    second = batch_run(instance, S.SUCCESS, "b2")
    assert "in flight" in global_layer_request(instance).skip_message  # refresh still running
    for run in instance.get_runs(dg.RunsFilter(job_name=refresh_job.name)):
        instance.report_run_failed(run)
    assert second.run_id in global_layer_request(instance).run_key  # one more run, for the newer batch


def test_cli_batches_are_left_to_the_cli(instance):
    batch_run(instance, S.SUCCESS, "b1", **{"mm/source": "cli"})
    skip = global_layer_request(instance)
    assert isinstance(skip, dg.SkipReason) and "mm-platform ingest" in skip.skip_message


def test_sensor_evaluates_through_dagster(instance):
    batch_run(instance, S.SUCCESS, "b1")
    result = global_layer_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.RunRequest) and result.job_name == recluster_job.name
