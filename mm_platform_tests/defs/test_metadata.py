"""User text (record ids, labels, free text) is escaped before it enters markdown metadata (issue 9)."""

import json

import dagster as dg
import polars as pl

from mm_platform.defs.ingest import assets as ingest_assets
from mm_platform.defs.metadata import md_escape, preview
from mm_platform_tests.conftest import make_resources

IMG = "<img src=x onerror=alert(1)>"
LINK = "[x](javascript:alert(1))"


def test_md_escape_neutralises_html_links_and_markdown():
    assert md_escape(IMG) == "&lt;img src=x onerror=alert\\(1\\)&gt;"
    out = md_escape(LINK)
    assert "](" not in out and "javascript:" not in out
    assert md_escape("JavaScript :alert(1)").count(":") == 0
    assert md_escape("a|b\nc*d_e`f&g") == "a\\|b c\\*d\\_e\\`f&amp;g"
    assert md_escape(None) == "" and md_escape("plain text 42") == "plain text 42"


def test_preview_escapes_every_cell_and_header():
    df = pl.DataFrame({"record_id": [IMG, LINK], "label": [LINK, IMG], "n": [1.23456789, None]})
    md = preview(df).value
    assert "<img" not in md and "](javascript:" not in md and "javascript:" not in md
    assert "1.235" in md and md.count("\n") == 3  # header, rule, two rows: newlines never leak from cells


def test_raw_records_metadata_has_no_raw_html_or_script_links(paths, instance):
    batch = paths.landing_dir / "b1"
    batch.mkdir(parents=True)
    rows = [{"record_id": IMG, "timestamp": "2024-03-01T08:00:00Z", "text": LINK, "label": LINK},
            {"record_id": LINK, "timestamp": "2024-03-01T08:01:00Z", "text": IMG, "label": IMG}]
    (batch / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    instance.add_dynamic_partitions("batches", ["b1"])
    result = dg.materialize([ingest_assets.raw_records], partition_key="b1", instance=instance,
                            resources=make_resources(paths))
    assert result.success
    md = result.asset_materializations_for_node("raw_records")[0].metadata["preview"].value
    assert "&lt;img" in md  # the record is shown, escaped
    assert "<img" not in md and "](javascript:" not in md
