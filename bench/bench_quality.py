"""Quality benchmark, from one run per corpus: does fusion earn its keep on the demo AND on real data?

Every corpus (the demo generator's, and each real corpus of ``bench/corpora/``: Tux Paint stamps, Twemoji,
Asterisk prompts) is written as one landing batch and ingested through the real CLI on the offline profile (MiniLM text,
EfficientNet-Lite0 image, log-mel/MFCC audio), in its own data dir. The first ingest runs the full re-cluster
job: it clusters the selected fusion strategy, every other strategy, text+image, and each single modality,
and scores each against the labels. For every corpus this script prints the same table, read from the lake
with ``mm-platform sql``:

  1. cluster quality (NMI/ARI against the labels; cluster_metrics): each single modality, each fusion
     strategy the ``clusters`` asset computed, and the selected default (marked ``*``);
  2. macro-F1 (stratified 5-fold CV) of the fusion and single-modality classifiers (classifier_metrics);
  3. the goals, PASS/FAIL:
     - the default's NMI is never below the best single modality's;
     - where at least two modalities carry signal (alone, NMI >= 0.10 and >= half the best single modality's),
       the default's NMI >= best single + 0.05;
     - the modality weighting adds <= 10% to the re-cluster (the weighting seconds the ``clusters`` asset
       records, against the rest of its step time in the Dagster run).

For the demo it also keeps the earlier checks: cross-modal retrieval through the shared space on held-out
records, best fusion NMI >= best single + 0.10, four modalities beat text+image, fused F1 above every single
modality.

    python bench/bench_quality.py [--corpora demo,tuxpaint,emoji,asterisk] [--records 600] [--limit 600] [--seed 0]

Real corpora are fetched once into ``$MM_BENCH_CACHE`` (default ``~/.cache/mm_platform/bench``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINGLE = ("text", "image", "audio", "tabular")
SIGNAL_NMI = 0.10  # a modality "carries signal" when it clusters at least this well against the labels alone
SIGNAL_SHARE = 0.5  # ... and at least half as well as the best single modality
MARGIN = 0.05  # where two or more modalities carry signal, the default must beat the best one by this
WEIGHTING_BUDGET = 0.10  # the weighting may add at most this fraction to a re-cluster


def cli(*args: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def sql(query: str, env: dict) -> list[dict]:
    return json.loads(cli("sql", "--json", query, env=env))["rows"]


def table(rows: list[dict], cols: list[str]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def write_corpus(name: str, landing: Path, args: argparse.Namespace, env: dict) -> str:
    """Write the corpus's batch under ``landing``; returns a one-line description."""
    if name == "demo":
        cli("make-demo-data", "--records", str(args.records), "--seed", str(args.seed), "--broken", "0",
            "--out", str(landing / "demo"), env=env)
        return f"demo generator, {args.records} records (seed {args.seed}), all four modalities + a stream"
    builder = importlib.import_module(f"bench.corpora.{name}")
    summary = builder.build(landing / name, limit=args.limit or None)
    mods = ", ".join(f"{m} {n}" for m, n in summary["modalities"].items())
    return (f"{summary['source']}: {summary['records']} records, {len(summary['labels'])} labels; "
            f"modalities: {mods}")


def weighting_seconds(md: dict) -> float | None:
    """The weighting seconds in a ``clusters`` materialization's metadata: ``weighting_seconds`` (the total, which
    includes the evidence's own ``seconds``: never added twice) or else every key with ``weight`` in it that holds
    seconds. None when there is none."""
    if isinstance(md.get("weighting_seconds"), (int, float)):
        return float(md["weighting_seconds"])
    seconds = None
    for key, value in md.items():
        if "weight" in key and isinstance(value, dict) and isinstance(value.get("seconds"), (int, float)):
            seconds = (seconds or 0.0) + float(value["seconds"])
        elif "weight" in key and key.endswith("seconds") and isinstance(value, (int, float)):
            seconds = (seconds or 0.0) + float(value)
    return seconds


def weighting_cost(dagster_home: Path) -> dict | None:
    """Seconds the modality weighting took in the last ``clusters`` materialization, and the rest of that
    step's time (from the Dagster instance the CLI ran on). None when the asset records no weighting."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("recluster_assignments"))
        if event is None or event.asset_materialization is None:
            return None
        seconds = weighting_seconds({k: v.value for k, v in event.asset_materialization.metadata.items()})
        stats = [s for s in instance.get_run_step_stats(event.run_id) if s.step_key == "clusters"]
        if seconds is None or not stats or stats[0].end_time is None:
            return None
        step = stats[0].end_time - stats[0].start_time
        return {"weighting_s": seconds, "step_s": step, "ratio": seconds / max(step - seconds, 1e-9)}


def quality_rows(metrics: list[dict]) -> tuple[list[dict], dict | None]:
    """The table rows (singles, then fusion strategies) and the default's row (space ``fused``)."""
    by_space = {r["space"]: r for r in metrics}
    default = by_space.get("fused")
    spec = (default or {}).get("fusion_strategy") or ""
    chosen = re.split(r"[@:]", spec)[0]  # "early:text=1,..." / "shared_mean@v3" -> the strategy name
    # the re-cluster's evidence-chosen candidate is named at the end: "early:text=1.25,... (early_evidence)"
    picked = re.search(r"\(([\w+]+)\)\s*$", spec)
    candidate_space = None
    if picked:
        name = picked.group(1)
        candidate_space = {"early_uniform": "fused:early"}.get(name) or (
            name.removeprefix("single_") if name.startswith("single_") else f"fused:{name}")
    rows = []
    for space in [*SINGLE, *sorted(s for s in by_space if s.startswith("fused:"))]:
        if space not in by_space:
            continue
        r = by_space[space]
        strategy = space.partition(":")[2]
        mark = space == candidate_space if candidate_space else bool(strategy and strategy == chosen)
        rows.append({"space": space, "default": "*" if mark else "",
                     "records": r["n_records"], "k": r["k"], "nmi": r["nmi"], "ari": r["ari"],
                     "silhouette": r["silhouette"]})
    if default is not None and not any(r["default"] for r in rows):
        rows.append({"space": f"fused ({spec})", "default": "*", "records": default["n_records"], "k": default["k"],
                     "nmi": default["nmi"], "ari": default["ari"], "silhouette": default["silhouette"]})
    return rows, default


def goals_for(rows: list[dict], default: dict | None, cost: dict | None) -> list[tuple[str, bool]]:
    singles = {r["space"]: r["nmi"] or 0.0 for r in rows if r["space"] in SINGLE}
    if default is None or not singles:
        return [("the default clustering and at least one single modality were scored", False)]
    best_name = max(singles, key=singles.get)
    best, nmi = singles[best_name], default["nmi"] or 0.0
    carrying = sorted(m for m, v in singles.items() if v >= max(SIGNAL_NMI, SIGNAL_SHARE * best))
    goals = [(f"default NMI {nmi:.3f} >= best single modality ({best_name}) {best:.3f}", nmi >= best - 1e-9)]
    if len(carrying) >= 2:
        goals.append((f"{len(carrying)} modalities carry signal ({', '.join(carrying)}): default NMI {nmi:.3f} "
                      f">= best single {best:.3f} + {MARGIN:.2f}", nmi >= best + MARGIN - 1e-9))
    else:
        floor = max(SIGNAL_NMI, SIGNAL_SHARE * best)
        goals.append((f"(only {len(carrying)} modality with NMI >= {floor:.3f} alone (>= {SIGNAL_NMI:.2f} and >= "
                      f"{SIGNAL_SHARE:.0%} of the best): the +{MARGIN:.2f} goal does not apply)", True))
    if cost is None:
        goals.append(("weighting time: the clusters asset records no weighting seconds", False))
    else:
        goals.append((f"weighting adds {cost['ratio']:.1%} to the re-cluster ({cost['weighting_s']:.2f} s of a "
                      f"{cost['step_s']:.1f} s clusters step) <= {WEIGHTING_BUDGET:.0%}",
                      cost["ratio"] <= WEIGHTING_BUDGET))
    return goals


def demo_extras(lake_root: Path, rows: list[dict], clf: dict) -> list[tuple[str, bool]]:
    """The demo's own checks (retrieval through the shared space; fusion's margin on the built-in corpus)."""
    by_space = {r["space"]: r for r in rows}
    pointer = json.loads((lake_root / "_models" / "alignment" / "current.json").read_text())
    retrieval = pointer["metrics"]["retrieval"]
    print(f"\nCross-modal retrieval through the shared space (alignment heads {pointer['version']}, "
          f"{pointer['metrics']['n_train']} training / {pointer['metrics']['n_val']} held-out records)")
    pairs = ["text->image", "image->text", "audio->text", "text->audio", "tabular->image", "image->tabular"]
    print(table([{"pair": p, "queries": retrieval[p]["n_queries"], "recall@1": retrieval[p]["recall@1"],
                  "recall@10": retrieval[p]["recall@10"], "label_hit@1": retrieval[p].get("label_recall@1"),
                  "label_hit@10": retrieval[p].get("label_recall@10")} for p in pairs if p in retrieval],
                ["pair", "queries", "recall@1", "recall@10", "label_hit@1", "label_hit@10"]))
    t2i = retrieval.get("text->image", {}).get("label_recall@10") or 0.0
    i2t = retrieval.get("image->text", {}).get("label_recall@10") or 0.0
    best_single = max(by_space[s]["nmi"] or 0.0 for s in SINGLE if s in by_space)
    fusions = [r["nmi"] or 0.0 for s, r in by_space.items() if s.startswith("fused") and s != "fused:text+image"]
    best_fusion = max(fusions) if fusions else 0.0
    four = by_space.get("fused:early", {}).get("nmi") or 0.0
    two = by_space.get("fused:text+image", {}).get("nmi") or 0.0
    best_fused_f1 = max((clf[s]["macro_f1"] for s in clf if s not in SINGLE), default=0.0)
    best_single_f1 = max((clf[s]["macro_f1"] for s in SINGLE if s in clf), default=0.0)
    return [
        (f"best fusion NMI {best_fusion:.3f} >= best single modality {best_single:.3f} + 0.10",
         best_fusion >= best_single + 0.10),
        (f"four modalities beat text+image: NMI {four:.3f} vs {two:.3f} ({four - two:+.3f})", four > two),
        (f"text->image label hit@10 {t2i:.3f} >= 0.8", t2i >= 0.8),
        (f"image->text label hit@10 {i2t:.3f} >= 0.8", i2t >= 0.8),
        (f"best fused F1 {best_fused_f1:.3f} > every single modality (best {best_single_f1:.3f})",
         best_fused_f1 > best_single_f1),
    ]


def run_corpus(name: str, args: argparse.Namespace) -> list[tuple[str, bool]]:
    work = Path(tempfile.mkdtemp(prefix=f"mm-bench-quality-{name}-"))
    env = {**os.environ, "MM_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
           "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    about = write_corpus(name, work / "data" / "landing", args, env)
    t0 = time.perf_counter()
    cli("ingest", env=env)
    seconds = time.perf_counter() - t0
    print(f"\n=== corpus: {name} ===\n{about}\noffline profile; ingest + first re-cluster job {seconds:.0f} s "
          f"(work dir {work})\n")

    metrics = sql("SELECT space, fusion_strategy, k, n_records, nmi, ari, silhouette FROM cluster_metrics", env)
    rows, default = quality_rows(metrics)
    print("Cluster quality against the labels (cluster_metrics; * = the selected default)")
    print(table(rows, ["space", "default", "records", "k", "nmi", "ari", "silhouette"]))
    if default is not None:
        print(f"selected default: {default['fusion_strategy']} (NMI {default['nmi'] or 0.0:.3f}, k {default['k']})")
    clf = {r["strategy"]: r for r in sql("SELECT strategy, macro_f1, macro_f1_std, accuracy, weights_json "
                                         "FROM classifier_metrics", env)}
    if clf:
        print("\nClassifiers (logistic regression, stratified 5-fold CV, same folds; classifier_metrics)")
        order = [s for s in clf if s not in SINGLE] + [s for s in SINGLE if s in clf]
        print(table([{"strategy": s, "macro_f1": clf[s]["macro_f1"], "std": clf[s]["macro_f1_std"],
                      "accuracy": clf[s]["accuracy"]} for s in order], ["strategy", "macro_f1", "std", "accuracy"]))
    goals = goals_for(rows, default, weighting_cost(work / "dagster_home"))
    if name == "demo":
        goals += demo_extras(work / "data" / "lake", rows, clf)
    print(f"\nGoals ({name}):")
    for text, ok in goals:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return [(f"{name}: {t}", ok) for t, ok in goals]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", default="demo,tuxpaint,emoji,asterisk",
                    help="comma-separated: demo and bench/corpora names")
    ap.add_argument("--records", type=int, default=600, help="demo records")
    ap.add_argument("--limit", type=int, default=600, help="records per real corpus (stratified sample; 0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="demo seed")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # one corpus at a time, visible while the next one runs
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `bench.corpora` from a plain script run
    results = []
    for name in [c.strip() for c in args.corpora.split(",") if c.strip()]:
        results += run_corpus(name, args)
    failed = [t for t, ok in results if not ok]
    print(f"\nSummary: {len(results) - len(failed)} of {len(results)} checks PASS")
    for text in failed:
        print(f"  FAIL {text}")


if __name__ == "__main__":
    main()
