"""Platform settings read from environment variables (documented in `.env.example`).

Everything the platform writes by default lives under ``$MM_DATA_DIR`` (default ``./data`` relative to the
working directory): the landing dir, the Parquet lake, the DuckDB warehouse file, the embedded Qdrant
storage and the Dagster instance of CLI runs (unless ``DAGSTER_HOME`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_DOC: dict[str, str] = {
    "MM_DATA_DIR": "root of everything the platform writes (default ./data)",
    "MM_LANDING_DIR": "landing dir, one folder per batch (default $MM_DATA_DIR/landing)",
    "MM_LAKE_DIR": "Parquet lake (default $MM_DATA_DIR/lake)",
    "MM_DUCKDB_PATH": "DuckDB warehouse file holding views over the lake (default $MM_DATA_DIR/warehouse.duckdb)",
    "MM_QDRANT_PATH": "embedded Qdrant storage (default $MM_DATA_DIR/qdrant)",
    "MM_QDRANT_BACKEND": "embedded Qdrant engine: edge (qdrant-edge, HNSW; default) | local (qdrant-client local mode)",
    "QDRANT_URL": "Qdrant server URL; when set it replaces the embedded store",
    "QDRANT_API_KEY": "Qdrant server API key",
    "MM_QDRANT_COLLECTION": "Qdrant collection (default mm_records)",
    "MM_MODEL_PROFILE": "auto | offline | clip (default auto)",
    "MM_CLIP_ARCH": "open_clip architecture (default ViT-B-32)",
    "MM_CLIP_PRETRAINED": "open_clip pretrained tag or local checkpoint path (default laion2b_s34b_b79k)",
    "MM_CLIP_CONFIG": "optional custom open_clip model config JSON",
    "MM_DEVICE": "auto | cpu | cuda | cuda:N (default auto)",
    "MM_BATCH_SIZE": "encoder batch size (default 64)",
    "MM_PRECISION": "fp32 | fp16 | bf16 (autocast, CUDA only; default fp32)",
    "MM_NUM_WORKERS": "image decoding workers (default 2)",
    "MM_FUSION_WEIGHTS": "modality weights, e.g. text=1,image=1 (default all 1)",
    "MM_CLUSTER_ALGORITHM": "kmeans | hdbscan | dbscan (default kmeans)",
    "MM_CLUSTER_K": "fixed k for K-Means; empty = automatic (silhouette)",
    "MM_CLUSTER_K_MAX": "largest k tried by automatic K-Means (default 12)",
    "MM_CLUSTER_REDUCE_DIM": "PCA components the clustering runs on; 0 = none (default 16)",
    "MM_SENSOR_MAX_BATCHES": "batches the landing sensor registers per tick (default 10)",
    "MM_FUSION_STRATEGY": "what clusters are computed on: early (weighted concatenation) | shared_mean (default early)",
    "MM_OUTLIER_POLICY": "keep (outliers stay cluster -1) | nearest (they join the nearest cluster, still flagged)",
    "MM_HDBSCAN_MIN_CLUSTER_SIZE": "HDBSCAN min_cluster_size (default 5)",
    "MM_DBSCAN_EPS": "DBSCAN radius (cosine distance); empty = chosen from the k-distance curve",
    "MM_DBSCAN_MIN_SAMPLES": "DBSCAN min_samples (default 5)",
    "MM_CLUSTER_LABEL_PROMPTS": "comma-separated names; each cluster is named by the nearest one in the shared space",
    "MM_MAP_METHOD": "2-D method of embedding_map: pca | tsne (default pca)",
    "MM_SHARED_DIM": "dimension of the shared space the alignment heads project into (default 128)",
    "MM_ALIGNMENT_EPOCHS": "training epochs of the alignment heads (default 60)",
    "MM_CLAP_MODEL": "CLAP audio model for the clip/auto profiles: hub id or local dir (default laion/clap-htsat-unfused)",
    "MM_MAX_AUDIO_SECONDS": "longest accepted audio clip in seconds (default 600)",
    "MM_STREAM_TOLERANCE": "as-of join tolerance of stream readings, e.g. 30s, 5m, 1h (default 5m)",
    "MM_STREAM_TOLERANCES": "per-stream tolerances overriding the default, e.g. telemetry=10m,weather=1h",
    "MM_STREAM_STRATEGY": "backward (last reading before the record) | forward | nearest (default backward)",
    "MM_SERVE_TOKEN": "token `mm-platform serve` requires (Bearer header, ?token= or cookie); needed to bind beyond 127.0.0.1",
    "MM_SERVE_QDRANT_IDLE_S": "seconds `mm-platform serve` keeps embedded Qdrant open after a request (default 2)",
    "MM_SERVE_URL": "base URL of the explorer (mm-platform serve) linked from the Dagster UI (default http://127.0.0.1:8765)",
    "MM_POOL_WAIT_S": "seconds a CLI run waits for a pool slot (e.g. qdrant) before failing, naming the holder (default 120)",
    "MM_TEST_CRASH_AT": "tests only: a step key; the CLI process SIGKILLs itself at the start of that step",
}


def _env(env: Mapping[str, str], key: str, default: str = "") -> str:
    value = env.get(key, "")
    return value if value.strip() else default


def serve_url(env: Mapping[str, str] | None = None) -> str:
    """Base URL of the explorer service, without a trailing slash (``MM_SERVE_URL``)."""
    return _env(os.environ if env is None else env, "MM_SERVE_URL", "http://127.0.0.1:8765").rstrip("/")


#: Default vacuum retention of the lake housekeeping: files a version younger than this still needs stay.
DEFAULT_VACUUM_RETENTION_HOURS = 168.0
#: Floor of the vacuum retention: a query that resolved a version a moment before a compaction still reads it.
MIN_VACUUM_RETENTION_HOURS = 1.0


def vacuum_retention_hours(env: Mapping[str, str] | None = None) -> float:
    """``MM_LAKE_VACUUM_RETENTION_HOURS`` (default 168 = a week of time travel), never below one hour."""
    raw = _env(os.environ if env is None else env, "MM_LAKE_VACUUM_RETENTION_HOURS", str(DEFAULT_VACUUM_RETENTION_HOURS))
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"MM_LAKE_VACUUM_RETENTION_HOURS={raw!r} is not a number of hours") from exc
    return max(value, MIN_VACUUM_RETENTION_HOURS)


def _local_lake_uri(env: Mapping[str, str]) -> str:
    """``MM_LAKE_URI`` when it names a local directory (then it is the lake dir), else ""."""
    uri = _env(env, "MM_LAKE_URI", "")
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return "" if "://" in uri else uri


@dataclass(frozen=True)
class Paths:
    """Where the platform reads and writes, resolved to absolute paths."""

    data_dir: Path
    landing_dir: Path
    lake_dir: Path
    duckdb_path: Path
    qdrant_path: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Paths:
        env = os.environ if env is None else env
        data = Path(_env(env, "MM_DATA_DIR", "data")).expanduser().resolve()
        return cls(
            data_dir=data,
            landing_dir=Path(_env(env, "MM_LANDING_DIR", str(data / "landing"))).expanduser().resolve(),
            lake_dir=Path(_env(env, "MM_LAKE_DIR", _local_lake_uri(env) or str(data / "lake"))).expanduser().resolve(),
            duckdb_path=Path(_env(env, "MM_DUCKDB_PATH", str(data / "warehouse.duckdb"))).expanduser().resolve(),
            qdrant_path=Path(_env(env, "MM_QDRANT_PATH", str(data / "qdrant"))).expanduser().resolve(),
        )

    @property
    def dagster_home(self) -> Path:
        """Dagster instance used by CLI runs when ``DAGSTER_HOME`` is not set."""
        return self.data_dir / "dagster_home"
