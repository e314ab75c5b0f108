"""The ``shared_embeddings`` rows: every current vector projected by the shared-space heads (moved from the
shared-space asset module)."""

from __future__ import annotations

import numpy as np
import polars as pl

from mm_platform.lib.vectors.shared_space import AlignmentModel
from mm_platform.lib.vectors.corpus import Corpus, shared_mean_matrix
from mm_platform.lib.arrays import matrix_series


def shared_frame(corpus: Corpus, model: AlignmentModel, weights: dict[str, float]) -> pl.DataFrame:
    """Every present (record, modality) projected into the shared space, plus each record's ``mean``."""
    frames = []
    for m in model.modalities:
        if m not in corpus.present or not corpus.present[m].any():
            continue
        rows = np.flatnonzero(corpus.present[m])
        frames.append(pl.DataFrame({
            "record_id": [corpus.record_ids[i] for i in rows], "batch_id": [corpus.batch_ids[i] for i in rows],
            "modality": m, "head_version": model.version,
            "embedding": matrix_series(model.project(m, corpus.blocks[m][rows])),
        }))
    mean = shared_mean_matrix(corpus, model, weights)
    keep = np.flatnonzero(np.linalg.norm(mean, axis=1) > 0)
    frames.append(pl.DataFrame({
        "record_id": [corpus.record_ids[i] for i in keep], "batch_id": [corpus.batch_ids[i] for i in keep],
        "modality": "mean", "head_version": model.version,
        "embedding": matrix_series(mean[keep]),
    }))
    return pl.concat(frames)
