"""mm_platform: multimodal records → aligned records → embeddings → fused vectors → clusters and search,
orchestrated by Dagster, stored in a Parquet lake with DuckDB views and a Qdrant collection."""

import os

# Quiet, single-threaded tokenizers and no download progress bars in logs (users may override).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

__version__ = "0.1.0"
