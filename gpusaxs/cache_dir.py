"""The disk cache folder, its size bound and the signed markers kept there: a leaf module
(issue 24), read by the matrix cache, the calibration validation cache and the CPU engine's
kernel cache."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from gpusaxs.io.atomic import atomic_write

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


def cache_max_bytes() -> int:
    """The disk cache's size bound in bytes ($GPUSAXS_CACHE_MAX_MB, default 2048 MB)."""
    try:
        mb = float(os.environ.get("GPUSAXS_CACHE_MAX_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0.0) * 2**20)


def _marker_key(folder: Path) -> bytes | None:
    """This user's secret for signing markers: ``<folder>/.key``, 32 random bytes, mode 0600,
    made on first use.  None when the folder cannot hold one (then nothing is remembered)."""
    path = Path(folder) / ".key"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(32))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # a planted link is not followed
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())  # the file read is the file checked
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None  # planted, or readable by others: not a secret
            key = fh.read(64)
        return key if len(key) == 32 else None
    except OSError:
        return None


def marker_valid(folder: str | os.PathLike[str], digest: str) -> bool:
    """True if ``<folder>/<digest[:40]>`` is a marker this user signed for ``digest``
    (an HMAC-SHA256 of it): a planted or empty file is not."""
    folder = Path(folder)
    key = _marker_key(folder)
    if key is None:
        return False
    try:
        with open(folder / digest[:40], "rb") as fh:
            got = fh.read(65)
    except OSError:
        return False
    want = hmac.new(key, digest.encode(), "sha256").hexdigest().encode()
    return hmac.compare_digest(got, want)


def write_marker(folder: str | os.PathLike[str], digest: str) -> bool:
    """Sign ``digest`` into ``<folder>/<digest[:40]>`` (written atomically); False if it could
    not be written."""
    folder = Path(folder)
    key = _marker_key(folder)
    if key is None:
        return False
    try:
        with atomic_write(folder / digest[:40], "wb") as fh:
            fh.write(hmac.new(key, digest.encode(), "sha256").hexdigest().encode())
    except OSError:
        return False
    return True
