"""Finding CLAP weights without loading them or touching the network: local directories and the hub cache."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mm_platform.lib.encoders.base import (
    EncoderUnavailable,
)

DEFAULT_CLAP_MODEL = "laion/clap-htsat-unfused"
CLAP_MAX_WINDOWS = 6
CLAP_HINT = (
    "Set MM_CLAP_MODEL to a local directory holding a transformers CLAP model (config.json, "
    "preprocessor_config.json and model.safetensors or pytorch_model.bin) or to a Hugging Face hub id whose "
    "files are cached locally (or downloadable); without CLAP the clip profile falls back to the built-in "
    "log-mel audio encoder (MM_MODEL_PROFILE=offline uses it always)."
)
_CLAP_CONFIG = "config.json"
_CLAP_PREPROCESSOR = "preprocessor_config.json"
_CLAP_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_CLAP_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def clap_unavailable(msg: str) -> EncoderUnavailable:
    """An :class:`EncoderUnavailable` for CLAP whose message ends with the configuration hint."""
    return EncoderUnavailable(f"{msg}. {CLAP_HINT}")


@dataclass(frozen=True)
class ClapWeights:
    """Where a CLAP model is.

    Attributes:
        status: ``"dir"`` (a complete local directory), ``"cached"`` (a hub id whose files are all in the
            local Hugging Face cache), ``"remote"`` (a hub id that would need a download from ``host``) or
            ``"missing"``.
        source: what to pass to ``from_pretrained`` (the directory, or the hub id).
        files: the local files that define the model (config, preprocessor config, weights), for versioning.
        host: ``(hostname, port)`` a download would come from, for ``remote``.
        detail: a human-readable explanation.
    """

    status: str
    source: str = ""
    files: tuple[str, ...] = ()
    host: tuple[str, int] | None = None
    detail: str = ""

    @property
    def local(self) -> bool:
        return self.status in ("dir", "cached")


def _hub_host() -> tuple[str, int]:
    from mm_platform.lib.encoders.clip import hf_endpoint

    u = urlparse(hf_endpoint())
    return (u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443))


def _weights_in(lookup: Any) -> tuple[list[str] | None, str]:
    """Weight files via ``lookup(name) -> local path | None``: a single file, or every shard of an index."""
    for name in _CLAP_WEIGHTS:
        found = lookup(name)
        if found:
            return [found], name
    for name in _CLAP_INDEXES:
        index = lookup(name)
        if not index:
            continue
        try:
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, f"unreadable weight index {name} ({exc})"
        paths = [lookup(s) for s in shards]
        missing = [s for s, p in zip(shards, paths, strict=True) if not p]
        if missing:
            return None, f"weight shards missing: {', '.join(missing[:3])}"
        return [index, *[p for p in paths if p]], name
    return None, f"no weights ({' / '.join(_CLAP_WEIGHTS)})"


def find_clap_weights(name_or_path: str) -> ClapWeights:
    """Locate a CLAP model without loading it and without any network call."""
    name = (name_or_path or "").strip()
    if not name:
        return ClapWeights("missing", detail="no CLAP model given")
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        root = Path(expanded)

        def in_dir(f: str) -> str | None:
            p = root / f
            return str(p) if p.is_file() else None

        need = [f for f in (_CLAP_CONFIG, _CLAP_PREPROCESSOR) if not in_dir(f)]
        weights, why = _weights_in(in_dir)
        if need or weights is None:
            lacks = ", ".join(need + ([why] if weights is None else []))
            return ClapWeights("missing", detail=f"CLAP directory {expanded} is incomplete: {lacks}")
        files = (str(root / _CLAP_CONFIG), str(root / _CLAP_PREPROCESSOR), *weights)
        return ClapWeights("dir", source=str(root), files=files, detail=f"local CLAP directory {root}")
    if name.startswith(("/", "./", "../", "~")) or os.sep != "/" and os.sep in name or name.count("/") > 1:
        return ClapWeights("missing", detail=f"CLAP model directory {name!r} does not exist")
    try:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
    except ImportError:  # pragma: no cover - dependency of transformers
        return ClapWeights("missing", detail="huggingface_hub is not installed")
    except Exception as exc:  # noqa: BLE001 - HFValidationError
        return ClapWeights(
            "missing", detail=f"{name!r} is neither an existing directory nor a valid hub repo id ({exc})"
        )

    def in_cache(f: str) -> str | None:
        try:
            found = try_to_load_from_cache(repo_id=name, filename=f)
        except Exception:  # noqa: BLE001 - anything odd means "not cached"
            return None
        return found if isinstance(found, str) and os.path.isfile(found) else None

    config, pre = in_cache(_CLAP_CONFIG), in_cache(_CLAP_PREPROCESSOR)
    weights, why = _weights_in(in_cache)
    if config and pre and weights:
        return ClapWeights(
            "cached", source=name, files=(config, pre, *weights), detail=f"hub id {name} cached at {config}"
        )
    lacks = [f for f, p in ((_CLAP_CONFIG, config), (_CLAP_PREPROCESSOR, pre)) if not p]
    if weights is None:
        lacks.append(why)
    return ClapWeights(
        "remote",
        source=name,
        host=_hub_host(),
        detail=f"hub id {name} is not in the local Hugging Face cache (lacks {', '.join(lacks)})",
    )


def locate_clap_weights(name_or_path: str) -> tuple[bool, str]:
    """``(local, detail)``: whether the CLAP model loads without a network call (a complete local directory,
    or a hub id whose config, preprocessor config and weights are all cached), and why. Never loads
    anything and never touches the network."""
    where = find_clap_weights(name_or_path)
    return where.local, where.detail
