"""Search the Qdrant collection with a text, image, audio or fields query.

A query is embedded by the encoder of its own modality (for fields: the fitted tabular encoder the
collection's vectors were made with) and matched against one named vector:
- the same modality (text→text, image→image, audio→audio, fields→tabular) always works;
- another modality (text→image, audio→text, fields→image, ...) goes through the shared space learned by
  the alignment heads (:class:`SharedSpace`, the ``shared_embeddings`` table): the query is projected by the
  head of its modality and compared with the target modality's projections; without a trained alignment
  model, only natively shared spaces work (CLIP's text–image), and otherwise the search says why instead of
  returning meaningless scores;
- ``fused``: the query fills its own block of the fused layout (and, in a shared space, every block of a
  modality it shares the space with), so results rank by the weighted similarity of what records have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mm_platform.lib.encoders.base import MODALITIES as ENCODER_MODALITIES
from mm_platform.lib.vectors.fusion import early_fusion, parse_weights
from mm_platform.lib.storage.qdrant import QdrantStore, SearchHit
from mm_platform.lib.features.tabular import TabularEncoderState, encode_tabular, type_rows
from mm_platform.lib.arrays import embedding_matrix


if TYPE_CHECKING:  # torch-free at run time: a cold text search never imports the encoders' registry
    from mm_platform.lib.encoders.registry import EncoderSet


class SearchError(ValueError):
    """The search cannot be answered as asked (and the message says why)."""


@dataclass
class SharedSpace:
    """The current alignment heads and every current record's projections (``shared_embeddings``)."""

    model: object  # mm_platform.lib.vectors.shared_space.AlignmentModel
    record_ids: dict[str, list[str]]  # modality -> record ids
    vectors: dict[str, np.ndarray]  # modality -> (n, shared_dim) unit rows

    @classmethod
    def from_lake(cls, lake) -> SharedSpace | None:
        """The shared space of ``lake`` (a :class:`mm_platform.lib.storage.lake.Lake`), None without a trained model."""
        from mm_platform.lib.vectors.corpus import load_alignment

        model = load_alignment(lake)
        if model is None:
            return None
        df = lake.read_table("shared_embeddings")
        df = df.filter(df["head_version"] == model.version)
        ids: dict[str, list[str]] = {}
        vecs: dict[str, np.ndarray] = {}
        for (modality,), g in df.group_by("modality"):
            ids[modality] = g["record_id"].to_list()
            vecs[modality] = embedding_matrix(g)
        return cls(model, ids, vecs)

    def covers(self, query_modality: str, target: str) -> bool:
        return query_modality in self.model.modalities and target in self.vectors

    def search(self, query: Query, target: str, k: int) -> list[tuple[str, float]]:
        trained_on = json.loads(self.model.extra.get("encoder_models", "{}")).get(query.modality)
        if trained_on and trained_on != query.model:
            raise SearchError(
                f"the alignment heads were trained on {query.modality} vectors of {trained_on}; the query was "
                f"embedded with {query.model}: retrain them (`mm-platform recluster`) or switch the profile back"
            )
        q = self.model.project(query.modality, query.vector[None, :])[0]
        scores = self.vectors[target] @ q
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.record_ids[target][i], float(scores[i])) for i in top]


@dataclass(frozen=True)
class Query:
    modality: str  # "text" | "image" | "audio" | "tabular"
    vector: np.ndarray
    model: str


def _fields_query(fields: Mapping[str, object] | str, tabular_state: TabularEncoderState | None) -> Query:
    if tabular_state is None:
        raise SearchError("no tabular encoder has been fitted yet: ingest records with fields first")
    if isinstance(fields, str):
        try:
            fields = json.loads(fields)
        except ValueError as exc:
            raise SearchError(f"--fields must be a JSON object: {exc}") from None
    if not isinstance(fields, Mapping) or not fields:
        raise SearchError("--fields must be a non-empty JSON object, e.g. '{\"price\": 25, \"material\": \"steel\"}'")
    typed = type_rows(tabular_state, [dict(fields)])
    if typed.problems:
        raise SearchError("; ".join(p.detail for p in typed.problems))
    vec = encode_tabular(tabular_state, typed)[0]
    return Query("tabular", vec, f"mm_platform/tabular-standardise-onehot@{tabular_state.version}")


def embed_query(encoders: EncoderSet, text: str | None = None, image: str | Path | None = None,
                audio: str | Path | None = None, fields: Mapping[str, object] | str | None = None,
                tabular_state: TabularEncoderState | None = None) -> Query:
    given = [q for q in (text, image, audio, fields) if q is not None]
    if len(given) != 1:
        raise SearchError("give exactly one query: a text, an image, an audio clip or fields")
    if fields is not None:
        return _fields_query(fields, tabular_state)
    if audio is not None:
        path = Path(audio)
        if not path.is_file():
            raise SearchError(f"audio {path} does not exist")
        enc = encoders.audio()
        try:
            vec = enc.encode_paths([path])[0]
        except (ValueError, RuntimeError) as exc:
            raise SearchError(f"cannot use {path} as a query: {exc}") from None
        return Query("audio", vec, f"{enc.info.model_id}@{enc.info.model_version}")
    if text is not None:
        if not text.strip():
            raise SearchError("the text query is empty")
        enc = encoders.text()
        vec = enc.encode([text])[0]
        return Query("text", vec, f"{enc.info.model_id}@{enc.info.model_version}")
    path = Path(image)  # type: ignore[arg-type]
    if not path.is_file():
        raise SearchError(f"image {path} does not exist")
    enc = encoders.image()
    vec = enc.encode_paths([path])[0]
    return Query("image", vec, f"{enc.info.model_id}@{enc.info.model_version}")


def _fusion_layout(store: QdrantStore) -> tuple[list[str], dict[str, float]]:
    """Modalities (in fused column order) and weights of the stored fused vectors, from a point's payload."""
    for point in store.scroll_all():
        spec = (point.payload or {}).get("fusion")
        if spec:
            body = spec.split(":", 1)[1]
            order = [part.split("=", 1)[0].strip() for part in body.split(",") if part.strip()]
            weights = parse_weights(body)
            return order, {m: weights[m] for m in order}
    raise SearchError("the collection holds no fused vectors yet: run `mm-platform ingest` first")


def stored_model(store: QdrantStore, modality: str) -> str | None:
    """The model that made the collection's ``modality`` vectors (from the first point that has one)."""
    for point in store.scroll_all():
        name = ((point.payload or {}).get("models") or {}).get(modality)
        if name:
            return name
    return None


def _shares_space(encoders: EncoderSet, a: str, b: str) -> bool:
    """Whether vectors of modalities ``a`` and ``b`` are comparable (tabular vectors only with each other)."""
    return a == b or (a in ENCODER_MODALITIES and b in ENCODER_MODALITIES and encoders.shares_space(a, b))


def fused_query(query: Query, encoders: EncoderSet, dims: Mapping[str, int], order: list[str],
                weights: Mapping[str, float]) -> np.ndarray:
    """The fused-layout vector of a single-modality query."""
    blocks, present = {}, {}
    for m in order:
        fill = _shares_space(encoders, query.modality, m)
        if fill and dims.get(m) != query.vector.shape[0]:
            fill = False
        blocks[m] = (query.vector if fill else np.zeros(dims[m], dtype=np.float32))[None, :]
        present[m] = np.array([fill])
    return early_fusion(blocks, present, weights, keep_layout=True).vectors[0]


def search(store: QdrantStore, encoders: EncoderSet, *, text: str | None = None,
           image: str | Path | None = None, audio: str | Path | None = None,
           fields: Mapping[str, object] | str | None = None, tabular_state: TabularEncoderState | None = None,
           modality: str | None = None, k: int = 10, shared: SharedSpace | None = None) -> list[SearchHit]:
    """Top-``k`` records for one query (text, image, audio clip or fields) against the ``modality`` vectors
    (default: the query's own). ``modality="shared"`` (or any other modality without a native shared space)
    searches through ``shared``: ``shared`` compares with every record's mean projection."""
    if not store.exists() or store.count() == 0:
        raise SearchError(f"collection {store.collection!r} is empty: run `mm-platform ingest` first")
    query = embed_query(encoders, text=text, image=image, audio=audio, fields=fields, tabular_state=tabular_state)
    target = modality or query.modality
    if target == "shared":
        target = "mean"
    dims = store.vector_dims()
    if target != "mean" and target not in dims:
        raise SearchError(f"no {target!r} vectors in collection {store.collection!r} (has {sorted(dims)})")
    stored = stored_model(store, query.modality)
    if stored and stored != query.model:
        raise SearchError(
            f"the collection's {query.modality} vectors were made by {stored}, the current "
            f"profile ({encoders.profile}) embeds queries with {query.model}: set MM_MODEL_PROFILE to match, "
            "or re-ingest"
        )
    if target == "fused":
        order, weights = _fusion_layout(store)
        if query.modality not in order:
            raise SearchError(f"the fused vectors have no {query.modality} block ({order})")
        vec = fused_query(query, encoders, dims, order, weights)
    elif _shares_space(encoders, query.modality, target):
        vec = query.vector
    elif shared is not None and shared.covers(query.modality, target):
        ranked = shared.search(query, target, k)
        found = store.retrieve([r for r, _ in ranked])
        return [SearchHit(r, score, f"shared:{target}", dict(found[r].payload) if r in found else {"record_id": r})
                for r, score in ranked]
    else:
        raise SearchError(
            f"{query.modality}→{target} search needs a shared space: the '{encoders.profile}' profile has no "
            f"native one and no alignment model is trained yet (`mm-platform recluster` trains it; or use "
            f"--modality {query.modality} or fused)"
        )
    return store.search(vec, using=target, k=k)
