"""``mm-platform serve``: the search and cluster explorer (FastAPI app in :mod:`mm_platform.serve.app`)."""
