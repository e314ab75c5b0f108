"""Reuse a comparison space's clustering for the chosen fusion, instead of clustering it a second time.

A full re-cluster clusters every comparison space (each single modality, text+image, uniform and evidence fusion)
and then clusters the *chosen* fusion in the fixed fused layout (:func:`mm_platform.lib.analysis.fusion_choice.layout_matrix`).
When the chosen fusion is a single modality or text+image, its layout matrix is the comparison space's matrix with
zero columns around it (a single modality with weight 1 is its L2-normalised block; every row has it when coverage
is full). PCA of a matrix padded with zero columns has the same components padded with zeros, so the comparison
space's clustering *is* the chosen fusion's clustering: :func:`lift_fit` checks that the matrices agree and lifts
the PCA mean and components into the layout's columns, so the saved cluster model still takes fused vectors.

This removes the one clustering the weighting used to add whenever a single modality or text+image was chosen
(the bulk of the "weighting" time on the asterisk corpus).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: the comparison space whose clustering a candidate can reuse
CANDIDATE_SPACE = {"early_uniform": "fused:early", "early_evidence": "fused:early_evidence",
                   "text+image": "fused:text+image"}


def space_of(candidate: str) -> str:
    """The comparison space of a fusion candidate: ``single_text`` -> ``text``, ``early_uniform`` ->
    ``fused:early``, ``text+image`` -> ``fused:text+image`` (other names map to themselves)."""
    return CANDIDATE_SPACE.get(candidate) or candidate.removeprefix("single_")


def _columns(layout: Mapping[str, int], modalities: Sequence[str]) -> np.ndarray:
    starts, pos = {}, 0
    for m, d in layout.items():
        starts[m] = (pos, pos + int(d))
        pos += int(d)
    return np.concatenate([np.arange(*starts[m]) for m in modalities]) if modalities else np.zeros(0, np.int64)


def lift_fit(fit: tuple, space_X: np.ndarray, layout_X: np.ndarray, layout: Mapping[str, int],
             modalities: Sequence[str], atol: float = 1e-5) -> tuple | None:
    """``fit`` = ``(result, Z, (mean, components))`` of a space made of the layout blocks ``modalities`` (in layout
    order), lifted to the full fused layout; None when it does not apply (other rows, other values, non-zero
    columns outside those blocks, unknown modalities, or no PCA was fitted)."""
    res, Z, (mean, comps) = fit
    if comps is None or mean is None or any(m not in layout for m in modalities):
        return None
    order = [m for m in layout if m in set(modalities)]
    cols = _columns(layout, order)
    D = int(sum(int(d) for d in layout.values()))
    if layout_X.shape != (space_X.shape[0], D) or cols.size != space_X.shape[1] or comps.shape[1] != cols.size:
        return None
    other = np.ones(D, dtype=bool)
    other[cols] = False
    if np.any(layout_X[:, other] != 0) or not np.allclose(layout_X[:, cols], space_X, atol=atol):
        return None
    full_mean = np.zeros(D, dtype=np.float32)
    full_mean[cols] = mean
    full_comps = np.zeros((comps.shape[0], D), dtype=np.float32)
    full_comps[:, cols] = comps
    return res, Z, (full_mean, full_comps)


def reuse_compared_fit(candidate: str, ids: Sequence[str], layout_X: np.ndarray, layout: Mapping[str, int] | None,
                       compared: Mapping[str, tuple[Sequence[str], np.ndarray]], fits: Mapping[str, tuple]) -> tuple | None:
    """The clustering of the comparison space behind ``candidate``, valid for the chosen fusion's layout matrix
    (``ids`` x layout), or None when the chosen fusion must be clustered itself."""
    space = space_of(candidate)
    if layout is None or space not in fits or space not in compared or list(compared[space][0]) != list(ids):
        return None
    if space in ("fused:early", "fused:early_evidence"):
        blocks = list(layout)  # the full layout matrix (modalities the corpus lacks are zero columns of it)
    elif space == "fused:text+image":
        blocks = ["text", "image"]
    else:
        blocks = [space]
    return lift_fit(fits[space], compared[space][1], layout_X, layout, blocks)
