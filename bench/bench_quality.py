"""Quality benchmark on the demo corpus, from one run: do fusion and the shared space earn their keep?

One demo corpus (N records, all four modalities + a stream) is ingested through the real CLI on the offline
profile. The first ingest runs the full re-cluster job, which trains the alignment heads, clusters every
fusion strategy and each single modality, and cross-validates the classifiers. This script then prints,
from the lake that run wrote:

  1. cluster quality (NMI/ARI against the demo labels) of each single modality, of text+image fused, and
     of each fusion strategy over all four modalities (cluster_metrics);
  2. cross-modal retrieval through the shared space on the held-out 20% of records (never seen by the
     alignment training): text→image and image→text, instance recall@10 (the record's own image/text in
     the top 10) and label hit@10 (a record of the query's label in the top 10);
  3. macro-F1 (stratified 5-fold CV) of the early-fusion, late-fusion and single-modality classifiers.

and checks the goals: best fusion NMI ≥ best single modality + 0.10; four modalities beat text+image;
label hit@10 ≥ 0.8 both ways; early or late F1 above every single modality.

    python bench/bench_quality.py [--records 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SINGLE = ("text", "image", "audio", "tabular")


def cli(*args: str, env: dict) -> str:
    proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def table(rows: list[dict], cols: list[str]) -> str:
    def cell(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    widths = {c: max(len(c), *(len(cell(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(cell(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mm-bench-quality-"))
    env = {**os.environ, "MM_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
           "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    cli("make-demo-data", "--records", str(args.records), "--seed", str(args.seed), "--broken", "0",
        "--out", str(work / "data" / "landing" / "demo"), env=env)
    t0 = time.perf_counter()
    cli("ingest", env=env)
    seconds = time.perf_counter() - t0

    from mm_platform.lib.lake import Lake

    lake = Lake(work / "data" / "lake")
    print(f"demo corpus: {args.records} records (seed {args.seed}), offline profile, ingest + first re-cluster "
          f"job {seconds:.0f} s\n")

    metrics = lake.read_table("cluster_metrics")
    rows = {r["space"]: r for r in metrics.iter_rows(named=True)}
    order = [*SINGLE, "fused:text+image", "fused:early", "fused:early_evidence", "fused:shared_mean"]
    print("1. Cluster quality against the labels (K-Means, k by silhouette, PCA-16; cluster_metrics)")
    print(table([{"space": s, "k": rows[s]["k"], "nmi": rows[s]["nmi"], "ari": rows[s]["ari"],
                  "silhouette": rows[s]["silhouette"], "agreement_with_fused": rows[s]["agreement_nmi"]}
                 for s in order if s in rows], ["space", "k", "nmi", "ari", "silhouette", "agreement_with_fused"]))
    best_single = max(rows[s]["nmi"] for s in SINGLE if s in rows)
    best_fusion = max(rows[s]["nmi"] for s in ("fused:early", "fused:early_evidence", "fused:shared_mean") if s in rows)
    four_vs_two = rows["fused:early"]["nmi"] - rows["fused:text+image"]["nmi"]

    pointer = json.loads((lake.root / "_models" / "alignment" / "current.json").read_text())
    retrieval = pointer["metrics"]["retrieval"]
    print(f"\n2. Cross-modal retrieval through the shared space (alignment heads {pointer['version']}, "
          f"{pointer['metrics']['n_train']} training / {pointer['metrics']['n_val']} held-out records)")
    pairs = ["text->image", "image->text", "audio->text", "text->audio", "tabular->image", "image->tabular"]
    print(table([{"pair": p, "queries": retrieval[p]["n_queries"], "recall@1": retrieval[p]["recall@1"],
                  "recall@10": retrieval[p]["recall@10"], "label_hit@1": retrieval[p].get("label_recall@1"),
                  "label_hit@10": retrieval[p].get("label_recall@10")} for p in pairs if p in retrieval],
                ["pair", "queries", "recall@1", "recall@10", "label_hit@1", "label_hit@10"]))
    t2i = retrieval["text->image"].get("label_recall@10") or 0.0
    i2t = retrieval["image->text"].get("label_recall@10") or 0.0

    clf = {r["strategy"]: r for r in lake.read_table("classifier_metrics").iter_rows(named=True)}
    print("\n3. Classifiers (logistic regression, stratified 5-fold CV, same folds; classifier_metrics)")
    print(table([{"strategy": s, "macro_f1": clf[s]["macro_f1"], "std": clf[s]["macro_f1_std"],
                  "accuracy": clf[s]["accuracy"]} for s in ("early", "late", "late_learned", *SINGLE) if s in clf],
                ["strategy", "macro_f1", "std", "accuracy"]))
    learned = clf.get("late_learned", {}).get("weights_json")
    if learned:
        print(f"learned late-fusion modality weights (held-out accuracy above chance): {learned}")
    best_fused_f1 = max(clf[s]["macro_f1"] for s in ("early", "late", "late_learned") if s in clf)
    best_single_f1 = max(clf[s]["macro_f1"] for s in SINGLE if s in clf)

    goals = [
        (f"best fusion NMI {best_fusion:.3f} >= best single modality {best_single:.3f} + 0.10",
         best_fusion >= best_single + 0.10),
        (f"four modalities beat text+image: NMI {rows['fused:early']['nmi']:.3f} vs "
         f"{rows['fused:text+image']['nmi']:.3f} ({four_vs_two:+.3f})", four_vs_two > 0),
        (f"text->image label hit@10 {t2i:.3f} >= 0.8", t2i >= 0.8),
        (f"image->text label hit@10 {i2t:.3f} >= 0.8", i2t >= 0.8),
        (f"best fused F1 {best_fused_f1:.3f} > every single modality (best {best_single_f1:.3f})",
         best_fused_f1 > best_single_f1),
    ]
    print("\nGoals:")
    for text, ok in goals:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    print(f"\n(work dir {work})")


if __name__ == "__main__":
    main()
