"""Early fusion of per-modality embeddings into one vector per record.

Each modality block is L2-normalised and scaled by ``sqrt(w_m / W_row)``, where ``W_row`` is the sum of the
weights of the modalities *present in that row*. Absent blocks are zeros. Hence:

* every fused row has unit norm (as long as it has at least one present modality);
* for two rows ``i`` and ``j`` the dot product of their fused vectors is
  ``sum_{m in shared} w_m * cos_m(i, j) / sqrt(W_i * W_j)``. When both rows have the same modalities
  (``W_i == W_j == W_shared``) this is exactly the weighted mean of the per-modality cosines; when they
  differ it is that weighted mean shrunk by ``W_shared / sqrt(W_i * W_j) <= 1`` -- a penalty for the
  modalities one record has and the other lacks.

Modalities with weight 0 are dropped entirely. Column order is deterministic: :data:`MODALITIES` order,
then any other modality name alphabetically.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mm_platform.lib.arrays import l2_normalize, presence_mask, zero_nonfinite_rows

MODALITIES: tuple[str, ...] = ("text", "image", "audio", "tabular")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")




def modality_order(names: Sequence[str] | set[str] | frozenset[str]) -> tuple[str, ...]:
    """Deterministic order of modality names: :data:`MODALITIES` order first, then the rest sorted."""
    unique = set(names)
    known = [m for m in MODALITIES if m in unique]
    return tuple(known + sorted(unique - set(MODALITIES)))


def parse_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """Parse modality weights.

    ``None`` or an empty/blank string gives weight 1.0 for every modality of :data:`MODALITIES`.
    A string looks like ``"text=1,image=0.5"`` (spaces allowed, ``:`` accepted instead of ``=``); a
    mapping is validated the same way. Modalities not mentioned get 1.0; extra modality names are kept.

    Raises:
        ValueError: on malformed entries, duplicate names, non-finite or negative weights.
    """
    weights: dict[str, float] = {m: 1.0 for m in MODALITIES}
    if spec is None:
        return weights
    items: list[tuple[str, object]]
    if isinstance(spec, str):
        items = []
        if not spec.strip():
            return weights
        seen: set[str] = set()
        for part in spec.split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty entry in fusion weights {spec!r}")
            m = re.fullmatch(r"\s*([^=:\s]+)\s*[=:]\s*(\S+)\s*", part)
            if not m:
                raise ValueError(f"bad fusion weight entry {part!r} (expected name=value)")
            name = m.group(1).strip().lower()
            if name in seen:
                raise ValueError(f"modality {name!r} given twice in fusion weights {spec!r}")
            seen.add(name)
            items.append((name, m.group(2)))
    elif isinstance(spec, Mapping):
        items = [(str(k).strip().lower(), v) for k, v in spec.items()]
    else:
        # ValueError (not TypeError) by contract: callers catch one error type for any bad setting
        raise ValueError(  # noqa: TRY004
            f"fusion weights must be a string, a mapping or None, not {type(spec).__name__}"
        )
    for name, raw in items:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad modality name {name!r} in fusion weights")
        if isinstance(raw, bool):
            raise ValueError(f"weight for {name!r} must be a number, got {raw!r}")  # noqa: TRY004
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"weight for {name!r} is not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"weight for {name!r} must be finite, got {raw!r}")
        if value < 0:
            raise ValueError(f"weight for {name!r} must be >= 0, got {raw!r}")
        weights[name] = value
    return weights


def _fmt_weight(w: float) -> str:
    return f"{w:g}"


@dataclass(frozen=True, eq=False)
class FusionResult:
    """Fused vectors and how they were made."""

    vectors: (
        np.ndarray
    )  #: (n, sum(dims)) float32, unit-norm rows (zero rows only if no kept modality present)
    mask: np.ndarray  #: (n, len(modalities)) bool: which modalities contributed to each row
    modalities: tuple[str, ...]
    dims: tuple[int, ...]
    weights: dict[str, float] = field(default_factory=dict)  #: weights of the kept modalities
    #: (n,) bool: rows that had no positively weighted modality and were fused uniformly over what they have
    #: (``keep_layout`` only); ``None`` otherwise
    fallback: np.ndarray | None = None

    def row_weights(self, i: int) -> dict[str, float]:
        """The weights that made row ``i``: the weights of its contributing modalities (1 each for a fallback row)."""
        fb = self.fallback is not None and bool(self.fallback[i])
        return {m: (1.0 if fb else self.weights[m]) for m in self.present_modalities(i)}

    @property
    def spec(self) -> str:
        """Fusion description recorded with every fused row, e.g. ``"early:text=1,image=0.5"``."""
        return "early:" + ",".join(f"{m}={_fmt_weight(self.weights[m])}" for m in self.modalities)

    @property
    def dim(self) -> int:
        """Total fused dimension."""
        return int(sum(self.dims))

    @property
    def has_any(self) -> np.ndarray:
        """(n,) bool: rows with at least one contributing modality (the others are zero vectors)."""
        return self.mask.any(axis=1)

    def present_modalities(self, i: int) -> list[str]:
        """Names of the modalities that contributed to row ``i``."""
        return [m for m, p in zip(self.modalities, self.mask[i], strict=True) if p]

    def slices(self) -> dict[str, slice]:
        """Column slice of each modality block inside :attr:`vectors`."""
        out: dict[str, slice] = {}
        start = 0
        for m, d in zip(self.modalities, self.dims, strict=True):
            out[m] = slice(start, start + d)
            start += d
        return out


def align_blocks(
    record_ids: Sequence[str],
    per_modality: Mapping[str, tuple[Sequence[str], np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Align per-modality embedding matrices to ``record_ids`` order.

    Args:
        record_ids: the output row order.
        per_modality: modality -> (ids, matrix) with ``len(ids) == matrix.shape[0]``. Ids not in
            ``record_ids`` are ignored.

    Returns:
        ``(blocks, present)``: ``blocks[m]`` is ``(len(record_ids), d_m)`` float32 with zeros where the
        record has no such embedding, ``present[m]`` is the matching ``(n,)`` bool mask.

    Raises:
        ValueError: on a non-2-D matrix, a length mismatch, or an id repeated within one modality.
    """
    index: dict[str, list[int]] = {}
    for pos, rid in enumerate(record_ids):
        index.setdefault(rid, []).append(pos)
    n = len(record_ids)
    blocks: dict[str, np.ndarray] = {}
    present: dict[str, np.ndarray] = {}
    for modality, (ids, matrix) in per_modality.items():
        mat = np.asarray(matrix, dtype=np.float32)
        if mat.ndim == 1 and mat.size == 0:
            mat = mat.reshape(0, 0)
        if mat.ndim != 2:
            raise ValueError(f"{modality}: embeddings must be 2-D, got shape {mat.shape}")
        ids = list(ids)
        if len(ids) != mat.shape[0]:
            raise ValueError(f"{modality}: {len(ids)} ids for {mat.shape[0]} embedding rows")
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"{modality}: record ids repeated: {dup}")
        block = np.zeros((n, mat.shape[1]), dtype=np.float32)
        mask = np.zeros(n, dtype=bool)
        src: list[int] = []
        dst: list[int] = []
        for j, rid in enumerate(ids):
            for pos in index.get(rid, ()):
                src.append(j)
                dst.append(pos)
        if dst:
            block[dst] = mat[src]
            mask[dst] = True
        blocks[modality] = block
        present[modality] = mask
    return blocks, present


def early_fusion(
    blocks: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    keep_layout: bool = False,
) -> FusionResult:
    """Weighted early fusion (concatenation) of aligned modality blocks.

    Each present block is L2-normalised and scaled by ``sqrt(w_m / W_row)``, ``W_row`` being the sum of
    the weights of the modalities present in that row; absent blocks are zeros. A block row that is
    all-zero or non-finite counts as absent. Modalities missing from ``weights`` get 1.0; modalities with
    weight 0 are dropped. A row with no kept modality present comes out as a zero vector with an all-False
    mask row (callers filter those out beforehand; :attr:`FusionResult.has_any` finds them).

    With ``keep_layout`` (used with weights chosen from evidence, which may zero a modality), weight-0 modalities
    keep their (zero) columns, so the layout and dimension never depend on the weights, and a row that has none of
    the positively weighted modalities is fused with weight 1 for each modality it has (marked in
    :attr:`FusionResult.fallback`) instead of disappearing.

    Raises:
        ValueError: no block, a negative weight, blocks of different lengths, a missing ``present`` mask,
            or every modality weighted 0.
    """
    if not blocks:
        raise ValueError("early_fusion needs at least one modality block")
    order = modality_order(list(blocks))
    w_all: dict[str, float] = {}
    for m in order:
        w = float(weights.get(m, 1.0))
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight for {m!r} must be finite and >= 0, got {w!r}")
        w_all[m] = w
    kept = tuple(m for m in order if w_all[m] > 0 or keep_layout)
    if not any(w_all[m] > 0 for m in order):
        raise ValueError(f"all modality weights are 0: {w_all}")
    lengths = {m: np.asarray(blocks[m]).shape[0] for m in order}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"modality blocks have different row counts: {lengths}")
    n = next(iter(lengths.values()))

    normed: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for m in kept:
        block = np.asarray(blocks[m], dtype=np.float64)
        if block.ndim != 2:
            raise ValueError(f"{m}: block must be 2-D, got shape {block.shape}")
        mask = presence_mask(m, present, n)
        block, finite = zero_nonfinite_rows(block)
        unit = l2_normalize(block).astype(np.float64)
        usable = mask & finite & (np.linalg.norm(unit, axis=1) > 0.5)
        normed.append(np.where(usable[:, None], unit, 0.0))
        masks.append(usable)

    mask_mat = np.stack(masks, axis=1) if masks else np.zeros((n, 0), dtype=bool)
    w_vec = np.array([w_all[m] for m in kept], dtype=np.float64)
    row_total = mask_mat.astype(np.float64) @ w_vec  # (n,)
    fallback = None
    if keep_layout:
        fallback = (row_total <= 0) & mask_mat.any(axis=1)
        w_rows = np.where(fallback[:, None], 1.0, w_vec[None, :])  # (n, m)
        row_total = np.where(fallback, mask_mat.sum(axis=1), row_total)
        mask_mat = mask_mat & (w_rows > 0)  # a weight-0 block contributes nothing (zeros) outside fallback rows
    else:
        w_rows = np.broadcast_to(w_vec[None, :], mask_mat.shape)
    safe_total = np.where(row_total > 0, row_total, 1.0)
    parts = []
    for k, block in enumerate(normed):
        scale = np.where(mask_mat[:, k], np.sqrt(w_rows[:, k] / safe_total), 0.0)
        parts.append(block * scale[:, None])
    vectors = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)
    return FusionResult(
        vectors=vectors,
        mask=mask_mat,
        modalities=kept,
        dims=tuple(int(np.asarray(blocks[m]).shape[1]) for m in kept),
        weights={m: w_all[m] for m in kept},
        fallback=fallback,
    )


def fuse(
    record_ids: Sequence[str],
    per_modality: Mapping[str, tuple[Sequence[str], np.ndarray]],
    weights: str | Mapping[str, float] | None = None,
    keep_layout: bool = False,
) -> FusionResult:
    """Convenience: :func:`align_blocks` then :func:`early_fusion` with :func:`parse_weights` weights."""
    blocks, present = align_blocks(record_ids, per_modality)
    return early_fusion(blocks, present, parse_weights(weights), keep_layout=keep_layout)
