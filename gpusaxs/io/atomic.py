"""Atomic file writes: write to a hidden temporary file, then rename onto the target.

Readers (plot clients, file watchers) never see a half-written file: the target either keeps
its old content or has the complete new one. The temporary file lives in the target's folder
(so ``os.replace`` is a same-filesystem rename) and is named ``.<name>.<random>.tmp``, so
watchers can skip names that start with ``.`` or end with ``.tmp``.
"""

import contextlib
import os
import secrets

__all__ = ["atomic_write", "atomic_path", "atomic_save_bytes", "TMP_PREFIX", "TMP_SUFFIX"]

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"

_MODES = {"w": "w", "wt": "w", "wb": "wb"}


def _open_temp(path: "str | os.PathLike[str]", permissions: int = 0o666) -> tuple[int, str]:
    """Create a new, empty, exclusive temporary file next to ``path``; return (fd, tmp path).

    Created with ``permissions`` filtered by the umask (default 0o666, like a plain
    ``open(path, "w")``; 0o600 for secrets).
    """
    folder, name = os.path.split(os.fspath(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f"{TMP_PREFIX}{name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            return os.open(tmp, flags, permissions), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file for {path}")


def _fsync_dir(folder):
    """Flush the directory entry (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode="w", fsync=False, permissions=0o666, **open_kwargs):
    """Context manager yielding a file object whose content replaces ``path`` on success.

    ``mode`` is ``"w"`` (text, UTF-8 unless ``encoding`` is given) or ``"wb"``. ``open_kwargs``
    go to ``open`` (e.g. ``newline="\\n"``). With ``fsync=True`` the data (and the folder
    entry) is flushed to disk before/after the rename. ``permissions``: mode bits of the new
    file (before the umask). If the block raises, the temporary file is removed and ``path``
    is left untouched.
    """
    if mode not in _MODES:
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', not {mode!r}")
    mode = _MODES[mode]
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    path = os.fspath(path)
    fd, tmp = _open_temp(path, permissions)
    try:
        try:
            fh = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            raise
        with fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def atomic_path(path):
    """Context manager yielding a temporary path (same folder) that replaces ``path`` on success.

    For writers that want a file name rather than a file object (h5py, numpy.savez): write the
    whole file to the yielded path; on an exception it is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    fd, tmp = _open_temp(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save_bytes(path: "str | os.PathLike[str]", data: bytes, fsync: bool = False) -> None:
    """Write ``data`` (bytes-like) to ``path`` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as fh:
        fh.write(data)
