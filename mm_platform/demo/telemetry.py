"""Demo telemetry stream: per-entity readings around the records' timestamps, with gap records left
unmatched and a few unknown entities."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np

from mm_platform.demo.categories import (
    _STREAM_GAP_CLEAR_S,
    _STREAM_GAP_ISOLATION_S,
    _STREAM_STEP_S,
    _STREAM_WINDOW_S,
    CATEGORIES,
    P_STREAM_GAP,
    P_SWAP,
    STREAM_COLUMNS,
    Category,
)

# telemetry profile -> (temperature_c, vibration, power_w) levels of variant 0
_TELEMETRY = {"cool": (21.0, 0.15, 12.0), "warm": (34.0, 0.35, 45.0), "busy": (27.0, 1.1, 90.0)}
# variant 1: + this many degrees, x these factors for vibration and power
_TELEMETRY_VARIANT = (1.5, 1.2, 1.15)


def entity_name(k: int) -> str:
    """Id of the ``k``-th demo entity (``dev-000``, ``dev-001``, ...)."""
    return f"dev-{k:03d}"


def entity_category(k: int) -> Category:
    """The category entity ``k`` belongs to (the same in every batch)."""
    return CATEGORIES[k % len(CATEGORIES)]


def pick_entity(rng: np.random.Generator, ci: int, n_entities: int) -> int:
    """The entity of a record of category ``CATEGORIES[ci]``: one of that category's entities or, with
    probability :data:`P_SWAP` (or when it has none), one of the other entities."""
    own = [k for k in range(n_entities) if entity_category(k) is CATEGORIES[ci]]
    others = [k for k in range(n_entities) if k not in own]
    if not own or (others and rng.random() < P_SWAP):
        pool = others or own
    else:
        pool = own
    return pool[int(rng.integers(len(pool)))]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _telemetry_values(rng: np.random.Generator, cat: Category, times: np.ndarray) -> np.ndarray:
    """(n, 3) readings of an entity of ``cat`` at ``times`` (epoch s): level + entity bias + drift + noise."""
    temp, vib, power = _TELEMETRY[cat.telemetry]
    if cat.telemetry_variant:
        temp += _TELEMETRY_VARIANT[0]
        vib *= _TELEMETRY_VARIANT[1]
        power *= _TELEMETRY_VARIANT[2]
    n = len(times)
    drift = np.sin(2 * np.pi * times / rng.uniform(3 * 3600.0, 9 * 3600.0) + rng.uniform(0, 2 * np.pi))
    out = np.empty((n, 3))
    out[:, 0] = temp + rng.normal(0.0, 1.0) + 1.2 * drift + rng.normal(0.0, 1.5, n)
    out[:, 1] = vib * rng.lognormal(0.0, 0.15) * rng.lognormal(0.0, 0.3, n)
    out[:, 2] = np.maximum(power * rng.lognormal(0.0, 0.1) * (1.0 + 0.1 * drift + rng.normal(0.0, 0.12, n)), 0.0)
    return out


def _telemetry_csv(
    rng: np.random.Generator, n_entities: int, record_times: list[tuple[int, float, bool]]
) -> bytes:
    """The telemetry CSV for records ``(entity, epoch s, is_gap)``: readings around every non-gap
    record, none within :data:`_STREAM_GAP_CLEAR_S` of a gap record, plus a few unknown entities;
    rows shuffled."""
    windows: dict[int, list[tuple[float, float]]] = {}
    gaps: dict[int, list[float]] = {}
    for ent, ts, gap in record_times:
        if gap:
            gaps.setdefault(ent, []).append(ts)
        else:
            lo, hi = rng.uniform(*_STREAM_WINDOW_S, size=2)
            windows.setdefault(ent, []).append((ts - lo, ts + hi))
    rows: list[tuple[float, str, np.ndarray]] = []
    for ent in sorted(windows):
        times: list[float] = []
        for lo, hi in _merge(windows[ent]):
            steps = rng.uniform(*_STREAM_STEP_S, size=int((hi - lo) / _STREAM_STEP_S[0]) + 2)
            t = lo + rng.uniform(0.0, _STREAM_STEP_S[1]) * 0.5 + np.concatenate(([0.0], np.cumsum(steps)))
            times.extend(t[t <= hi].tolist())
        arr = np.round(np.asarray(times))
        for g in gaps.get(ent, []):
            arr = arr[np.abs(arr - g) > _STREAM_GAP_CLEAR_S]
        vals = _telemetry_values(rng, entity_category(ent), arr)
        rows.extend((float(t), entity_name(ent), v) for t, v in zip(arr, vals, strict=True))
    # a few readings from entities that no record names
    all_ts = [ts for _, ts, _ in record_times]
    n_unknown = max(3, len(rows) // 100)
    for j in range(n_unknown):
        ent = n_entities + 100 + j % 3
        t = np.round(rng.uniform(min(all_ts) - 600.0, max(all_ts) + 600.0, size=1))
        rows.append((float(t[0]), entity_name(ent), _telemetry_values(rng, entity_category(ent), t)[0]))
    lines = [",".join(STREAM_COLUMNS)]
    for i in rng.permutation(len(rows)):
        t, ent_id, v = rows[int(i)]
        lines.append(f"{_iso(t)},{ent_id},{v[0]:.2f},{v[1]:.3f},{v[2]:.1f}")
    return ("\n".join(lines) + "\n").encode("ascii")


def _gap_records(rng: np.random.Generator, stream_records: list[tuple[int, float]]) -> set[int]:
    """Indices of the ~:data:`P_STREAM_GAP` records that get no reading near their timestamp: only
    records with no other record of their entity within ``_STREAM_GAP_ISOLATION_S``, so that clearing
    the readings around a gap record never takes away the readings next to another record."""
    per_entity: dict[int, list[tuple[float, int]]] = {}
    for j, (e, ts) in enumerate(stream_records):
        per_entity.setdefault(e, []).append((ts, j))
    isolated: list[int] = []
    for recs_e in per_entity.values():
        recs_e.sort()
        for m, (ts, j) in enumerate(recs_e):
            before = ts - recs_e[m - 1][0] if m > 0 else math.inf
            after = recs_e[m + 1][0] - ts if m + 1 < len(recs_e) else math.inf
            if min(before, after) >= _STREAM_GAP_ISOLATION_S:
                isolated.append(j)
    isolated.sort()
    n_gap = min(int(round(P_STREAM_GAP * len(stream_records))), len(isolated))
    return {isolated[int(j)] for j in rng.choice(len(isolated), size=n_gap, replace=False)}


def telemetry_stream(rng: np.random.Generator, n_entities: int, stream_records: list[tuple[int, float]]) -> bytes:
    """The telemetry CSV for the kept records ``(entity, epoch s)``, ~:data:`P_STREAM_GAP` of them
    left without a reading near their timestamp."""
    gap_idx = _gap_records(rng, stream_records)
    return _telemetry_csv(rng, n_entities, [(e, ts, j in gap_idx) for j, (e, ts) in enumerate(stream_records)])
