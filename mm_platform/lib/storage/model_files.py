"""Where fitted models live under the lake root (files next to the tables, not tables themselves)."""

from __future__ import annotations

from pathlib import Path

#: Fitted tabular encoder states, under the lake root.
TABULAR_STATE_DIR = "_models/tabular"


def tabular_state_dir(lake) -> Path:
    """Where the fitted tabular encoder states live (one JSON per version, ``current.json`` the one in use)."""
    return lake.root / TABULAR_STATE_DIR
