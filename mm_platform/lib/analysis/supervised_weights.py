"""The supervised fusion candidate: modality weights from how well each modality alone clusters the labels.

Only used when labels are present and allowed (``MM_FUSION_SELECT=auto`` with at least ``min_labelled`` labelled
records of two or more classes); the unsupervised path never sees this module.

A full re-cluster already clusters every single modality and scores it. With labels, the NMI of a modality's own
clustering against them is a direct, measured reliability ``r_m`` (where the label-free evidence has to infer it
from triads of kNN agreement). The candidate ``early_labels`` fuses with

    ``w_m = r_m^2 / sd_m``   (``sd_m`` = the spread of the modality's cosines, as in the evidence weights)

rescaled to mean 1 over the non-zero weights. The square (rather than ``r_m``) lets the best modality lead and a
weak one (tuxpaint's sound effects, NMI 0.10; asterisk's one-voice audio, 0.06) count for little, without a
threshold. Measured on the four corpora (``docs-notes/fusion2.md``): ``r^2/sd`` was best or within noise of the best
of ``r/sd``, ``r^2/sd``, equal weights over the modalities with signal, each with and without a threshold.

It is one more candidate for the label-based choice, not a replacement: the choice is still by NMI on the labels
among every candidate, so it is taken only where it clusters the labels better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mm_platform.lib.vectors.corpus import Corpus
from mm_platform.lib.analysis.fusion_choice import layout_matrix

def single_modality_nmi(partitions: Mapping[str, np.ndarray], labels: Sequence[str | None],
                        min_labelled: int = 20) -> dict[str, float]:
    """modality -> NMI of its own clustering (``partitions["single_<m>"]``, ``-1`` = record without it) against
    the labels, on the labelled records it covers; modalities with fewer than ``min_labelled`` such records or
    fewer than two classes among them are left out."""
    from sklearn.metrics import normalized_mutual_info_score

    from mm_platform.lib.analysis.clustering import is_missing_label

    known = np.array([not is_missing_label(t) for t in labels], dtype=bool)
    truth = np.array([str(t) if ok else "" for t, ok in zip(labels, known, strict=True)], dtype=object)
    out: dict[str, float] = {}
    for name, part in partitions.items():
        if not name.startswith("single_"):
            continue
        rows = known & (np.asarray(part) >= 0)
        if rows.sum() < min_labelled or len(set(truth[rows].tolist())) < 2:
            continue
        out[name.removeprefix("single_")] = float(normalized_mutual_info_score(truth[rows], np.asarray(part)[rows]))
    return out


def label_weights(names: Sequence[str], single_nmi: Mapping[str, float],
                  cosine_sd: Mapping[str, float]) -> dict[str, float] | None:
    """``w_m = nmi_m^2 / sd_m`` for every modality in ``names`` (0 without a measured NMI), rescaled to mean 1 over
    the non-zero weights; None when no modality has a positive weight or fewer than two have one (a single modality
    is already its own candidate)."""
    raw = {m: (max(single_nmi.get(m, 0.0), 0.0) ** 2) / max(cosine_sd.get(m, 1.0), 1e-6) for m in names}
    pos = [m for m, v in raw.items() if v > 0]
    if len(pos) < 2:
        return None
    mean = sum(raw[m] for m in pos) / len(pos)
    return {m: round(raw[m] / mean, 4) for m in names}


@dataclass
class SupervisedEvidence:
    """Weights from the labels, fused in the layout: the matrix the ``fused:early_evidence`` space clusters."""

    weights: dict[str, float]
    single_nmi: dict[str, float]
    ids: list[str]
    X: np.ndarray

    def note(self) -> str:
        return ("labels: early_evidence weighted by each modality's own label NMI^2 / cosine sd (NMI "
                + ", ".join(f"{m} {v:.3f}" for m, v in self.single_nmi.items()) + ")")


def supervised_evidence(corpus: Corpus, fitted: Mapping[str, tuple[Sequence[str], Any]],
                        cosine_sd: Mapping[str, float], layout: Mapping[str, int],
                        min_labelled: int = 20) -> SupervisedEvidence | None:
    """Label weights (:func:`label_weights`) from the single modalities' clusterings in ``fitted`` (space ->
    ``(record ids, ClusterResult)``; spaces named after a modality), fused in the fixed ``layout``; None without
    enough labels or without two modalities that cluster them."""
    row_of = {r: i for i, r in enumerate(corpus.record_ids)}
    partitions = {}
    for m in corpus.modalities():
        if m in fitted:
            ids, res = fitted[m]
            part = np.full(corpus.n, -1, dtype=np.int64)
            part[[row_of[r] for r in ids]] = res.labels
            partitions[f"single_{m}"] = part
    single = single_modality_nmi(partitions, corpus.labels, min_labelled)
    weights = label_weights(corpus.modalities(), single, cosine_sd)
    if weights is None:
        return None
    X = layout_matrix(corpus.blocks, corpus.present, layout, weights)
    keep = np.flatnonzero(np.linalg.norm(X, axis=1) > 0)
    return SupervisedEvidence(weights, {m: round(v, 4) for m, v in single.items()},
                              [corpus.record_ids[i] for i in keep], X[keep])
