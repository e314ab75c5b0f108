"""Every external system as a ConfigurableResource, registered once.

Field values come from environment variables (``EnvVar``) when they are set, else from the documented
defaults (see ``.env.example``); resolution happens here, at definition time, never in asset bodies.
"""


import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import duckdb
from pydantic import PrivateAttr

from mm_platform.lib.device import DeviceConfig, apply_thread_policy, check_device
from mm_platform.lib.encoders.registry import EncoderSet, EncoderSettings, load_encoders, resolve_profile
from mm_platform.lib.vectors.fusion import parse_weights
from mm_platform.lib.storage.lake import Lake, WarehouseBusy, refresh_warehouse, register_views
from mm_platform.lib.storage.views import view_cursor
from mm_platform.lib.landing.ledger import request_key
from mm_platform.lib.storage.qdrant import QdrantStore
from mm_platform.lib.settings import BY_NAME, Paths, setting, setting_int
from mm_platform.lib.features.streams import parse_tolerance

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from mm_platform.lib.compute.ray_pipeline import RayConfig, RayEncoder


def _default(name: str) -> str:
    """The registered default of a setting (``lib/settings.py``), so resources and docs share one value."""
    return BY_NAME[name].default


def _default_int(name: str) -> int:
    return int(BY_NAME[name].default)


class WarehouseResource(dg.ConfigurableResource):
    """The Parquet lake (where assets write) and the DuckDB file of views over it (where users query)."""

    lake_dir: str
    duckdb_path: str
    #: where lake tables live (``MM_LAKE_URI``): "" = under ``lake_dir``; or ``s3://bucket/prefix``
    lake_uri: str = ""

    _lake: Lake = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # every step uses the warehouse: cap its torch/OpenMP/BLAS threads so concurrent runs never
        # oversubscribe the cores (MM_STEP_THREADS, MM_CONCURRENT_STEPS; lib/device.py)
        apply_thread_policy()
        self._lake = Lake(self.lake_dir, self.lake_uri or None)
        self._lake.ensure_initialized()

    @property
    def lake(self) -> Lake:
        return self._lake

    @contextlib.contextmanager
    def compute_connection(self, needs: Iterable[str] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB with the lake's views (at least those named in ``needs`` and what they read; all
        when None): computing never takes the warehouse file's lock."""
        if self._lake.remote:  # snapshots registered per connection
            con = duckdb.connect()
            register_views(con, self._lake)
        else:  # views that re-bind per query, each defined once per process when first needed
            con = view_cursor(self._lake, needs)
        try:
            yield con
        finally:
            con.close()

    def refresh_views(self, log: object | None = None) -> bool:
        """Create views for new tables in the warehouse file; a busy file only delays that, with a warning."""
        try:
            return refresh_warehouse(self._lake, Path(self.duckdb_path))
        except (WarehouseBusy, TimeoutError) as exc:
            if log is not None:
                log.warning(f"warehouse views not refreshed: {exc}")  # type: ignore[attr-defined]
            return False


class LandingResource(dg.ConfigurableResource):
    """The landing dir: one folder per batch, complete once its records.jsonl exists."""

    landing_dir: str
    max_audio_seconds: int = _default_int("MM_MAX_AUDIO_SECONDS")

    @property
    def path(self) -> Path:
        return Path(self.landing_dir)

    def batch_dir(self, batch_id: str) -> Path:
        return self.path / batch_id


class QdrantResource(dg.ConfigurableResource):
    """The vector sink. Embedded storage by default (one process at a time: open it inside a step and
    close it at once; assets that write share the ``qdrant`` pool); ``url`` switches to a server."""

    path: str
    url: str = ""
    api_key: str = ""
    collection: str = _default("MM_QDRANT_COLLECTION")
    open_timeout_s: float = 120.0
    backend: str = _default("MM_QDRANT_BACKEND")  # embedded engine: edge | local

    def store(self, lake: Lake | None = None) -> QdrantStore:
        """A store to open (``with``). Given the ``lake``, an embedded collection whose unlogged write was
        interrupted is restored from it on open (``lib/vectors/points.restore_points``); without, such a
        collection raises ``QdrantNeedsRestore`` and waits for an opener that has the lake."""
        store = QdrantStore(
            collection=self.collection, path=None if self.url else self.path, url=self.url or None,
            api_key=self.api_key or None, open_timeout_s=self.open_timeout_s,
            backend=self.backend,
        )
        if lake is not None:
            from mm_platform.lib.vectors.points import lake_restore

            store.restore = lake_restore(lake)
        return store


class TorchDeviceResource(dg.ConfigurableResource):
    """Where models run: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    device: str = _default("MM_DEVICE")
    batch_size: int = _default_int("MM_BATCH_SIZE")
    precision: str = _default("MM_PRECISION")
    num_workers: int = _default_int("MM_NUM_WORKERS")

    def config(self) -> DeviceConfig:
        return DeviceConfig(device=self.device, batch_size=self.batch_size, precision=self.precision,
                            num_workers=self.num_workers)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        check_device(self.device)  # fail fast on a bad spec or a missing GPU (no torch import for auto/cpu)


#: Encoder sets already loaded in this process, so that several runs in one process (a CLI ingest of many
#: batches, tests) load each model once. Keyed by everything that decides which weights run where.
_LOADED_ENCODERS: dict[tuple, EncoderSet] = {}


def profile_key(resolved_profile: str, settings: EncoderSettings) -> str:
    if resolved_profile == "clip":
        return (f"clip:{settings.clip_arch}:{settings.clip_pretrained}:{settings.clip_config or ''}"
                f":clap={settings.clap_model}")
    return resolved_profile


def current_profile_key(settings: EncoderSettings) -> str:
    """The profile key the current settings resolve to (cheap: no model is loaded)."""
    return profile_key(resolve_profile(settings)[0], settings)


class EncodersResource(dg.ConfigurableResource):
    """The per-modality encoders of ``profile`` (auto | offline | clip), loaded lazily, once per process."""

    profile: str = _default("MM_MODEL_PROFILE")
    clip_arch: str = _default("MM_CLIP_ARCH")
    clip_pretrained: str = _default("MM_CLIP_PRETRAINED")
    clip_config: str = ""
    clap_model: str = _default("MM_CLAP_MODEL")
    device: TorchDeviceResource

    _encoders: EncoderSet = PrivateAttr()

    def settings(self) -> EncoderSettings:
        return EncoderSettings(profile=self.profile, clip_arch=self.clip_arch,
                               clip_pretrained=self.clip_pretrained, clip_config=self.clip_config or None,
                               clap_model=self.clap_model)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        key = (self.settings(), self.device.config())
        if key not in _LOADED_ENCODERS:
            _LOADED_ENCODERS[key] = load_encoders(*key)
        self._encoders = _LOADED_ENCODERS[key]
        if context.log is not None and context.run_id:
            context.log.info(f"model profile {self._encoders.profile}: {self._encoders.reason}")

    @property
    def encoders(self) -> EncoderSet:
        return self._encoders

    def profile_key(self) -> str:
        """What decides which weights embed: the resolved profile and, for CLIP, the model settings. A batch
        embedded under another key is re-ingested by ``mm-platform ingest`` (the cache keeps unchanged
        modalities cheap)."""
        return profile_key(self._encoders.profile, self.settings())

    def request_key(self) -> str:
        """The settings as requested (before `auto` is resolved), as `ledger.encoder_request_key` reads them."""
        return request_key(self.profile, self.clip_arch, self.clip_pretrained, self.clip_config, self.clap_model)


#: Ray encoders already set up in this process (one warm actor handle per modality and settings).
_RAY_ENCODERS: dict[tuple, object] = {}


class ComputeResource(dg.ConfigurableResource):
    """Where the embedding work runs: ``local`` (in this process; the default) or ``ray`` (Ray Data pipelines
    feeding warm encoder actors on the cluster at ``ray_address``, or on a local Ray instance without one).
    Warm actors live in a Ray namespace derived from ``data_dir``."""

    mode: str = _default("MM_COMPUTE")
    ray_address: str = ""
    data_dir: str = ""
    ray_num_cpus: int = 0
    ray_object_store_mb: int = 0
    ray_connect_timeout_s: str = _default("MM_RAY_CONNECT_TIMEOUT_S")  # seconds (text: an EnvVar)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.mode not in ("local", "ray"):
            raise ValueError(f"MM_COMPUTE must be local or ray, got {self.mode!r}")
        if self.is_ray and self.ray_address:  # reach the cluster while the steps before the embeddings run
            from mm_platform.lib.compute.ray_pipeline import connect_in_background

            connect_in_background(self.ray_config())

    @property
    def is_ray(self) -> bool:
        return self.mode == "ray"

    def ray_config(self) -> "RayConfig":
        from mm_platform.lib.compute.ray_pipeline import RayConfig
        from mm_platform.lib.compute.warm_actors import namespace_for

        return RayConfig(address=self.ray_address, namespace=namespace_for(self.data_dir or "."),
                         num_cpus=self.ray_num_cpus, object_store_mb=self.ray_object_store_mb,
                         connect_timeout_s=float(self.ray_connect_timeout_s or 0))

    def ray_encoder(self, modality: str, encoders: "EncodersResource") -> "RayEncoder":
        """The Ray encoder of ``modality`` under the encoders' settings (its warm actor made on first use)."""
        from mm_platform.lib.compute.ray_pipeline import RayEncoder

        settings = encoders.settings()
        if settings.profile == "auto":  # the actor must load what this process resolved `auto` to
            settings = dataclasses.replace(settings, profile=encoders.encoders.profile)
        key = (modality, settings, encoders.device.config(), self.ray_config())
        if key not in _RAY_ENCODERS and not _RAY_ENCODERS:
            self._start_all(settings, encoders)
        if key not in _RAY_ENCODERS:
            _RAY_ENCODERS[key] = RayEncoder(modality, settings, encoders.device.config(), self.ray_config())
        return _RAY_ENCODERS[key]  # type: ignore[return-value]

    def text_encode(self, encoders: "EncodersResource") -> "Callable[[list[str]], np.ndarray]":
        """Texts -> unit vectors with the active text encoder, for steps that embed words outside the
        embedding assets (cluster names): the warm text actor in ray mode on a cluster (or when this process
        already runs Ray encoders), so the run process loads no model; else the in-process encoder (a run
        process without ``RAY_ADDRESS`` would otherwise start a whole Ray instance for a few words)."""
        if not (self.is_ray and (self.ray_address or _RAY_ENCODERS)):
            return encoders.encoders.text().encode
        encoder = self.ray_encoder("text", encoders)
        return lambda texts: encoder.run(list(texts)).vectors

    def _start_all(self, settings: "EncoderSettings", encoders: "EncodersResource") -> None:
        """Make every modality's Ray encoder at once (non-blocking), so their model loads and descriptions
        overlap, and each actor is looked up once per process."""
        from mm_platform.lib.compute.ray_pipeline import RayEncoder

        cfg, device = self.ray_config(), encoders.device.config()
        for modality in ("text", "image", "audio"):
            _RAY_ENCODERS[(modality, settings, device, cfg)] = RayEncoder(modality, settings, device, cfg)


class PipelineConfigResource(dg.ConfigurableResource):
    """Fusion and clustering choices, recorded with every result they produce."""

    fusion_weights: str = ""
    cluster_algorithm: str = _default("MM_CLUSTER_ALGORITHM")
    cluster_k: int = _default_int("MM_CLUSTER_K")  # 0 = automatic (best silhouette over 2..cluster_k_max)
    cluster_k_max: int = _default_int("MM_CLUSTER_K_MAX")
    cluster_reduce_dim: int = _default_int("MM_CLUSTER_REDUCE_DIM")  # PCA components clustered on (0 = cluster the raw vectors)
    hdbscan_min_cluster_size: int = _default_int("MM_HDBSCAN_MIN_CLUSTER_SIZE")
    seed: int = 0
    fusion_strategy: str = _default("MM_FUSION_STRATEGY")  # early | shared_mean: what the clusters are computed on
    fusion_select: str = _default("MM_FUSION_SELECT")  # auto | unsupervised | fixed: how a re-cluster picks weights
    outlier_policy: str = _default("MM_OUTLIER_POLICY")  # keep (-1) | nearest (outliers join the nearest cluster, still flagged)
    dbscan_eps: str = ""  # "" = chosen from the k-distance curve
    dbscan_min_samples: int = _default_int("MM_DBSCAN_MIN_SAMPLES")
    cluster_label_prompts: str = ""  # comma-separated names; a cluster is named by the nearest one
    shared_dim: int = _default_int("MM_SHARED_DIM")
    map_method: str = _default("MM_MAP_METHOD")  # pca | tsne (embedding_map)
    map_fit_sample: int = _default_int("MM_MAP_FIT_SAMPLE")  # rows the map projection is fitted on (re-cluster)
    alignment_epochs: int = _default_int("MM_ALIGNMENT_EPOCHS")
    stream_tolerance: str = _default("MM_STREAM_TOLERANCE")  # as-of join tolerance of stream readings
    stream_tolerances: str = ""  # per-stream overrides: "telemetry=10m,weather=1h"
    stream_strategy: str = _default("MM_STREAM_STRATEGY")  # backward | forward | nearest

    def weights(self) -> dict[str, float]:
        return parse_weights(self.fusion_weights or None)

    def label_prompts(self) -> list[str]:
        return [p.strip() for p in self.cluster_label_prompts.split(",") if p.strip()]

    def tolerance_for(self, stream: str) -> timedelta:
        """The as-of tolerance of ``stream``: its override in ``stream_tolerances``, else the default."""
        overrides: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in self.stream_tolerances.split(","))):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"bad MM_STREAM_TOLERANCES entry {part!r} (expected stream=duration)")
            overrides[name.strip()] = value.strip()
        return parse_tolerance(overrides.get(stream, self.stream_tolerance))


def _env(name: str, default: str | None = None) -> str | dg.EnvVar:
    """``EnvVar(name)`` when the variable is set (shown as such in the UI), else ``default`` (computed
    defaults, e.g. paths) or the registered default of ``lib/settings.py``."""
    return dg.EnvVar(name) if os.environ.get(name, "").strip() else (setting(name) if default is None else default)


def _env_int(name: str) -> int | dg.EnvVar:
    return dg.EnvVar.int(name) if os.environ.get(name, "").strip() else setting_int(name)



def build_resources() -> dict[str, dg.ConfigurableResource]:
    """The resources of the code location, from the environment (see ``.env.example``)."""
    paths = Paths.from_env()
    device = TorchDeviceResource(
        device=_env("MM_DEVICE"),
        batch_size=_env_int("MM_BATCH_SIZE"),
        precision=_env("MM_PRECISION"),
        num_workers=_env_int("MM_NUM_WORKERS"),
    )
    return {
        "warehouse": WarehouseResource(
            lake_dir=_env("MM_LAKE_DIR", str(paths.lake_dir)),
            duckdb_path=_env("MM_DUCKDB_PATH", str(paths.duckdb_path)),
            lake_uri=_env("MM_LAKE_URI"),
        ),
        "landing": LandingResource(
            landing_dir=_env("MM_LANDING_DIR", str(paths.landing_dir)),
            max_audio_seconds=_env_int("MM_MAX_AUDIO_SECONDS"),
        ),
        "qdrant": QdrantResource(
            path=_env("MM_QDRANT_PATH", str(paths.qdrant_path)), url=_env("QDRANT_URL"), api_key=_env("QDRANT_API_KEY"),
            collection=_env("MM_QDRANT_COLLECTION"), backend=_env("MM_QDRANT_BACKEND"),
        ),
        "device": device,
        "encoders": EncodersResource(
            profile=_env("MM_MODEL_PROFILE"), clip_arch=_env("MM_CLIP_ARCH"),
            clip_pretrained=_env("MM_CLIP_PRETRAINED"),
            clip_config=_env("MM_CLIP_CONFIG"), clap_model=_env("MM_CLAP_MODEL"),
            device=device,
        ),
        "compute": ComputeResource(
            mode=_env("MM_COMPUTE"), ray_address=_env("RAY_ADDRESS"), data_dir=str(paths.data_dir),
            ray_num_cpus=_env_int("MM_RAY_NUM_CPUS"), ray_object_store_mb=_env_int("MM_RAY_OBJECT_STORE_MB"),
            ray_connect_timeout_s=_env("MM_RAY_CONNECT_TIMEOUT_S"),
        ),
        "pipeline": PipelineConfigResource(
            fusion_weights=_env("MM_FUSION_WEIGHTS"),
            cluster_algorithm=_env("MM_CLUSTER_ALGORITHM"),
            cluster_k=_env_int("MM_CLUSTER_K"),
            cluster_k_max=_env_int("MM_CLUSTER_K_MAX"),
            cluster_reduce_dim=_env_int("MM_CLUSTER_REDUCE_DIM"),
            fusion_strategy=_env("MM_FUSION_STRATEGY"),
            fusion_select=_env("MM_FUSION_SELECT"),
            outlier_policy=_env("MM_OUTLIER_POLICY"),
            hdbscan_min_cluster_size=_env_int("MM_HDBSCAN_MIN_CLUSTER_SIZE"),
            dbscan_eps=_env("MM_DBSCAN_EPS"),
            dbscan_min_samples=_env_int("MM_DBSCAN_MIN_SAMPLES"),
            cluster_label_prompts=_env("MM_CLUSTER_LABEL_PROMPTS"),
            shared_dim=_env_int("MM_SHARED_DIM"),
            map_method=_env("MM_MAP_METHOD"),
            map_fit_sample=_env_int("MM_MAP_FIT_SAMPLE"),
            alignment_epochs=_env_int("MM_ALIGNMENT_EPOCHS"),
            stream_tolerance=_env("MM_STREAM_TOLERANCE"),
            stream_tolerances=_env("MM_STREAM_TOLERANCES"),
            stream_strategy=_env("MM_STREAM_STRATEGY"),
        ),
    }
