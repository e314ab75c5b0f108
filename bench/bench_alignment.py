"""Does the shared space generalise? Heads before/after regularisation vs the linear baselines, in one run.

A demo corpus (offline profile) is ingested through the real CLI into a temporary data dir (or ``--lake``
points at an existing lake), then on the same corpus, the same seeded 80/20 split:

  * ``old heads``: the previous defaults (hidden width 256, weight decay 1e-4, no dropout, no early stopping,
    60 epochs);
  * ``new heads``: the current defaults (width scaled to the training rows, weight decay 0.05, dropout 0.2,
    early stopping with patience 5, best epoch restored);
  * the ``ridge`` and ``cca`` linear baselines, and which mapping the gate picks.

Printed per variant: training and validation loss (eval mode, chunks of the same size so they compare),
their ratio, mean validation recall@10 over ordered modality pairs, epochs run and seconds.

    python bench/bench_alignment.py [--records 240] [--seed 0] [--lake DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def ingest_demo(records: int, seed: int) -> Path:
    work = Path(tempfile.mkdtemp(prefix="mm-bench-alignment-"))
    env = {**os.environ, "MM_DATA_DIR": str(work / "data"), "DAGSTER_HOME": str(work / "dagster_home"),
           "MM_MODEL_PROFILE": "offline", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    for args in (["make-demo-data", "--records", str(records), "--seed", str(seed), "--broken", "0",
                  "--out", str(work / "data" / "landing" / "demo")], ["ingest"]):
        proc = subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode:
            sys.exit(f"mm-platform {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return work / "data" / "lake"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lake", help="an existing lake dir (skips the demo ingest)")
    args = ap.parse_args()
    from mm_platform.lib.vectors.shared_space import AlignmentConfig, fit_shared_space, train_alignment
    from mm_platform.lib.vectors.corpus import load_corpus
    from mm_platform.lib.storage.lake import Lake

    corpus = load_corpus(Lake(args.lake or ingest_demo(args.records, args.seed)))
    new = AlignmentConfig(shared_dim=128, epochs=60, seed=0, anchors=corpus.native_shared())
    old = replace(new, hidden_dim=256, weight_decay=1e-4, dropout=0.0, patience=0)
    rows = []
    t0 = time.perf_counter()
    _, m_old = train_alignment(corpus.blocks, corpus.present, old, labels=corpus.labels)
    rows.append(("old heads", m_old, time.perf_counter() - t0))
    t0 = time.perf_counter()
    model, m = fit_shared_space(corpus.blocks, corpus.present, new, labels=corpus.labels)
    total = time.perf_counter() - t0
    base_s = sum(b.get("seconds", 0.0) for b in m["baselines"].values())
    rows.append(("new heads", m, total - base_s))
    print(f"corpus: {corpus.n} records, {m['n_train']} training / {m['n_val']} validation rows with >= 2 "
          f"modalities, offline profile\n")
    print(f"{'variant':<10} {'hidden':>6} {'params':>8} {'epochs':>9} {'train loss':>10} {'val loss':>9} "
          f"{'val/train':>9} {'recall@10':>9} {'seconds':>8}")
    for name, mm, sec in rows:
        ratio = mm["val_loss"] / mm["train_loss"] if mm["train_loss"] else float("nan")
        ep = f"{mm['best_epoch']}/{mm['epochs']}" if mm.get("stopped_early") else str(mm["epochs"])
        print(f"{name:<10} {mm['hidden_dim']:>6} {mm['n_parameters']:>8} {ep:>9} {mm['train_loss']:>10.3f} "
              f"{mm['val_loss']:>9.3f} {ratio:>9.2f} {mm['mean_recall@10']:>9.3f} {sec:>8.2f}")
    for name, b in m["baselines"].items():
        if b.get("available"):
            print(f"{name:<10} {'linear':>6} {'':>8} {'':>9} {'':>10} {'':>9} {'':>9} "
                  f"{b['mean_recall@10']:>9.3f} {b['seconds']:>8.2f}")
    print(f"\nin use: {model.mapping} ({m['mapping_reason']})")
    print("per pair (recall@10 heads / baseline, use_heads):")
    for pair, g in m["gating"].items():
        h, b = g["validation_recall_heads"], g["validation_recall_baseline"]
        print(f"  {pair:<15} {h if h is None else round(h, 3)} / {b if b is None else round(b, 3)}  {g['use_heads']}")


if __name__ == "__main__":
    main()
