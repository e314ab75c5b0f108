"""What evidence weights and strategy selection buy, and what they cost, on a synthetic corpus built to hurt
uniform fusion: two informative modalities (image-like 1280-d, text-like 384-d with a third of texts carrying
no signal, like inspectors' notes that say nothing), one weak and one pure-noise modality.

Prints, from one run: NMI/ARI of each single modality, early fusion with uniform weights, early fusion with
evidence weights, and the strategy the unsupervised selection picks (labels only for reporting), plus the time
the weighting adds relative to one k-means re-cluster of the fused vectors (goal <= 10%).

    python bench/bench_modality_weights.py [--records 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mm_platform.lib.clustering import kmeans_auto
from mm_platform.lib.fusion import early_fusion
from mm_platform.lib.modality_weights import evidence_weights, select_strategy, weights_for_strategies


def view(y: np.ndarray, dim: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    centers = rng.normal(size=(int(y.max()) + 1, dim))
    return centers[y] + rng.normal(scale=spread, size=(len(y), dim))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    y = rng.integers(0, args.classes, size=args.records)
    blocks = {
        "image": view(y, 1280, 3.2, rng),
        "text": view(y, 384, 1.6, rng),
        "audio": view(y, 64, 4.0, rng),  # weak
        "tabular": rng.normal(size=(args.records, 32)),  # noise
    }
    silent = rng.random(args.records) < 1 / 3
    blocks["text"][silent] = rng.normal(size=(int(silent.sum()), 384))  # notes that say nothing useful
    names = list(blocks)
    present = {m: np.ones(args.records, bool) for m in names}

    t0 = time.perf_counter()
    ev = evidence_weights(blocks, seed=args.seed)
    t_weights = time.perf_counter() - t0
    cands = {n: early_fusion(blocks, present, w).vectors for n, w in weights_for_strategies(names, ev).items()}
    t0 = time.perf_counter()
    base = kmeans_auto(cands["early_uniform"], k_max=12, seed=args.seed)
    t_cluster = time.perf_counter() - t0
    t0 = time.perf_counter()
    choice = select_strategy(cands, n_clusters=base.k, seed=args.seed)
    t_select = time.perf_counter() - t0

    print(f"{args.records} records, {args.classes} classes; evidence weights {ev.weights}")
    print(f"pair overlaps {ev.pair_overlap}; {ev.reason}\n")
    print(f"{'space':16} {'nmi':>6} {'ari':>6} {'silhouette(sel)':>16}")
    nmis = {}
    for name, X in cands.items():
        lab = kmeans_auto(X, k_max=12, seed=args.seed).labels
        nmis[name] = normalized_mutual_info_score(y, lab)
        print(f"{name:16} {nmis[name]:6.3f} {adjusted_rand_score(y, lab):6.3f} {choice.scores[name]!s:>16}")
    best_single = max(v for k, v in nmis.items() if k.startswith("single_"))
    print(f"\nselected (unsupervised, labels held out): {choice.best} NMI {nmis[choice.best]:.3f}; "
          f"best single {best_single:.3f} ({nmis[choice.best] - best_single:+.3f}); "
          f"uniform early {nmis['early_uniform']:.3f}")
    print(f"time: weights {t_weights:.2f} s, selection {t_select:.2f} s, one k-means re-cluster {t_cluster:.2f} s; "
          f"weights / re-cluster = {t_weights / t_cluster:.1%}, (weights+selection) / re-cluster = "
          f"{(t_weights + t_select) / t_cluster:.1%}")


if __name__ == "__main__":
    main()
