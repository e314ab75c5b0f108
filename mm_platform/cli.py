"""``mm-platform``: demo, make-demo-data, ingest, recluster, search, serve, sql, status, home."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

from mm_platform.cli_read import (  # noqa: F401  (status_report: the explorer asks here)
    _err,
    _print_hits,
    _resources,
    _table,
    cmd_search,
    cmd_sql,
    cmd_status,
    status_report,
)
from mm_platform.lib.settings import Paths, setting

DEMO_QUERIES = ("waterproof gear for muddy hiking trails", "something to keep my tea warm")


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from mm_platform.demo import make_demo_batch

    out = Path(args.out) if args.out else Paths.from_env().landing_dir / f"demo-{args.seed}"
    batch = make_demo_batch(out, n_records=args.records, seed=args.seed, n_broken=args.broken,
                            id_prefix=args.id_prefix)
    print(f"wrote batch {batch.batch_id} to {batch.batch_dir}: {batch.n_lines} lines "
          f"({len(batch.broken)} deliberately broken, {len(batch.partial)} kept with a broken part)")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from mm_platform.lib.landing.ledger import nothing_to_do

    paths = Paths.from_env()
    if not (args.batch or args.force or args.recluster) and nothing_to_do(paths):
        print("nothing new to ingest")
        return 0
    from mm_platform.orchestrate import RunInterrupted, ingest

    try:
        report = ingest(paths, batch_ids=args.batch or None, force=args.force, recluster=args.recluster,
                        log_level=args.log_level, echo=lambda s: print(s, flush=True))
    except ValueError as exc:
        _err(str(exc))
        return 2
    except RunInterrupted as exc:
        _err(f"ingest stopped: {exc}; the next `mm-platform ingest` resumes from here")
        return 130 if exc.by_signal else 1
    except KeyboardInterrupt:
        _err("ingest stopped (interrupted); the next `mm-platform ingest` resumes from here")
        return 130
    if not report.batches and not report.global_refreshed:
        print("nothing new to ingest")
    else:
        ok = sum(b.success for b in report.batches)
        print(f"ingested {ok}/{len(report.batches)} batches in {report.seconds:.1f}s")
    if not report.ok:
        _err("ingest failed; details in the Dagster run logs (`make ui`, Runs)")
        return 1
    return 0


def cmd_recluster(args: argparse.Namespace) -> int:
    return cmd_ingest(argparse.Namespace(batch=None, force=False, recluster=True, log_level=args.log_level))


def cmd_serve(args: argparse.Namespace) -> int:

    import uvicorn

    from mm_platform.serve.app import check_bind, create_app, open_services
    from mm_platform.serve.discovery import remove_discovery, write_discovery

    token = setting("MM_SERVE_TOKEN") or None
    check_bind(args.host, token)
    paths = Paths.from_env()
    with open_services(paths, warm=True) as services:
        app = create_app(services, token=token)
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{host}:{args.port}"
        print(f"mm-platform explorer on {url}" + (" (token required)" if token else ""), flush=True)
        write_discovery(paths.data_dir, url, token)
        try:
            uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        finally:
            remove_discovery(paths.data_dir)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Every setting in effect and where it came from (or the generated `.env.example` / docs table); exit 2
    when a value does not fit its setting's type."""
    import os

    from mm_platform.lib import settings

    if args.env_example:
        print(settings.env_example(), end="")
        return 0
    if args.table:
        print(settings.config_table(), end="")
        return 0
    rows = [{"variable": s.name, "value": value, "source": source, "group": s.group,
             "problem": s.problem(os.environ.get(s.name, "")) or ""}
            for s, value, source in settings.resolved()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, ["variable", "value", "source", "problem"], width=70))
    bad = [r["problem"] for r in rows if r["problem"]]
    if bad:
        print("invalid settings:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 2
    return 0


def cmd_home(args: argparse.Namespace) -> int:
    from mm_platform.orchestrate import ensure_dagster_home

    print(ensure_dagster_home(Paths.from_env()))
    return 0


def cmd_compute(args: argparse.Namespace) -> int:

    from mm_platform.lib.compute.warm_actors import warm_actor_command

    for line in warm_actor_command(args.action, setting("RAY_ADDRESS"), Paths.from_env().data_dir):
        print(line)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mm_platform.lib.storage.lake import Lake, connect_readonly

    paths = Paths.from_env()
    out = paths.landing_dir / f"demo-{args.seed}"
    if not (out / "records.jsonl").exists():
        cmd_make_demo_data(argparse.Namespace(out=str(out), records=args.records, seed=args.seed,
                                              broken=10, id_prefix=f"demo{args.seed}"))
    else:
        print(f"demo batch {out.name} already in the landing dir")
    code = cmd_ingest(argparse.Namespace(batch=None, force=False, recluster=False, log_level=args.log_level))
    if code:
        return code
    con = connect_readonly(Lake(paths.lake_dir), paths.duckdb_path)
    try:
        def q(sql: str) -> list[dict]:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

        totals = q("SELECT (SELECT count(*) FROM aligned_records) AS aligned_records, "
                   "(SELECT count(DISTINCT (batch_id, line_number)) FROM rejected_records) AS rejected_lines, "
                   "(SELECT count(*) FROM fused_vectors) AS fused_vectors, "
                   "(SELECT count(DISTINCT cluster_id) FROM current_clusters) AS clusters")[0]
        print("\n== What mm_platform found ==")
        print(", ".join(f"{k}: {v}" for k, v in totals.items()))
        print("\nQuarantined (rejected_records):")
        print(_table(q("SELECT reason, modality, count(*) AS n, any_value(detail) AS example "
                       "FROM rejected_records GROUP BY ALL ORDER BY n DESC, reason")))
        print("\nModalities per record (aligned_records):")
        print(_table(q("SELECT sum(has_text::INT) AS text, sum(has_image::INT) AS image, sum(has_audio::INT) AS audio, "
                       "sum(has_tabular::INT) AS tabular, sum((streams_matched > 0)::INT) AS with_stream_reading "
                       "FROM aligned_records")))
        print("\nStream alignment (alignment_report):")
        print(_table(q("SELECT stream, records_with_timestamp, matched, unmatched, coverage, lag_median_s, "
                       "lag_max_s, tolerance_s, strategy FROM alignment_report ORDER BY batch_id, stream")))
        print("\nClusters (cluster_summary, fused text+image+audio+tabular vectors):")
        print(_table(q("SELECT cluster_id, size, name, top_terms, label_counts_json AS labels, "
                       "agreement_json AS modality_agreement FROM cluster_summary ORDER BY cluster_id"), width=60))
        print("\nCluster quality against the demo labels, per modality and fusion strategy (cluster_metrics):")
        print(_table(q("SELECT space, algorithm, k, silhouette, nmi, ari, agreement_nmi AS agrees_with_fused "
                       "FROM cluster_metrics ORDER BY nmi DESC")))
        print("\nClassifiers, 5-fold cross-validated (classifier_metrics):")
        print(_table(q("SELECT strategy, macro_f1, macro_f1_std, accuracy FROM classifier_metrics "
                       "ORDER BY macro_f1 DESC")))
    finally:
        con.close()
    from mm_platform.lib.search import SharedSpace, search

    with _resources() as res:
        encoders = res.encoders.encoders
        shared = SharedSpace.from_lake(res.warehouse.lake)
        with res.qdrant.store(res.warehouse.lake) as store:
            for query in DEMO_QUERIES[:1]:
                native = encoders.shares_space("text", "image")
                mapping = getattr(getattr(shared, "model", None), "mapping", "heads")
                how = "CLIP's shared space" if native else (
                    "the shared space of the alignment heads" if mapping == "heads" else
                    f"the shared space of the {mapping} linear map, which beat the heads on validation recall")
                print(f"\nCross-modal search: --text {query!r} --modality image (profile {encoders.profile}; {how})")
                _print_hits(search(store, encoders, text=query, modality="image", k=5, shared=shared),
                            as_json=False)
    print(f"\nQuery it yourself: mm-platform sql \"SELECT * FROM cluster_summary\"  "
          f"(DuckDB file: {paths.duckdb_path})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-platform", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="write a synthetic demo batch, ingest it, print what was found")
    d.add_argument("--records", type=int, default=240)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--log-level", default="WARNING")
    d.set_defaults(fn=cmd_demo)

    m = sub.add_parser("make-demo-data", help="write a synthetic demo batch folder")
    m.add_argument("--records", type=int, default=240)
    m.add_argument("--out", help="the batch folder to create (default $MM_LANDING_DIR/demo-<seed>)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--broken", type=int, default=10, help="deliberately broken lines (or broken parts)")
    m.add_argument("--id-prefix", default="demo")
    m.set_defaults(fn=cmd_make_demo_data)

    i = sub.add_parser("ingest", help="materialize every pending batch, then clusters and marts (synchronous)")
    i.add_argument("--batch", action="append", help="only this batch (repeatable)")
    i.add_argument("--force", action="store_true", help="re-run batches even if already ingested")
    i.add_argument("--recluster", action="store_true", help="also run a full re-cluster (ids kept by overlap)")
    i.add_argument("--log-level", default="WARNING", help="Dagster console log level (INFO shows every step)")
    i.set_defaults(fn=cmd_ingest)

    r = sub.add_parser("recluster", help="ingest what is pending, then a full re-cluster (cluster ids kept)")
    r.add_argument("--log-level", default="WARNING")
    r.set_defaults(fn=cmd_recluster)

    s = sub.add_parser("search", help="search records by text, image, audio clip or fields")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--image", help="path to an image file")
    g.add_argument("--audio", help="path to an audio file (WAV, FLAC, OGG, MP3)")
    g.add_argument("--fields", help='a JSON object of fields, e.g. \'{"price": 25, "material": "steel"}\'')
    s.add_argument("--modality", choices=["text", "image", "audio", "tabular", "fused", "shared"],
                   help="which vectors to search (default: the query's own modality); another modality than the "
                        "query's goes through the shared space; shared = every record's mean projection")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--json", action="store_true")
    s.add_argument("--no-service", action="store_true",
                   help="search in-process even when `mm-platform serve` runs (it answers text/fields queries)")
    s.set_defaults(fn=cmd_search)

    q = sub.add_parser("sql", help="run a query against the DuckDB warehouse (read-only, files of the lake only)")
    q.add_argument("query")
    q.add_argument("--json", action="store_true")
    q.add_argument("--unsafe", action="store_true",
                   help="full local DuckDB (any file, COPY, ATTACH, extensions); the warehouse file stays read-only")
    q.add_argument("--as-of", metavar="VERSION|TIME", default=None,
                   help="time travel: every lake table as of an ISO-8601 time (UTC unless a zone is given; its "
                        "newest version committed by then) or a Delta version number (of every table)")
    q.set_defaults(fn=cmd_sql)

    st = sub.add_parser("status", help="batches, table sizes, Qdrant points, cluster quality")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    sv = sub.add_parser("serve", help="the search and cluster explorer in the browser (FastAPI + uvicorn)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="bind address (default 127.0.0.1; any other needs MM_SERVE_TOKEN)")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--log-level", default="warning")
    sv.set_defaults(fn=cmd_serve)

    h = sub.add_parser("home", help="create/print the Dagster home used by CLI runs and `make ui`")
    h.set_defaults(fn=cmd_home)
    c = sub.add_parser("config", help="every setting in effect and where it came from (environment or default)")
    c.add_argument("--json", action="store_true")
    c.add_argument("--env-example", action="store_true", help="print the generated .env.example")
    c.add_argument("--table", action="store_true", help="print the generated configuration table of the docs")
    c.set_defaults(fn=cmd_config)

    cp = sub.add_parser("compute", help="MM_COMPUTE=ray: list or stop this data dir's warm encoder actors "
                                       "on the cluster at RAY_ADDRESS")
    cp.add_argument("action", choices=["status", "stop"])
    cp.set_defaults(fn=cmd_compute)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mm_platform.lib.storage.lake import LakeWriteError

    try:
        return int(args.fn(args) or 0)
    except LakeWriteError as exc:  # a full disk or read-only data dir: say so, no traceback
        _err(str(exc))
        return 1


def run() -> NoReturn:
    """The ``mm-platform`` program: :func:`main`, then :func:`exit_quickly` with its status."""
    exit_quickly(main())


def exit_quickly(status: int) -> NoReturn:
    """End the process without the interpreter's teardown, as mypy's ``hard_exit`` does: freeing every object of
    Dagster, Ray, DuckDB and polars one by one takes 0.3-0.8 s per command (0.8 s of a 7.8 s +10% ingest).
    What a normal exit does that matters happens first: other non-daemon threads are joined, the exit handlers
    run (Ray disconnects, logging flushes), and stdout/stderr are flushed. Files are written in ``with`` blocks
    (and Delta, DuckDB, SQLite and Qdrant commit or flush before a command returns). Only for the program, never
    for ``main()`` called in a process that goes on."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`mm-platform status | head`): nothing left to say
            pass
    os._exit(status)


if __name__ == "__main__":
    run()
