"""The commands of ``mm-platform`` that read: search, sql, status (and the helpers every command shares)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mm_platform.lib.settings import Paths, setting


def _err(msg: str) -> None:
    print(f"mm-platform: {msg}", file=sys.stderr)


@contextmanager
def _resources() -> Iterator[Any]:
    """The code location's resources, initialised exactly as Dagster does for a run."""
    import dagster as dg

    from mm_platform.defs.resources import build_resources

    with dg.build_resources(build_resources()) as res:
        yield res


def _table(rows: list[dict], columns: list[str] | None = None, width: int = 60) -> str:
    if not rows:
        return "(no rows)"
    cols = columns or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            s = f"{v:.4g}"
        elif isinstance(v, list | tuple):
            s = ", ".join(map(str, v)) if len(v) <= 8 else f"[{len(v)} values]"
        else:
            s = "" if v is None else str(v)
        s = s.replace("\n", " ")
        return s if len(s) <= width else s[: width - 1] + "…"

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# -- commands -----------------------------------------------------------------------------------------


def _shown(hit) -> str | None:
    """What a hit matched on: the image or audio file for image/audio vectors, else the text preview."""
    p = hit.payload
    for m in ("image", "audio"):
        if hit.vector.endswith(m) and p.get(f"{m}_uri"):
            return Path(p[f"{m}_uri"]).name
    return p.get("text") or p.get("image_uri") or p.get("audio_uri")


def _print_hits(hits: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"results": [
            {"record_id": h.record_id, "score": h.score, "modality": h.vector, "payload": h.payload} for h in hits
        ]}, default=_json_default, indent=2))
        return
    rows = [{"rank": i, "score": round(h.score, 4), "record_id": h.record_id, "label": h.payload.get("label"),
             "cluster": h.payload.get("cluster_id"), "matched": _shown(h)}
            for i, h in enumerate(hits, 1)]
    print(_table(rows))


def _search_service(args: argparse.Namespace) -> int | None:
    """Answer a text or fields search through a running `mm-platform serve` (no model load here). None when
    there is none or it cannot be reached quickly: the caller searches in-process."""
    from mm_platform.serve.discovery import ServiceError, running_service, search_via_service

    if args.text is None and args.fields is None:
        return None
    info = running_service(Paths.from_env().data_dir)
    if info is None:
        return None
    query = {"text": args.text, "fields": args.fields, "modality": args.modality, "k": args.k}
    try:
        answer = search_via_service(info, {k: v for k, v in query.items() if v is not None})
    except ServiceError as exc:
        _err(str(exc))
        return 2
    if answer is None:
        return None
    if args.json:
        print(json.dumps(answer, default=_json_default, indent=2))
        return 0
    rows = [{"rank": i, "score": round(h["score"], 4), "record_id": h["record_id"], "label": h.get("label"),
             "cluster": h.get("cluster_id"), "matched": h.get("text")} for i, h in enumerate(answer["results"], 1)]
    print(_table(rows))
    return 0


def _search_cold(args: argparse.Namespace) -> int | None:
    """A text search against text or fused vectors made by the bundled MiniLM, in this process without torch,
    Dagster or the encoder registry (numpy MiniLM: same vectors, same identity). None when the query needs
    more (another query kind, a shared-space target, CLIP/CLAP vectors): the caller takes the full path."""
    if args.text is None or args.modality not in (None, "text", "fused"):
        return None
    from mm_platform.lib.encoders.base import EncoderUnavailable
    from mm_platform.lib.encoders.minilm_numpy import NumpyMiniLM, TextQueryEncoders
    from mm_platform.lib.storage.qdrant import QdrantBusy
    from mm_platform.lib.search import SearchError, search, stored_model

    try:
        with _qdrant_store_from_env(Paths.from_env()) as store:
            if not store.exists() or store.count() == 0:
                return None  # the full path says why
            encoder = NumpyMiniLM()
            if stored_model(store, "text") != f"{encoder.info.model_id}@{encoder.info.model_version}":
                return None
            hits = search(store, TextQueryEncoders(encoder), text=args.text, modality=args.modality, k=args.k)
    except (EncoderUnavailable, QdrantBusy):
        return None
    except SearchError as exc:
        _err(str(exc))
        return 2
    _print_hits(hits, args.json)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    if not args.no_service:
        served = _search_service(args)
        if served is not None:
            return served
    cold = _search_cold(args)
    if cold is not None:
        return cold
    from mm_platform.lib.search import SearchError, SharedSpace, search

    with _resources() as res:
        try:
            lake = res.warehouse.lake
            state = None
            if args.fields is not None:  # only a fields query needs the ingest assets' module
                from mm_platform.lib.storage.model_files import tabular_state_dir
                from mm_platform.lib.features.tabular import load_state

                state = load_state(tabular_state_dir(lake))
            with res.qdrant.store(lake) as store:
                hits = search(store, res.encoders.encoders, text=args.text, image=args.image, audio=args.audio,
                              fields=args.fields, tabular_state=state, modality=args.modality, k=args.k,
                              shared=SharedSpace.from_lake(lake))
        except SearchError as exc:
            _err(str(exc))
            return 2
    _print_hits(hits, args.json)
    return 0


def _sql_connection(lake: Any, paths: Paths, unsafe: bool, as_of: str | None) -> Any:
    """The connection `sql` runs on: restricted unless ``unsafe``; every table pinned to ``as_of`` if given."""
    import duckdb

    from mm_platform.lib.storage.lake import connect_readonly, connect_restricted, register_views

    if as_of is None:
        return connect_readonly(lake, paths.duckdb_path) if unsafe else connect_restricted(lake, paths.duckdb_path)
    if not unsafe:
        return connect_restricted(lake, paths.duckdb_path, as_of=as_of)
    con = duckdb.connect()
    register_views(con, lake, as_of=as_of)
    return con


def cmd_sql(args: argparse.Namespace) -> int:
    import duckdb

    from mm_platform.lib.storage.lake import Lake, RestrictedSQLError, execute_restricted

    paths = Paths.from_env()
    lake = Lake(paths.lake_dir)
    try:
        con = _sql_connection(lake, paths, args.unsafe, args.as_of)
    except (ValueError, duckdb.Error) as exc:
        _err(f"--as-of: {exc}")
        return 2
    try:
        cur = con.execute(args.query) if args.unsafe else execute_restricted(con, args.query)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    except RestrictedSQLError as exc:
        _err(f"refused: {exc} (`mm-platform sql --unsafe` runs any SQL with full local DuckDB)")
        return 2
    except duckdb.PermissionException as exc:
        _err(f"refused: {exc} (queries may read only the lake {lake.root}; `--unsafe` lifts this)")
        return 2
    except duckdb.Error as exc:
        _err(f"SQL error: {exc}")
        return 2
    finally:
        con.close()
    if args.json:
        print(json.dumps({"columns": cols, "rows": rows}, default=_json_default, indent=2))
    else:
        print(_table(rows, cols))
    return 0


def _qdrant_store_from_env(paths: Paths):
    """The Qdrant store as `build_resources` configures it, without importing Dagster or the encoders."""
    from mm_platform.lib.storage.qdrant import QdrantStore

    url = setting("QDRANT_URL")
    return QdrantStore(collection=setting("MM_QDRANT_COLLECTION"), path=None if url else paths.qdrant_path,
                       url=url or None, api_key=setting("QDRANT_API_KEY") or None, open_timeout_s=5,
                       restore=lambda store: _restore_from_lake(paths, store))


def _restore_from_lake(paths: Paths, store: Any) -> int:
    """Refill a collection whose unlogged write was interrupted from the lake (runs only then)."""
    from mm_platform.lib.storage.lake import Lake
    from mm_platform.lib.vectors.points import restore_points

    return restore_points(Lake(paths.lake_dir), store)


def status_report(paths: Paths, qdrant: Any = None) -> dict[str, Any]:
    """``qdrant``: a context manager factory yielding an open store (the service passes its own)."""
    from mm_platform.lib.storage.lake import Lake
    from mm_platform.lib.landing.ledger import encoder_request_key, ingested_hashes, pending_batches, table_counts
    from mm_platform.lib.storage.qdrant import QdrantBusy

    lake = Lake(paths.lake_dir)
    lake.ensure_initialized()
    metrics = lake.read_table("cluster_metrics")
    report: dict[str, Any] = {
        "data_dir": str(paths.data_dir),
        "landing_dir": str(paths.landing_dir),
        "ingested_batches": sorted(ingested_hashes(lake)),
        # the model settings as requested, not `auto` resolved: resolving would import torch and open_clip
        "pending_batches": [b.batch_id for b in pending_batches(paths, lake, request=encoder_request_key())],
        "current_records": lake.current_records().height,
        "tables": table_counts(lake),
        "cluster_metrics": metrics.drop("params_json").to_dicts(),
    }
    try:
        with qdrant() if qdrant else _qdrant_store_from_env(paths) as store:
            report["qdrant"] = {"location": store.location, "collection": store.collection,
                                "points": store.count(), "vectors": store.vector_dims()}
    except QdrantBusy as exc:
        report["qdrant"] = {"error": str(exc)}
    return report


def _status_from_service() -> dict[str, Any] | None:
    from mm_platform.serve.discovery import get_from_service, running_service

    info = running_service(Paths.from_env().data_dir)
    return get_from_service(info, "/api/status") if info else None


def cmd_status(args: argparse.Namespace) -> int:
    report = _status_from_service() or status_report(Paths.from_env())
    if args.json:
        print(json.dumps(report, default=_json_default, indent=2))
        return 0
    print(f"data dir:  {report['data_dir']}\nlanding:   {report['landing_dir']}")
    print(f"batches:   {len(report['ingested_batches'])} ingested, {len(report['pending_batches'])} pending "
          f"{report['pending_batches'] or ''}")
    print("tables:    " + ", ".join(f"{t}={n}" for t, n in report["tables"].items()))
    print(f"qdrant:    {report['qdrant']}")
    if report["cluster_metrics"]:
        print(_table(report["cluster_metrics"], ["space", "algorithm", "k", "n_records", "silhouette", "nmi", "ari"]))
    return 0
