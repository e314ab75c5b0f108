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

@dataclass(frozen=True)
class Setting:
    """One environment variable: its default (as text; empty = unset), what it means, its group, and its type
    (:data:`KINDS`: ``str`` unless declared ``int``, ``float`` or one of a fixed set of choices)."""

    name: str
    default: str
    doc: str
    group: str

    @property
    def kind(self) -> str | tuple[str, ...]:
        """``"str"``, ``"int"``, ``"float"``, or the tuple of accepted values."""
        return KINDS.get(self.name, "str")

    def problem(self, value: str) -> str | None:
        """Why ``value`` is not a valid value of this setting, or None (blank = the default: always valid)."""
        value = value.strip()
        kind = self.kind
        if not value or kind == "str":
            return None
        if kind in ("int", "float"):
            try:
                int(value) if kind == "int" else float(value)
            except ValueError:
                return f"{self.name}={value!r} is not {'an integer' if kind == 'int' else 'a number'}"
            return None
        if isinstance(kind, tuple) and value not in kind and not _matches_pattern(self.name, value):
            return f"{self.name}={value!r} is not one of {' | '.join(kind)}"
        return None

    @property
    def computed(self) -> bool:
        """A default derived at run time (``$MM_DATA_DIR/...``, ``<repo>/...``), not a literal value."""
        return self.default.startswith(("$", "<"))


def _s(group: str, *rows: tuple[str, str, str]) -> list[Setting]:
    return [Setting(name, default, doc, group) for name, default, doc in rows]


#: Every variable the platform reads, with its default: the one place they are written down. `.env.example`
#: and the configuration table of docs/operations.md are generated from it (a test keeps them current), and
#: `mm-platform config` prints each value with where it came from.
SETTINGS: tuple[Setting, ...] = tuple([
    *_s("paths",
        ("MM_DATA_DIR", "data", "root of everything the platform writes (relative to the working directory)"),
        ("MM_LANDING_DIR", "$MM_DATA_DIR/landing", "landing dir, one folder per batch"),
        ("MM_LAKE_DIR", "$MM_DATA_DIR/lake", "the lake: its Delta tables (local lake) and its bookkeeping (stamps, models, file records)"),
        ("MM_LAKE_URI", "", "where lake tables live: empty = MM_LAKE_DIR; a local path; or s3://bucket/prefix (AWS_* credentials)"),
        ("MM_S3_ENDPOINT", "", "endpoint of an S3-compatible store for an s3:// MM_LAKE_URI, e.g. http://127.0.0.1:9000"),
        ("MM_DUCKDB_PATH", "$MM_DATA_DIR/warehouse.duckdb", "DuckDB warehouse file holding views over the lake"),
        ("MM_QDRANT_PATH", "$MM_DATA_DIR/qdrant", "embedded Qdrant storage"),
        ("MM_SQL_DIR", "<repo>/dbt_like_sql", "folder of the SQL models (staging/, intermediate/, marts/)")),
    *_s("qdrant",
        ("MM_QDRANT_BACKEND", "edge", "embedded Qdrant engine: edge (qdrant-edge, HNSW) | local (qdrant-client local mode)"),
        ("MM_QDRANT_QUANTIZATION", "int8", "qdrant-edge collections created from now on: int8 (scalar quantization in RAM, "
         "searches rescored on the original vectors) | none"),
        ("MM_QDRANT_WAL", "off", "qdrant-edge collections created from now on: off (no write-ahead log, ~2x faster "
         "upserts; each write is bracketed by a flushed dirty marker and an interrupted one is restored from the "
         "lake) | on (write-ahead log)"),
        ("QDRANT_URL", "", "Qdrant server URL; when set it replaces the embedded store"),
        ("QDRANT_API_KEY", "", "Qdrant server API key"),
        ("MM_QDRANT_COLLECTION", "mm_records", "Qdrant collection")),
    *_s("models",
        ("MM_MODEL_PROFILE", "auto", "auto | offline | clip"),
        ("MM_CLIP_ARCH", "ViT-B-32", "open_clip architecture"),
        ("MM_CLIP_PRETRAINED", "laion2b_s34b_b79k", "open_clip pretrained tag or local checkpoint path"),
        ("MM_CLIP_CONFIG", "", "optional custom open_clip model config JSON"),
        ("MM_CLAP_MODEL", "laion/clap-htsat-unfused", "CLAP audio model for the clip/auto profiles: hub id or local dir")),
    *_s("device",
        ("MM_DEVICE", "auto", "auto | cpu | cuda | cuda:N"),
        ("MM_BATCH_SIZE", "64", "encoder batch size"),
        ("MM_PRECISION", "fp32", "fp32 | fp16 | bf16 (autocast, CUDA only)"),
        ("MM_NUM_WORKERS", "2", "image decoding workers"),
        ("MM_STEP_THREADS", "auto", "threads (torch, OpenMP, BLAS) per step; auto = cores // MM_CONCURRENT_STEPS"),
        ("MM_CONCURRENT_STEPS", "2", "steps that may run at once (the run queue's max_concurrent_runs)")),
    *_s("landing",
        ("MM_MAX_AUDIO_SECONDS", "600", "longest accepted audio clip in seconds"),
        ("MM_SENSOR_MAX_BATCHES", "10", "batches the landing sensor registers per tick"),
        ("MM_STREAM_TOLERANCE", "5m", "as-of join tolerance of stream readings, e.g. 30s, 5m, 1h"),
        ("MM_STREAM_TOLERANCES", "", "per-stream tolerances overriding the default, e.g. telemetry=10m,weather=1h"),
        ("MM_STREAM_STRATEGY", "backward", "backward (last reading before the record) | forward | nearest")),
    *_s("modelling",
        ("MM_FUSION_WEIGHTS", "", "modality weights, e.g. text=1,image=1 (empty: all 1)"),
        ("MM_FUSION_STRATEGY", "early", "what clusters are computed on: early (weighted concatenation) | shared_mean"),
        ("MM_FUSION_SELECT", "auto", "how each re-cluster chooses the fusion weights later batches use: auto (labels when >= 20 records are labelled, else the unsupervised kNN-graph criterion) | unsupervised | fixed (always MM_FUSION_WEIGHTS)"),
        ("MM_CLUSTER_ALGORITHM", "kmeans", "kmeans | hdbscan | dbscan"),
        ("MM_CLUSTER_K", "0", "fixed k for K-Means; 0 = automatic (silhouette)"),
        ("MM_CLUSTER_K_MAX", "12", "largest k tried by automatic K-Means"),
        ("MM_CLUSTER_REDUCE_DIM", "16", "PCA components the clustering runs on; 0 = none"),
        ("MM_OUTLIER_POLICY", "keep", "keep (outliers stay cluster -1) | nearest (they join the nearest cluster, still flagged)"),
        ("MM_HDBSCAN_MIN_CLUSTER_SIZE", "5", "HDBSCAN min_cluster_size"),
        ("MM_DBSCAN_EPS", "", "DBSCAN radius (cosine distance); empty = chosen from the k-distance curve"),
        ("MM_DBSCAN_MIN_SAMPLES", "5", "DBSCAN min_samples"),
        ("MM_CLUSTER_LABEL_PROMPTS", "", "comma-separated names; each cluster is named by the nearest one in the shared space"),
        ("MM_MAP_METHOD", "pca", "2-D method of embedding_map: pca | tsne"),
        ("MM_MAP_FIT_SAMPLE", "20000", "rows the embedding map projection is fitted on in the re-cluster job (a refresh only places new rows)"),
        ("MM_SHARED_DIM", "128", "dimension of the shared space the alignment heads project into"),
        ("MM_ALIGNMENT_EPOCHS", "60", "most training epochs of the alignment heads (early stopping may stop sooner)")),
    *_s("compute",
        ("MM_COMPUTE", "local", "where embeddings are computed: local (in the run process) | ray (Ray Data + warm encoder actors)"),
        ("RAY_ADDRESS", "", "MM_COMPUTE=ray: an existing Ray cluster (host:6379 or ray://host:10001); empty = a local Ray instance per run process (warm actors then live only as long as that process)"),
        ("MM_RAY_NUM_CPUS", "0", "MM_COMPUTE=ray without RAY_ADDRESS: CPUs of the local Ray instance (0: all)"),
        ("MM_RAY_OBJECT_STORE_MB", "0", "MM_COMPUTE=ray without RAY_ADDRESS: object store size of the local Ray instance in MB (0: Ray's)"),
        ("MM_RAY_CONNECT_TIMEOUT_S", "20", "MM_COMPUTE=ray with RAY_ADDRESS: seconds the cluster may take to answer before the run fails (Ray alone waits for a stopped cluster for minutes)")),
    *_s("operations",
        ("MM_LAKE_VACUUM_RETENTION_HOURS", "168", "vacuum retention of the weekly lake_housekeeping asset in hours (never below 1)"),
        ("MM_POOL_WAIT_S", "120", "seconds a CLI run waits for a pool slot (e.g. qdrant) before failing, naming the holder"),
        ("MM_SERVE_TOKEN", "", "token `mm-platform serve` requires (Bearer header, ?token= or cookie); needed to bind beyond 127.0.0.1"),
        ("MM_SERVE_QDRANT_IDLE_S", "2", "seconds `mm-platform serve` keeps embedded Qdrant open after a request"),
        ("MM_SERVE_URL", "http://127.0.0.1:8765", "base URL of the explorer (mm-platform serve) linked from the Dagster UI"),
        ("MM_TEST_CRASH_AT", "", "tests only: a step key (the CLI process SIGKILLs itself at the start of that step), or "
         "qdrant_unlogged_write (inside a write to a Qdrant collection without a WAL, before its flush)")),
    *_s("external",
        ("DAGSTER_HOME", "$MM_DATA_DIR/dagster_home", "Dagster instance of CLI runs and `make ui`"),
        ("AWS_ACCESS_KEY_ID", "", "S3 access key of an s3:// MM_LAKE_URI"),
        ("AWS_SECRET_ACCESS_KEY", "", "S3 secret key of an s3:// MM_LAKE_URI"),
        ("AWS_SESSION_TOKEN", "", "S3 session token (temporary credentials)"),
        ("AWS_REGION", "us-east-1", "S3 region of an s3:// MM_LAKE_URI"),
        ("AWS_S3_LOCKING_PROVIDER", "", "dynamodb: a commit lock for a lake several hosts write (else plain S3 renames)"),
        ("HF_HUB_OFFLINE", "", "set to 1 on an air-gapped machine: nothing is fetched from the Hugging Face hub")),
])
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}

#: The type of every setting that is not free text: ``int``, ``float``, or its accepted values.
KINDS: dict[str, str | tuple[str, ...]] = {
    **dict.fromkeys(("MM_BATCH_SIZE", "MM_NUM_WORKERS", "MM_CONCURRENT_STEPS", "MM_MAX_AUDIO_SECONDS",
                     "MM_SENSOR_MAX_BATCHES", "MM_CLUSTER_K", "MM_CLUSTER_K_MAX", "MM_CLUSTER_REDUCE_DIM",
                     "MM_HDBSCAN_MIN_CLUSTER_SIZE", "MM_DBSCAN_MIN_SAMPLES", "MM_MAP_FIT_SAMPLE", "MM_SHARED_DIM",
                     "MM_ALIGNMENT_EPOCHS", "MM_RAY_NUM_CPUS", "MM_RAY_OBJECT_STORE_MB", "MM_POOL_WAIT_S"), "int"),
    **dict.fromkeys(("MM_LAKE_VACUUM_RETENTION_HOURS", "MM_SERVE_QDRANT_IDLE_S", "MM_DBSCAN_EPS",
                     "MM_RAY_CONNECT_TIMEOUT_S"), "float"),
    "MM_QDRANT_BACKEND": ("edge", "local"),
    "MM_QDRANT_QUANTIZATION": ("int8", "none"),
    "MM_QDRANT_WAL": ("off", "on"),
    "MM_MODEL_PROFILE": ("auto", "offline", "clip"),
    "MM_DEVICE": ("auto", "cpu", "cuda", "cuda:N"),
    "MM_PRECISION": ("fp32", "fp16", "bf16"),
    "MM_STEP_THREADS": ("auto", "N"),
    "MM_STREAM_STRATEGY": ("backward", "forward", "nearest"),
    "MM_FUSION_STRATEGY": ("early", "shared_mean"),
    "MM_FUSION_SELECT": ("auto", "unsupervised", "fixed"),
    "MM_CLUSTER_ALGORITHM": ("kmeans", "hdbscan", "dbscan"),
    "MM_OUTLIER_POLICY": ("keep", "nearest"),
    "MM_MAP_METHOD": ("pca", "tsne"),
    "MM_COMPUTE": ("local", "ray"),
}


def _matches_pattern(name: str, value: str) -> bool:
    """The choices written with ``N`` (``cuda:N``, ``N``) accept a non-negative integer there."""
    if name == "MM_DEVICE":
        head, _, idx = value.partition(":")
        return head == "cuda" and idx.isdigit()
    return name == "MM_STEP_THREADS" and value.isdigit() and int(value) > 0
#: never printed by `mm-platform config`
SECRETS = frozenset({"QDRANT_API_KEY", "MM_SERVE_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})


def setting(name: str, env: Mapping[str, str] | None = None) -> str:
    """The value of ``name``: from the environment when set (non-blank), else its registered default; ""
    for a computed default (``$MM_DATA_DIR/...``: use :class:`Paths`; ``<repo>/...``: the caller's)."""
    env = os.environ if env is None else env
    value = env.get(name, "")
    if value.strip():
        return value.strip()
    spec = BY_NAME[name]
    return "" if spec.computed else spec.default


def setting_int(name: str, env: Mapping[str, str] | None = None) -> int:
    """``name`` as an integer; a value that is not one raises ``ValueError`` naming the variable."""
    value = setting(name, env)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def setting_float(name: str, env: Mapping[str, str] | None = None) -> float:
    """``name`` as a number; a value that is not one raises ``ValueError`` naming the variable."""
    value = setting(name, env)
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


def problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Every setting whose value in ``env`` does not fit its type (see :data:`KINDS`)."""
    env = os.environ if env is None else env
    return [p for s in SETTINGS if (p := s.problem(env.get(s.name, ""))) is not None]


def resolved(env: Mapping[str, str] | None = None) -> list[tuple[Setting, str, str]]:
    """``(setting, value, source)`` for every setting; source is ``environment`` or ``default`` (paths
    resolved against ``MM_DATA_DIR`` as the platform uses them)."""
    env = os.environ if env is None else env
    paths = Paths.from_env(env)
    computed = {"MM_DATA_DIR": paths.data_dir, "MM_LANDING_DIR": paths.landing_dir, "MM_LAKE_DIR": paths.lake_dir,
                "MM_DUCKDB_PATH": paths.duckdb_path, "MM_QDRANT_PATH": paths.qdrant_path,
                "DAGSTER_HOME": setting("DAGSTER_HOME", env) or paths.dagster_home}
    out = []
    for s in SETTINGS:
        from_env = bool(env.get(s.name, "").strip())
        value = str(computed[s.name]) if s.name in computed else (setting(s.name, env) or s.default)
        if s.name in SECRETS and from_env:
            value = "*** (set)"
        out.append((s, value, "environment" if from_env else "default"))
    return out


def env_example() -> str:
    """The text of `.env.example`, generated from :data:`SETTINGS`."""
    lines = ["# mm_platform configuration, generated from mm_platform/lib/settings.py (`mm-platform config",
             "# --env-example`). Copy to .env (dagster dev reads it) or export in your shell. Every variable is",
             "# optional; the line under each description shows its default."]
    group = None
    for s in SETTINGS:
        if s.group != group:
            group = s.group
            lines += ["", f"# ---- {group}"]
        lines += ["", f"# {s.doc}", f"# {s.name}={s.default}"]
    return "\n".join(lines) + "\n"


def config_table() -> str:
    """The configuration table of docs/operations.md (markdown), generated from :data:`SETTINGS`."""
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else ""
        meaning = s.doc.replace("|", "\\|")
        kind = s.kind if isinstance(s.kind, str) else " \\| ".join(s.kind)
        rows.append(f"| `{s.name}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def _env(env: Mapping[str, str], key: str, default: str = "") -> str:
    value = env.get(key, "")
    return value if value.strip() else default


def serve_url(env: Mapping[str, str] | None = None) -> str:
    """Base URL of the explorer service, without a trailing slash (``MM_SERVE_URL``)."""
    return setting("MM_SERVE_URL", env).rstrip("/")


#: Floor of the vacuum retention: a query that resolved a version a moment before a compaction still reads it.
MIN_VACUUM_RETENTION_HOURS = 1.0


def vacuum_retention_hours(env: Mapping[str, str] | None = None) -> float:
    """``MM_LAKE_VACUUM_RETENTION_HOURS`` (default 168 = a week of time travel), never below one hour."""
    raw = setting("MM_LAKE_VACUUM_RETENTION_HOURS", env)
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
        data = Path(setting("MM_DATA_DIR", env)).expanduser().resolve()
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
