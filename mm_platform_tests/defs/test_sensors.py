"""Tests for the landing sensor (mm_platform/defs/raw/sensors.py), driven through Dagster's own sensor
machinery against a real (temporary) Dagster instance and a real landing directory."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mm_platform.defs.raw.sensors import (
    BATCH_JOB_NAME,
    DEFAULT_MAX_BATCHES_PER_TICK,
    LandingCursor,
    build_landing_sensor,
    unlaunched_batches,
    run_key,
)
from mm_platform.defs.partitions import batches_partitions
from mm_platform.defs.resources import LandingResource
from mm_platform.lib.landing.manifest import MANIFEST_NAME, list_complete_batches

BASE_MTIME = 1_700_000_000.0

# -- helpers ---------------------------------------------------------------------------------------------


def write_batch(landing: Path, batch_id: str, lines: list[dict] | None = None, mtime: float | None = None,
                media: bool = True) -> Path:
    """A landing batch: media first, the manifest last (what producers do)."""
    d = landing / batch_id
    d.mkdir(parents=True, exist_ok=True)
    if media:
        (d / "img.png").write_bytes(b"\x89PNG not really")
    lines = lines if lines is not None else [
        {"record_id": f"{batch_id}-r1", "text": "hello"},
        {"record_id": f"{batch_id}-r2", "text": "world"},
    ]
    manifest = d / MANIFEST_NAME
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    if mtime is not None:
        os.utime(manifest, (mtime, mtime))
    return manifest


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, landing: Path,
         cursor: str | None = None) -> dg.SensorResult:
    ctx = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"landing": LandingResource(landing_dir=str(landing))}
    )
    result = sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    return result


def apply_partition_requests(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with a tick's dynamic partition requests."""
    for req in result.dynamic_partitions_requests or []:
        assert isinstance(req, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def added_keys(result: dg.SensorResult) -> list[str]:
    keys: list[str] = []
    for req in result.dynamic_partitions_requests or []:
        assert isinstance(req, dg.AddDynamicPartitionsRequest)
        assert req.partitions_def_name == "batches"
        keys.extend(req.partition_keys)
    return keys


def is_skip(result: dg.SensorResult) -> bool:
    return not result.run_requests and result.skip_reason is not None


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    d = tmp_path / "landing"
    d.mkdir()
    return d


# -- the cursor ------------------------------------------------------------------------------------------


def test_cursor_round_trip() -> None:
    c = LandingCursor(newest_mtime=1234.5, seen={"b2": "bb" * 32, "b1": "aa" * 32}, revisions={"b1": 2, "b2": 1})
    raw = c.dumps()
    back = LandingCursor.parse(raw)
    assert back == c
    assert back.dumps() == raw
    assert json.loads(raw) == {"newest_mtime": 1234.5, "seen": {"b1": "aa" * 32, "b2": "bb" * 32},
                               "revisions": {"b1": 2, "b2": 1}}
    assert raw.index('"b1"') < raw.index('"b2"')  # sorted keys: stable bytes for equal state


def test_cursor_parse_of_nothing_is_empty() -> None:
    assert LandingCursor.parse(None) == LandingCursor()
    assert LandingCursor.parse("") == LandingCursor()
    empty = LandingCursor.parse(None)
    assert empty.newest_mtime == 0.0 and empty.seen == {}
    assert LandingCursor.parse('{"seen": {"x": "y"}}') == LandingCursor(0.0, {"x": "y"})
    # defaults are not shared between instances
    a, b = LandingCursor.parse(None), LandingCursor.parse(None)
    a.seen["k"] = "v"
    assert b.seen == {}


def test_sensor_definition() -> None:
    sensor = build_landing_sensor()
    assert sensor.name == "landing_sensor"
    assert sensor.job_name == BATCH_JOB_NAME == "batch_ingest_job"
    assert sensor.minimum_interval_seconds == 15
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "landing" in sensor.required_resource_keys
    assert DEFAULT_MAX_BATCHES_PER_TICK == 10


# -- ticks -----------------------------------------------------------------------------------------------


def test_empty_landing_dir_skips(instance: dg.DagsterInstance, landing: Path) -> None:
    result = tick(build_landing_sensor(), instance, landing)
    assert is_skip(result)
    assert not result.dynamic_partitions_requests
    assert result.cursor is None  # the cursor is left as it was


def test_missing_landing_dir_skips(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    assert is_skip(tick(build_landing_sensor(), instance, tmp_path / "does-not-exist"))


def test_new_complete_batch_requests_one_run(instance: dg.DagsterInstance, landing: Path) -> None:
    manifest = write_batch(landing, "batch-001", mtime=BASE_MTIME)
    digest = sha(manifest)
    result = tick(build_landing_sensor(), instance, landing)
    assert result.skip_reason is None
    (req,) = result.run_requests
    assert req.partition_key == "batch-001"
    assert req.run_key == f"batch-001:{digest}:1"
    assert req.tags["mm/batch_id"] == "batch-001"
    assert req.tags["mm/manifest_sha256"] == digest
    assert added_keys(result) == ["batch-001"]
    assert result.dynamic_partitions_requests[0].partitions_def_name == batches_partitions.name
    cursor = LandingCursor.parse(result.cursor)
    assert cursor.seen == {"batch-001": digest}
    assert cursor.newest_mtime == pytest.approx(BASE_MTIME)


def test_same_batch_with_returned_cursor_skips(instance: dg.DagsterInstance, landing: Path) -> None:
    sensor = build_landing_sensor()
    write_batch(landing, "b1")
    first = tick(sensor, instance, landing)
    assert len(first.run_requests) == 1
    apply_partition_requests(instance, first)
    again = tick(sensor, instance, landing, cursor=first.cursor)
    assert is_skip(again)
    assert not again.dynamic_partitions_requests
    # a touched but unchanged manifest is not new either: the cursor is content-based, not wall-clock
    os.utime(landing / "b1" / MANIFEST_NAME, (BASE_MTIME + 999, BASE_MTIME + 999))
    assert is_skip(tick(sensor, instance, landing, cursor=first.cursor))


def test_rewritten_manifest_requests_a_new_run_without_re_adding_the_partition(
    instance: dg.DagsterInstance, landing: Path
) -> None:
    sensor = build_landing_sensor()
    sha1 = sha(write_batch(landing, "b1"))
    first = tick(sensor, instance, landing)
    instance.add_dynamic_partitions("batches", ["b1"])  # the earlier tick was applied
    old_key = first.run_requests[0].run_key

    m2 = write_batch(landing, "b1", lines=[{"record_id": "r1", "text": "hello again"}])
    assert sha(m2) != sha1
    second = tick(sensor, instance, landing, cursor=first.cursor)
    (req,) = second.run_requests
    assert req.partition_key == "b1"
    assert req.run_key == f"b1:{sha(m2)}:2" != old_key
    assert added_keys(second) == []  # no duplicate partition add
    assert LandingCursor.parse(second.cursor).seen == {"b1": sha(m2)}
    assert is_skip(tick(sensor, instance, landing, cursor=second.cursor))


def test_rewritten_manifest_re_adds_a_partition_the_instance_lacks(
    instance: dg.DagsterInstance, landing: Path
) -> None:
    sensor = build_landing_sensor()
    write_batch(landing, "b1")
    first = tick(sensor, instance, landing)  # its partition request was never applied
    write_batch(landing, "b1", lines=[{"record_id": "r9", "text": "changed"}])
    second = tick(sensor, instance, landing, cursor=first.cursor)
    assert added_keys(second) == ["b1"]


def test_partial_batch_is_ignored_until_its_manifest_appears(instance: dg.DagsterInstance, landing: Path) -> None:
    sensor = build_landing_sensor()
    partial = landing / "b-partial"
    partial.mkdir()
    (partial / "img.png").write_bytes(b"png bytes")
    (partial / "audio.wav").write_bytes(b"wav bytes")
    (partial / "records.jsonl.tmp").write_text('{"record_id": "r1", "text": "x"}\n')
    result = tick(sensor, instance, landing)
    assert is_skip(result)
    # a directory named like the manifest is no manifest
    (landing / "b-dir-manifest" / MANIFEST_NAME).mkdir(parents=True)
    assert is_skip(tick(sensor, instance, landing))

    write_batch(landing, "b-partial", media=False)  # the producer finishes: manifest written last
    done = tick(sensor, instance, landing, cursor=result.cursor)
    assert [r.partition_key for r in done.run_requests] == ["b-partial"]
    assert added_keys(done) == ["b-partial"]


def test_invalid_batch_names_and_dot_dirs_are_ignored(instance: dg.DagsterInstance, landing: Path) -> None:
    for name in (".hidden", "...", ".b1", "bad name", "b@d", "x" * 129, "sp\u00e9cial"):
        write_batch(landing, name)
    (landing / MANIFEST_NAME).write_text('{"record_id": "top", "text": "not in a batch"}\n')  # a file
    (landing / "not-a-dir").write_text("x")
    assert is_skip(tick(build_landing_sensor(), instance, landing))
    write_batch(landing, "ok_1.2-X")
    write_batch(landing, "y" * 128)
    result = tick(build_landing_sensor(), instance, landing)
    assert sorted(r.partition_key for r in result.run_requests) == sorted(["ok_1.2-X", "y" * 128])


def test_many_batches_are_requested_oldest_first_at_most_n_per_tick(
    instance: dg.DagsterInstance, landing: Path
) -> None:
    # names in the opposite order of the manifests' mtimes; two batches share an mtime (ties by name)
    mtimes = {"b7": 1, "b6": 2, "b5": 3, "b4": 4, "b3": 5, "b2": 5, "b1": 7}
    for bid, offset in mtimes.items():
        write_batch(landing, bid, mtime=BASE_MTIME + offset)
    expected_order = ["b7", "b6", "b5", "b4", "b2", "b3", "b1"]
    assert [b.batch_id for b in list_complete_batches(landing)] == expected_order

    sensor = build_landing_sensor(max_batches_per_tick=3)
    cursor: str | None = None
    ticks: list[list[str]] = []
    all_run_keys: list[str] = []
    for _ in range(5):
        result = tick(sensor, instance, landing, cursor=cursor)
        if is_skip(result):
            break
        assert len(result.run_requests) <= 3
        ids = [r.partition_key for r in result.run_requests]
        assert added_keys(result) == ids  # every batch is new to the instance
        apply_partition_requests(instance, result)
        ticks.append(ids)
        all_run_keys += [r.run_key for r in result.run_requests]
        assert result.cursor is not None
        cursor = result.cursor
    assert ticks == [["b7", "b6", "b5"], ["b4", "b2", "b3"], ["b1"]]
    assert len(all_run_keys) == len(set(all_run_keys)) == 7
    final = LandingCursor.parse(cursor)
    assert set(final.seen) == set(mtimes)
    assert final.newest_mtime == pytest.approx(BASE_MTIME + 7)
    assert sorted(instance.get_dynamic_partitions("batches")) == sorted(mtimes)

    # a batch landing later, even with an older mtime than the newest handled, is still picked up
    write_batch(landing, "b0", mtime=BASE_MTIME - 100)
    late = tick(sensor, instance, landing, cursor=cursor)
    assert [r.partition_key for r in late.run_requests] == ["b0"]
    assert late.run_requests[0].run_key not in all_run_keys


def test_pending_batches_and_run_key(landing: Path) -> None:
    m = write_batch(landing, "b1", mtime=BASE_MTIME)
    write_batch(landing, "b2", mtime=BASE_MTIME + 1)
    b1, _ = unlaunched_batches(landing, LandingCursor())
    assert run_key(b1) == f"b1:{sha(m)}:1"
    assert run_key(b1, 3) == f"b1:{sha(m)}:3"
    assert [b.batch_id for b in unlaunched_batches(landing, LandingCursor(seen={"b1": sha(m)}))] == ["b2"]
    assert [b.batch_id for b in unlaunched_batches(landing, LandingCursor(seen={"b1": "stale"}))] == ["b1", "b2"]


def test_manifest_rewritten_back_to_earlier_bytes_gets_a_fresh_run_key(
    instance: dg.DagsterInstance, landing: Path
) -> None:
    sensor = build_landing_sensor()
    a = [{"record_id": "r1", "text": "version A"}]
    b = [{"record_id": "r1", "text": "version B"}]
    write_batch(landing, "b1", lines=a)
    t1 = tick(sensor, instance, landing)
    write_batch(landing, "b1", lines=b)
    t2 = tick(sensor, instance, landing, cursor=t1.cursor)
    write_batch(landing, "b1", lines=a)
    t3 = tick(sensor, instance, landing, cursor=t2.cursor)
    assert len(t3.run_requests) == 1  # the sensor does ask for the re-ingest ...
    keys = [t.run_requests[0].run_key for t in (t1, t2, t3)]
    assert len(set(keys)) == 3, f"run_key reused, Dagster would skip the run: {keys}"  # ... under a used key


# -- through Dagster's tick evaluation, against the real code location --------------------------------------


@pytest.fixture(scope="module")
def repo_def() -> dg.RepositoryDefinition:
    from mm_platform.definitions import defs

    return defs.get_repository_def()


def evaluate(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, repo: dg.RepositoryDefinition,
             landing: Path, cursor: str | None = None):
    """Evaluate a tick the way the code server does (instance by ref, repository attached), so run requests
    are resolved and their partition keys validated against ``batch_ingest_job``."""
    with dg.SensorEvaluationContext(
        instance_ref=instance.get_ref(), last_tick_completion_time=None, last_run_key=None, cursor=cursor,
        log_key=None, repository_name=repo.name, repository_def=repo, sensor_name=sensor.name,
        resources={"landing": LandingResource(landing_dir=str(landing))},
    ) as ctx:
        return sensor.evaluate_tick(ctx)


def test_code_location_has_the_landing_sensor_on_the_batch_job(repo_def: dg.RepositoryDefinition) -> None:
    sensor = repo_def.get_sensor_def("landing_sensor")
    assert sensor.job_name == BATCH_JOB_NAME
    job = repo_def.get_job(BATCH_JOB_NAME)
    assert job.partitions_def == batches_partitions


def test_evaluate_tick_resolves_partitioned_run_requests(
    instance: dg.DagsterInstance, landing: Path, repo_def: dg.RepositoryDefinition
) -> None:
    sensor = build_landing_sensor(max_batches_per_tick=2)
    for i, bid in enumerate(["b1", "b2", "b3"]):
        write_batch(landing, bid, mtime=BASE_MTIME + i)

    data = evaluate(sensor, instance, repo_def, landing)
    assert [r.partition_key for r in data.run_requests] == ["b1", "b2"]
    for r in data.run_requests:
        assert r.tags["dagster/partition"] == r.partition_key
        assert r.tags["dagster/sensor_name"] == "landing_sensor"
        assert r.run_key == f"{r.partition_key}:{r.tags['mm/manifest_sha256']}:1"
    assert [(q.partitions_def_name, list(q.partition_keys)) for q in data.dynamic_partitions_requests] == [
        ("batches", ["b1", "b2"])
    ]
    for q in data.dynamic_partitions_requests:
        instance.add_dynamic_partitions(q.partitions_def_name, list(q.partition_keys))

    data2 = evaluate(sensor, instance, repo_def, landing, cursor=data.cursor)
    assert [r.partition_key for r in data2.run_requests] == ["b3"]
    instance.add_dynamic_partitions("batches", ["b3"])

    # rewritten manifest of a known partition: validated against the instance, no add request
    write_batch(landing, "b2", lines=[{"record_id": "z", "text": "new"}], mtime=BASE_MTIME + 10)
    data3 = evaluate(sensor, instance, repo_def, landing, cursor=data2.cursor)
    assert [r.partition_key for r in data3.run_requests] == ["b2"]
    assert not data3.dynamic_partitions_requests
    assert data3.run_requests[0].run_key not in {r.run_key for r in [*data.run_requests, *data2.run_requests]}

    data4 = evaluate(sensor, instance, repo_def, landing, cursor=data3.cursor)
    assert not data4.run_requests and data4.skip_message


def test_sensor_waits_while_a_cli_ingest_holds_the_lock(instance: dg.DagsterInstance, landing: Path,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mm_platform.lib.locks import IngestLock

    monkeypatch.setenv("MM_DATA_DIR", str(tmp_path))
    write_batch(landing, "b1")
    sensor = build_landing_sensor()
    lock = IngestLock(tmp_path)
    lock.acquire()
    try:
        result = tick(sensor, instance, landing)
        assert is_skip(result) and f"pid {os.getpid()}" in result.skip_reason.skip_message
        assert result.cursor is None  # nothing marked seen: the batches are launched once the lock is free
    finally:
        lock.release()
    result = tick(sensor, instance, landing)
    assert [r.partition_key for r in result.run_requests] == ["b1"]
