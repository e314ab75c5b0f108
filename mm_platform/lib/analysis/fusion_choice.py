"""The fusion chosen by evidence: candidate weight sets, the state file the batch job reads, the fused layout.

A full re-cluster scores every candidate (uniform weights, evidence weights, each single modality, text+image)
with :func:`mm_platform.lib.analysis.modality_weights.select_partition` and stores the winner's weights in
``lake/_models/fusion_weights.json``. Every later batch's ``fused_vectors`` fuses with those weights (re-fusing is
cheap: the per-modality vectors are cached), records them on every row, and keeps the fused layout fixed
(weight-0 modalities stay as zero columns: :func:`mm_platform.lib.vectors.fusion.early_fusion` with ``keep_layout``), so
the cluster model, Qdrant's ``fused`` vector and search never see the dimension change.

``MM_FUSION_SELECT`` says how the choice is made: ``auto`` (default: NMI on the labels when at least 20 records
are labelled, else the unsupervised criterion), ``unsupervised`` (never labels) or ``fixed`` (always
``MM_FUSION_WEIGHTS``; the evidence is still computed and recorded).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mm_platform.lib.vectors.fusion import early_fusion, modality_order
from mm_platform.lib.analysis.modality_weights import ModalityWeights

WEIGHTS_FILE = "_models/fusion_weights.json"
LAYOUT_FILE = "_models/fused_layout.json"
SELECT_MODES = ("auto", "unsupervised", "fixed")


@dataclass
class FusionChoice:
    """What the batch job fuses with, and why."""

    weights: dict[str, float]
    candidate: str  # early_uniform | early_evidence | single_<m> | text+image
    run_id: str
    reason: str
    zeroed: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source(self) -> str:
        return f"recluster:{self.run_id}:{self.candidate}"


def _write_json(path: Path, obj: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(json.dumps(obj, sort_keys=True, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_choice(lake_root: Path, choice: FusionChoice) -> Path:
    path = Path(lake_root) / WEIGHTS_FILE
    _write_json(path, choice.as_dict())
    return path


def load_choice(lake_root: Path) -> FusionChoice | None:
    """The stored choice, or None when there is none or it cannot be read (then configured weights apply)."""
    path = Path(lake_root) / WEIGHTS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        weights = {str(m): float(w) for m, w in raw["weights"].items()}
        if any(not np.isfinite(w) or w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            return None
        return FusionChoice(weights, str(raw["candidate"]), str(raw["run_id"]), str(raw.get("reason", "")),
                            list(raw.get("zeroed", [])), dict(raw.get("scores", {})))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_layout(lake_root: Path, modalities: Sequence[str], dims: Sequence[int]) -> None:
    """The fused layout (modality order and block sizes) the batch job writes, for the re-cluster to re-fuse."""
    path = Path(lake_root) / LAYOUT_FILE
    new = {"modalities": list(modalities), "dims": [int(d) for d in dims]}
    try:
        if json.loads(path.read_text(encoding="utf-8")) == new:
            return
    except (OSError, ValueError):
        pass
    _write_json(path, new)


def load_layout(lake_root: Path) -> dict[str, int] | None:
    try:
        raw = json.loads((Path(lake_root) / LAYOUT_FILE).read_text(encoding="utf-8"))
        return {str(m): int(d) for m, d in zip(raw["modalities"], raw["dims"], strict=True)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def candidate_weights(names: Sequence[str], evidence: ModalityWeights,
                      base: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Weight sets of the candidates: ``early_uniform`` (the configured weights), ``early_evidence``, each
    ``single_<m>``, and ``text+image`` when both exist beside another modality."""
    names = list(modality_order(names))
    out = {"early_uniform": {m: float(base.get(m, 1.0)) for m in names},
           "early_evidence": {m: float(evidence.weights.get(m, 1.0)) for m in names}}
    for m in names:
        out[f"single_{m}"] = {x: (1.0 if x == m else 0.0) for x in names}
    if {"text", "image"} <= set(names) and len(names) > 2:
        out["text+image"] = {x: (1.0 if x in ("text", "image") else 0.0) for x in names}
    return out


def layout_matrix(blocks: Mapping[str, np.ndarray], present: Mapping[str, np.ndarray], layout: Mapping[str, int],
                  weights: Mapping[str, float]) -> np.ndarray:
    """Early fusion in the fixed fused layout (``layout``: modality -> dim, in column order): modalities the
    corpus lacks are zero blocks, weight-0 modalities keep their columns, rows without a positively weighted
    modality fall back to uniform weights over what they have."""
    n = next(iter(blocks.values())).shape[0] if blocks else 0
    full_b, full_p, w = {}, {}, {}
    for m, d in layout.items():
        if m in blocks and blocks[m].shape[1] == d:
            full_b[m], full_p[m] = blocks[m], present[m]
        else:
            full_b[m], full_p[m] = np.zeros((n, d), np.float32), np.zeros(n, bool)
        w[m] = float(weights.get(m, 0.0))
    if not any(v > 0 for v in w.values()):
        w = {m: 1.0 for m in w}
    return early_fusion(full_b, full_p, w, keep_layout=True).vectors


def zeroed(weights: Mapping[str, float]) -> list[str]:
    return [m for m in modality_order(list(weights)) if weights[m] == 0]
