"""The per-user cache directory: what tuneterm builds or fetches once and reuses (the demo model and data,
llama.cpp's converter). TUNETERM_CACHE_DIR overrides it, so tests and parallel users keep their own. The bottom
layer: it imports nothing of tuneterm."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    override = os.environ.get("TUNETERM_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tuneterm"))
