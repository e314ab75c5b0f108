"""Clustering of fused vectors: K-Means with automatic k, HDBSCAN, DBSCAN, scores, and cluster descriptions.

Cluster ids are renumbered by decreasing size (cluster 0 is the largest; ties broken by first member),
so ids are stable for a given input and seed. ``-1`` marks HDBSCAN / DBSCAN outliers;
:func:`apply_outlier_policy` can fold them into the nearest cluster and :func:`fit_on_sample` extends any
clustering fitted on a sample to all rows.

Layout: :mod:`.base` (result type, helpers, PCA), :mod:`.kmeans`, :mod:`.density` (HDBSCAN, DBSCAN),
:mod:`.outliers` (outlier policy, fitting on a sample) and :mod:`.describe` (scores and descriptions);
this package re-exports their public names (and the three helpers :mod:`mm_platform.lib.analysis.clustering.stability` uses).
"""

from __future__ import annotations

# _as_matrix, _sample_index, _unit_rows: private helpers, re-exported for lib.cluster_stability's import
from mm_platform.lib.analysis.clustering.base import (  # noqa: F401
    MINIBATCH_THRESHOLD,
    SMALL_INPUT_CELLS,
    ClusterResult,
    _as_matrix,
    _sample_index,
    _unit_rows,
    reduce_dimensions,
)
from mm_platform.lib.analysis.clustering.density import (
    DENSITY_ALGORITHMS,
    EPS_FALLBACK_QUANTILE,
    OUTLIER_POLICIES,
    dbscan_cluster,
    hdbscan_cluster,
)
from mm_platform.lib.analysis.clustering.describe import (
    distances_to_centroid,
    external_scores,
    is_missing_label,
    label_summary,
    representatives,
    top_terms,
)
from mm_platform.lib.analysis.clustering.kmeans import (
    kmeans_auto,
)
from mm_platform.lib.analysis.clustering.outliers import (
    apply_outlier_policy,
    fit_on_sample,
)

__all__ = [
    "DENSITY_ALGORITHMS",
    "EPS_FALLBACK_QUANTILE",
    "MINIBATCH_THRESHOLD",
    "OUTLIER_POLICIES",
    "SMALL_INPUT_CELLS",
    "ClusterResult",
    "apply_outlier_policy",
    "dbscan_cluster",
    "distances_to_centroid",
    "external_scores",
    "fit_on_sample",
    "hdbscan_cluster",
    "is_missing_label",
    "kmeans_auto",
    "label_summary",
    "reduce_dimensions",
    "representatives",
    "top_terms",
]
