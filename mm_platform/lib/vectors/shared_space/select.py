"""Heads or a linear baseline: the shared space in use is the one with the better validation recall.

:func:`fit_shared_space` trains the heads (:func:`train_alignment`), fits every linear baseline
(:mod:`.baseline`) on the same training rows, scores all of them with the same metric (instance recall@10,
:func:`retrieval_recall`) on the same validation rows, and returns the model to use:

* per kept pair ``a|b``: ``validation_recall_heads`` / ``validation_recall_baseline`` (mean recall@10 of
  ``a->b`` and ``b->a``) and ``use_heads`` (True only when the heads' recall is strictly higher);
* globally: a shared space is one map per modality, so one of them serves every pair. The heads are used only
  when their mean recall@10 over the ordered pairs is strictly higher than the best baseline's; otherwise the
  best baseline (``ridge`` or ``cca``) is returned. ``mapping_in_use`` and ``mapping_reason`` say which and why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mm_platform.lib.vectors.shared_space.baseline import BASELINES, fit_baseline
from mm_platform.lib.vectors.shared_space.heads import AlignmentConfig, AlignmentModel
from mm_platform.lib.vectors.shared_space.train import mean_metric, split_rows, train_alignment, validation_retrieval

#: The recall compared between heads and baselines.
GATE_METRIC = "recall@10"


def _pair_recall(retrieval: Mapping[str, Mapping[str, Any]], a: str, b: str) -> float | None:
    values = [retrieval[k].get(GATE_METRIC) for k in (f"{a}->{b}", f"{b}->{a}") if k in retrieval]
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _baselines(split, labels) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    out: dict[str, dict[str, Any]] = {}
    for method in BASELINES:
        t0 = time.perf_counter()
        try:
            model = fit_baseline(split, method)
        except np.linalg.LinAlgError as exc:  # a degenerate corpus: this baseline is just not available
            out[method] = {"available": False, "reason": f"fit failed: {exc}"}
            continue
        if model is None:
            out[method] = {"available": False, "reason": "not applicable with anchor modalities"}
            continue
        retrieval = validation_retrieval(model, split, labels)
        out[method] = {"available": True, "model": model, "retrieval": retrieval,
                       f"mean_{GATE_METRIC}": mean_metric(retrieval, GATE_METRIC),
                       "seconds": round(time.perf_counter() - t0, 3), "version": model.version}
    return out


def _decide(heads_mean: float | None, best: str | None, base_mean: float | None,
            n_val: int, trained: bool) -> tuple[bool, str]:
    if not trained:
        return True, "nothing to train (only anchor modalities): the anchors' own space is used"
    if n_val == 0 or heads_mean is None:
        return True, "no validation rows with two modalities: nothing to compare, the heads are kept"
    if best is None or base_mean is None:
        return True, "no linear baseline could be fitted: the heads are kept"
    if heads_mean > base_mean:
        return True, (f"heads' validation {GATE_METRIC} {heads_mean:.3f} > {best} baseline's {base_mean:.3f}")
    return False, (f"heads' validation {GATE_METRIC} {heads_mean:.3f} <= {best} baseline's {base_mean:.3f}: "
                   f"the {best} baseline is used (the heads do not generalise better on these records)")


def fit_shared_space(
    blocks: Mapping[str, np.ndarray],
    present: Mapping[str, np.ndarray],
    config: AlignmentConfig | None = None,
    labels: Sequence[str | None] | None = None,
) -> tuple[AlignmentModel, dict[str, Any]]:
    """Train the heads and the linear baselines on one split and return ``(model in use, metrics)``.

    ``metrics`` is :func:`train_alignment`'s (the heads': losses, curves, ``retrieval``) plus ``heads_version``,
    ``mapping_in_use`` (``"heads"``, ``"ridge"`` or ``"cca"``), ``mapping_reason``, ``use_heads``,
    ``gating`` (per kept pair ``"a|b"``: ``validation_recall_heads``, ``validation_recall_baseline``,
    ``use_heads``), ``baselines`` (per method: availability, ``retrieval``, ``mean_recall@10``, ``seconds``),
    ``baseline`` (the best method, or None), ``validation_recall_heads`` / ``validation_recall_baseline`` (the
    means over ordered pairs), ``retrieval_in_use`` and ``heads_seconds``; ``version`` is the returned model's,
    ``seconds`` the whole fit's.
    """
    t0 = time.perf_counter()
    config = config or AlignmentConfig()
    heads, metrics = train_alignment(blocks, present, config, labels)
    split = split_rows(blocks, present, config, labels)
    trained = bool(split.trained_pairs)
    baselines = _baselines(split, labels) if trained and split.val_idx.size else {}
    ranked = sorted((m for m in baselines if baselines[m]["available"]),
                    key=lambda m: -(baselines[m][f"mean_{GATE_METRIC}"] or -1.0))  # stable: ridge first on ties
    best = ranked[0] if ranked else None
    base_retrieval = baselines[best]["retrieval"] if best else {}
    heads_mean = mean_metric(metrics["retrieval"], GATE_METRIC)
    base_mean = baselines[best][f"mean_{GATE_METRIC}"] if best else None
    use_heads, reason = _decide(heads_mean, best, base_mean, int(split.val_idx.size), trained)
    gating = {}
    for a, b in split.pairs:
        h, bl = _pair_recall(metrics["retrieval"], a, b), _pair_recall(base_retrieval, a, b)
        gating[f"{a}|{b}"] = {"validation_recall_heads": h, "validation_recall_baseline": bl,
                              "use_heads": None if h is None or bl is None else bool(h > bl)}
    model = heads if use_heads else baselines[best]["model"]
    metrics.update({
        "heads_version": heads.version,
        "heads_seconds": metrics["seconds"],
        "version": model.version,
        "mapping_in_use": model.mapping,
        "mapping_reason": reason,
        "use_heads": use_heads,
        "gating": gating,
        "baseline": best,
        "baselines": {m: {k: v for k, v in info.items() if k != "model"} for m, info in baselines.items()},
        "validation_recall_heads": heads_mean,
        "validation_recall_baseline": base_mean,
        "retrieval_in_use": metrics["retrieval"] if use_heads else base_retrieval,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return model, metrics
