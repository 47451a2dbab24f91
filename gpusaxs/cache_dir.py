"""The disk cache folder and its size bound: a leaf module (issue 24), read by the matrix
cache, the calibration validation cache and the CPU engine's kernel cache."""

from __future__ import annotations

import os
from pathlib import Path

#: the disk cache's default size bound (MB); $GPUSAXS_CACHE_MAX_MB overrides
DEFAULT_MAX_MB = 2048


def default_cache_dir() -> Path | None:
    """The disk cache folder: $GPUSAXS_CACHE_DIR, else $XDG_CACHE_HOME/gpusaxs, else
    ~/.cache/gpusaxs.  None when $GPUSAXS_CACHE_DIR is "off" or "none" (no disk cache)."""
    value = os.environ.get("GPUSAXS_CACHE_DIR")
    if value:
        return None if value.strip().lower() in ("off", "none", "0") else Path(value)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "gpusaxs"


def cache_max_bytes():
    """The disk cache's size bound in bytes ($GPUSAXS_CACHE_MAX_MB, default 2048 MB)."""
    try:
        mb = float(os.environ.get("GPUSAXS_CACHE_MAX_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0.0) * 2**20)
