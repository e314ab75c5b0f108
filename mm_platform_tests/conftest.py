"""Shared fixtures: a temporary platform (data dir, landing dir) and small real resources."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from mm_platform.defs.resources import (
    ComputeResource,
    EncodersResource,
    LandingResource,
    PipelineConfigResource,
    QdrantResource,
    TorchDeviceResource,
    WarehouseResource,
)
from mm_platform.lib.settings import Paths
from mm_platform_tests.tiny_models import TinyClip, build_tiny_clap, build_tiny_clip

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """A fresh data dir, exported as MM_DATA_DIR (so CLI subprocesses and Definitions see it)."""
    data = tmp_path / "data"
    monkeypatch.setenv("MM_DATA_DIR", str(data))
    for var in ("MM_LANDING_DIR", "MM_LAKE_DIR", "MM_DUCKDB_PATH", "MM_QDRANT_PATH", "QDRANT_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    p = Paths.from_env()
    p.landing_dir.mkdir(parents=True)
    return p


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> TinyClip:
    """A tiny random-init CLIP (text + image) with a tiny random-init CLAP (audio) beside it."""
    clip = build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))
    build_tiny_clap(clip.config_path.parent / "clap")
    return clip


def make_resources(paths: Paths, tiny: TinyClip | None = None, compute: ComputeResource | None = None,
                   **pipeline: object) -> dict[str, object]:
    """Real resources on temp dirs; the tiny CLIP + CLAP models when given (``clip`` profile), else the
    offline profile; in-process compute unless ``compute`` is given."""
    device = TorchDeviceResource(device="cpu", batch_size=32, num_workers=0)
    if tiny is not None:
        encoders = EncodersResource(profile="clip", clip_arch=tiny.arch, clip_pretrained=str(tiny.checkpoint_path),
                                    clip_config=str(tiny.config_path),
                                    clap_model=str(tiny.config_path.parent / "clap"), device=device)
    else:
        encoders = EncodersResource(profile="offline", device=device)
    return {
        "warehouse": WarehouseResource(lake_dir=str(paths.lake_dir), duckdb_path=str(paths.duckdb_path)),
        "landing": LandingResource(landing_dir=str(paths.landing_dir)),
        "qdrant": QdrantResource(path=str(paths.qdrant_path), open_timeout_s=10),
        "device": device,
        "encoders": encoders,
        "pipeline": PipelineConfigResource(**pipeline),
        "compute": compute or ComputeResource(data_dir=str(paths.data_dir)),
    }


@pytest.fixture()
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst
