"""The current corpus as aligned matrices, and the fusion strategies that turn it into one matrix.

:func:`load_corpus` reads the current version of every record's per-modality embeddings from the lake and
lines them up by record (zeros + a presence mask where a record lacks a modality). :func:`fusion_matrix`
then makes the clustering input by one of the strategies:

``early``
    Weighted concatenation of the L2-normalised blocks (the ``fused_vectors`` layout; see
    :mod:`mm_platform.lib.vectors.fusion`). Clustering reduces it with PCA fitted on a sample
    (``MM_CLUSTER_REDUCE_DIM``), which is the "early fusion + PCA to a target dimension" variant.
``shared_mean``
    Every present modality projected into the shared space by the alignment heads
    (:mod:`mm_platform.lib.vectors.shared_space`), weighted mean over the present modalities, L2-normalised. Needs a
    trained alignment model.

Late fusion combines per-modality *decisions*, so it exists for classification only
(:mod:`mm_platform.lib.analysis.classify`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from mm_platform.lib.vectors.fusion import align_blocks, early_fusion, l2_normalize, parse_weights
from mm_platform.lib.storage.lake import Lake
from mm_platform.lib.arrays import embedding_matrix

#: modality -> embeddings table, in fusion column order
EMBEDDING_TABLES: dict[str, str] = {
    "text": "text_embeddings", "image": "image_embeddings", "audio": "audio_embeddings",
    "tabular": "tabular_embeddings",
}
STRATEGIES: tuple[str, ...] = ("early", "shared_mean")


@dataclass
class Corpus:
    """Current records with their per-modality vectors aligned by row."""

    record_ids: list[str]
    batch_ids: list[str]
    labels: list[str | None]
    blocks: dict[str, np.ndarray]  # modality -> (n, d) float32, zeros where absent
    present: dict[str, np.ndarray]  # modality -> (n,) bool
    models: dict[str, str] = field(default_factory=dict)  # modality -> "model@version"
    spaces: dict[str, str] = field(default_factory=dict)  # modality -> embedding space

    def native_shared(self) -> tuple[str, ...]:
        """Modalities whose encoders already share one space (CLIP's text and image), else ()."""
        by_space: dict[str, list[str]] = {}
        for m, space in self.spaces.items():
            by_space.setdefault(space, []).append(m)
        groups = [ms for ms in by_space.values() if len(ms) > 1]
        return tuple(max(groups, key=len)) if groups else ()

    @property
    def n(self) -> int:
        return len(self.record_ids)

    def modalities(self) -> list[str]:
        """Modalities with at least one present row, in fusion order."""
        return [m for m in self.blocks if self.present[m].any()]

    def subset(self, rows: np.ndarray) -> Corpus:
        """The corpus restricted to ``rows`` (indices or a boolean mask)."""
        idx = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Corpus(
            [self.record_ids[i] for i in idx], [self.batch_ids[i] for i in idx], [self.labels[i] for i in idx],
            {m: b[idx] for m, b in self.blocks.items()}, {m: p[idx] for m, p in self.present.items()},
            dict(self.models), dict(self.spaces),
        )


def _matrix(df: pl.DataFrame) -> np.ndarray:
    return embedding_matrix(df)


def load_corpus(lake: Lake, modalities: Sequence[str] | None = None, batch_id: str | None = None) -> Corpus:
    """Every current record that has a fused vector (or, with ``batch_id``, that batch's records), with its
    label and per-modality embeddings. Modalities with no vectors at all are left out."""
    wanted = list(modalities or EMBEDDING_TABLES)
    if batch_id is None:
        fused = lake.read_current("fused_vectors").select("record_id", "batch_id")
        aligned = lake.read_current("aligned_records").select("record_id", "label")
        frames = {m: lake.read_current(EMBEDDING_TABLES[m]) for m in wanted}
    else:
        fused = lake.read_partition("fused_vectors", batch_id).select("record_id", "batch_id")
        aligned = lake.read_partition("aligned_records", batch_id).select("record_id", "label")
        frames = {m: lake.read_partition(EMBEDDING_TABLES[m], batch_id) for m in wanted}
    fused = fused.sort("record_id")
    ids = fused["record_id"].to_list()
    label_of = dict(aligned.iter_rows())
    per_mod = {m: (df["record_id"].to_list(), _matrix(df)) for m, df in frames.items() if df.height}
    blocks, present = align_blocks(ids, per_mod) if per_mod else ({}, {})
    models = {m: f"{df['model'][0]}@{df['model_version'][0]}" for m, df in frames.items() if df.height}
    spaces = {m: str(df["space"][0]) for m, df in frames.items() if df.height}
    return Corpus(ids, fused["batch_id"].to_list(), [label_of.get(r) for r in ids], blocks, present, models,
                  spaces)


def early_matrix(corpus: Corpus, weights: str | Mapping[str, float] | None = None,
                 modalities: Sequence[str] | None = None, keep_layout: bool = False) -> np.ndarray:
    """Early fusion of ``modalities`` (default: all present) with the given weights."""
    mods = [m for m in (modalities or corpus.modalities()) if m in corpus.blocks]
    if not mods:
        raise ValueError("no modality to fuse")
    return early_fusion({m: corpus.blocks[m] for m in mods}, {m: corpus.present[m] for m in mods},
                        parse_weights(weights), keep_layout=keep_layout).vectors


def shared_mean_matrix(corpus: Corpus, model, weights: str | Mapping[str, float] | None = None,
                       modalities: Sequence[str] | None = None) -> np.ndarray:
    """Weighted mean of the present modalities' shared-space projections, L2-normalised (zero rows when a
    record has none of the projected modalities)."""
    w = parse_weights(weights)
    mods = [m for m in (modalities or corpus.modalities()) if m in model.modalities and w.get(m, 1.0) > 0]
    if not mods:
        raise ValueError(f"the alignment model projects none of {modalities or corpus.modalities()}")
    total = np.zeros((corpus.n, model.shared_dim), dtype=np.float64)
    for m in mods:
        rows = corpus.present[m]
        if rows.any():
            total[rows] += w.get(m, 1.0) * model.project(m, corpus.blocks[m][rows])
    return l2_normalize(total)


def fusion_matrix(corpus: Corpus, strategy: str, *, weights: str | Mapping[str, float] | None = None,
                  alignment=None, modalities: Sequence[str] | None = None) -> np.ndarray:
    """The clustering input of ``strategy`` (see the module docstring)."""
    if strategy == "early":
        return early_matrix(corpus, weights, modalities)
    if strategy == "shared_mean":
        if alignment is None:
            raise ValueError("the shared_mean strategy needs a trained alignment model (asset shared_space_model)")
        return shared_mean_matrix(corpus, alignment, weights, modalities)
    raise ValueError(f"unknown fusion strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")


# -- the alignment model's home in the lake ------------------------------------------------------------------

ALIGNMENT_DIR = "_models/alignment"


def alignment_dir(lake: Lake) -> Path:
    return lake.root / ALIGNMENT_DIR


def load_alignment(lake: Lake, corpus_models: Mapping[str, str] | None = None):
    """The current alignment model (:class:`mm_platform.lib.vectors.shared_space.AlignmentModel`), or None when there is
    none — or when ``corpus_models`` is given and the heads were trained on vectors of other encoders (a
    changed model profile makes them stale until the next training)."""
    from mm_platform.lib.vectors.shared_space import AlignmentModel

    pointer = alignment_dir(lake) / "current.json"
    if not pointer.exists():
        return None
    current = json.loads(pointer.read_text())
    model = AlignmentModel.load(alignment_dir(lake) / current["file"])
    if corpus_models is not None:
        trained_on = json.loads(model.extra.get("encoder_models", "{}"))
        if any(trained_on.get(m) != v for m, v in corpus_models.items() if m in model.modalities):
            return None
    return model


def save_alignment(lake: Lake, model, corpus: Corpus, metrics: Mapping[str, object]) -> Path:
    """Write ``model`` as ``alignment-<version>.safetensors`` (with the encoder models it was trained on) and
    make it current (``current.json``, replaced atomically)."""
    path = model.save(alignment_dir(lake) / f"alignment-{model.version}.safetensors",
                      extra={"encoder_models": json.dumps(corpus.models, sort_keys=True)})
    pointer = alignment_dir(lake) / "current.json"
    tmp = pointer.with_name(f".current.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"file": path.name, "version": model.version, "metrics": metrics},
                              default=str, sort_keys=True))
    os.replace(tmp, pointer)
    return path
