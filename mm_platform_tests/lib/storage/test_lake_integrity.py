"""The lake is verified, not trusted (size/mtime/SHA-256 records of each Delta data file, quarantine of
damaged files), and a full disk or read-only data dir fails cleanly: a clear ``LakeWriteError``, nothing
committed, old data intact.

With Delta Lake some old checks are moot and are asserted as such: a stray file in a table directory is no
part of any version; the platform's own writes never rename over a file (each commit adds new files)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import duckdb
import polars as pl
import pytest

from mm_platform.lib.storage import lake as lake_mod
from mm_platform.lib.storage.lake import Lake, LakeWriteError, register_views
from mm_platform.lib.landing.ledger import GLOBAL_STAMP, repair_lake
from mm_platform.lib.storage.sqlquote import sql_literal


def frame(ids: list[str], batch_id: str = "b1") -> pl.DataFrame:
    return pl.DataFrame({"record_id": ids, "batch_id": [batch_id] * len(ids)}).with_columns(
        pl.lit(None).alias(c) for c in lake_mod.ALL_TABLES["aligned_records"] if c not in ("record_id", "batch_id"))


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture()
def lake(tmp_path: Path) -> Lake:
    lk = Lake(tmp_path / "lake")
    lk.write_partition("aligned_records", "b1", frame(["a", "b", "c"]))
    lk.write_partition("aligned_records", "b2", frame(["d"], "b2"))
    lk.write_global("cluster_summary", pl.DataFrame({c: [None] for c in lake_mod.ALL_TABLES["cluster_summary"]}))
    return lk


def test_untouched_lake_verifies_clean_and_a_rewrite_is_recorded(lake: Lake):
    assert lake.verify() == []
    lake.write_partition("aligned_records", "b1", frame(["a"]))
    assert lake.verify() == []


def test_copy_over_a_partition_is_detected_quarantined_and_reported(lake: Lake, caplog):
    part = lake.partition_path("aligned_records", "b1")
    # the attack of the issue: COPY (an empty result) TO the partition file
    duckdb.sql(f"COPY (SELECT * FROM read_parquet({sql_literal(part)}) LIMIT 0) TO {sql_literal(part)} (FORMAT PARQUET)")
    damage = lake.verify(settle_s=0)
    assert [(d.table, d.batch_id, d.path) for d in damage] == [("aligned_records", "b1", part)]
    assert "changed since it was written" in damage[0].problem
    with caplog.at_level(logging.WARNING, logger="mm_platform.lake"):
        assert repair_lake(lake, {"b1", "b2"}) == {"b1"}
    assert "will be re-ingested" in caplog.text and str(part) in caplog.text
    assert not part.exists()
    kept = list((lake.root / lake_mod.QUARANTINE_DIR / part.parent.relative_to(lake.root)).iterdir())
    assert len(kept) == 1  # the damaged bytes are kept for inspection
    # out of the current version at once (one commit), and still reported missing until rewritten
    assert lake.partitions("aligned_records") == ["b2"]
    assert [d.problem for d in lake.verify(settle_s=0)] == ["missing"]
    lake.write_partition("aligned_records", "b1", frame(["a", "b", "c"]))
    assert lake.verify() == []


def test_truncation_same_size_rewrite_and_deletion(lake: Lake):
    p1, p2 = lake.partition_path("aligned_records", "b1"), lake.partition_path("aligned_records", "b2")
    data = p1.read_bytes()
    p1.write_bytes(data[: len(data) // 2])  # truncated
    assert [d.batch_id for d in lake.verify(settle_s=0)] == ["b1"]
    p1.write_bytes(data)  # the same bytes back (new mtime): accepted after hashing, record refreshed
    assert lake.verify(settle_s=0) == []
    p1.write_bytes(bytes(len(data)))  # same size, other bytes: caught by the hash
    assert [d.batch_id for d in lake.verify(settle_s=0)] == ["b1"]
    lake.write_partition("aligned_records", "b1", frame(["a"]))
    p2.unlink()
    assert [(d.batch_id, d.problem) for d in lake.verify(settle_s=0)] == [("b2", "missing")]
    lake.delete_partition("aligned_records", "b2")  # the platform's own delete forgets the record
    assert lake.verify(settle_s=0) == []


def test_damaged_global_table_marks_the_global_layer_stale(lake: Lake, caplog):
    (lake.root / GLOBAL_STAMP).write_text("x")
    lake.global_path("cluster_summary").write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING, logger="mm_platform.lake"):
        assert repair_lake(lake) == set()
    assert "global layer marked stale" in caplog.text
    assert not (lake.root / GLOBAL_STAMP).exists()
    assert lake.read_table("cluster_summary").height == 0  # an empty, valid table until the refresh
    assert lake.read_table("cluster_summary").columns[:2] == ["cluster_id", "name"]
    assert lake.verify(settle_s=0) == []


def test_views_skip_quarantined_files(lake: Lake):
    part = lake.partition_path("aligned_records", "b1")
    part.write_bytes(b"garbage")
    repair_lake(lake, {"b1", "b2"})
    con = duckdb.connect()
    register_views(con, lake)
    assert con.execute("SELECT record_id FROM aligned_records_history").fetchall() == [("d",)]


@pytest.mark.parametrize(("err", "words"), [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system"),
                                            (errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded")])
def test_full_or_read_only_disk_fails_cleanly(lake: Lake, monkeypatch, err: int, words: str):
    part = lake.partition_path("aligned_records", "b1")
    before = part.read_bytes()

    def half_write(uri, data, opts, predicate, partition_by, schema_mode) -> None:
        stray = part.parent / "part-00000-half.parquet"
        stray.write_bytes(b"PAR1 half")  # a data file got some bytes, then the disk filled up: no commit
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(lake_mod, "_commit_delta", half_write)
    with pytest.raises(LakeWriteError) as exc:
        lake.write_partition("aligned_records", "b1", frame(["z"]))
    assert str(exc.value).startswith(f"{words}") and str(part.parent) in str(exc.value)
    assert exc.value.errno == err and isinstance(exc.value, OSError)
    assert part.read_bytes() == before and lake.partition_path("aligned_records", "b1") == part
    assert lake.verify(settle_s=0) == []
    monkeypatch.undo()
    lake.write_partition("aligned_records", "b1", frame(["z"]))  # space is back: the write completes
    assert lake.read_partition("aligned_records", "b1")["record_id"].to_list() == ["z"]


def test_deltalake_errors_naming_a_full_disk_are_lake_write_errors(lake: Lake, monkeypatch):
    """deltalake reports I/O failures as its own exceptions whose text carries the OS message."""
    def rust_error(*args) -> None:
        raise RuntimeError("Generic LocalFileSystem error: No space left on device (os error 28)")

    monkeypatch.setattr(lake_mod, "_commit_delta", rust_error)
    with pytest.raises(LakeWriteError, match="disk full writing") as exc:
        lake.write_partition("aligned_records", "b3", frame(["q"], "b3"))
    assert exc.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not lake.has_partition("aligned_records", "b3")


def test_a_failing_file_record_after_the_commit_is_reported_and_then_accepted(lake: Lake, monkeypatch):
    """The commit is the write; the record comes after it. If the record cannot be written the run fails
    (LakeWriteError), and the next verify records the committed file on sight, as the log sized it."""
    real_replace = os.replace

    def fail_json(path, *a, **k):
        if ".json." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(path, *a, **k)

    monkeypatch.setattr(lake_mod.os, "replace", fail_json)
    with pytest.raises(LakeWriteError, match="disk full writing .*batch_id=b3/part-.*json"):
        lake.write_partition("aligned_records", "b3", frame(["q"], "b3"))
    monkeypatch.undo()
    assert tmp_files(lake.root) == [] and lake.has_partition("aligned_records", "b3")
    assert lake.verify(settle_s=0) == []


def test_other_os_errors_are_not_disguised(lake: Lake, monkeypatch):
    def boom(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(lake_mod, "_commit_delta", boom)
    with pytest.raises(OSError) as exc:
        lake.write_partition("aligned_records", "b1", frame(["z"]))
    assert not isinstance(exc.value, LakeWriteError) and exc.value.errno == errno.EIO
