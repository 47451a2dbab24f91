"""Files of the stream writer inside its output folder, never through a symbolic link.

The output folder is resolved once (:func:`output_root`); every file is then created or appended
to under that real folder with ``O_NOFOLLOW`` (a planted link is refused, not followed) and
must be a regular file (a planted FIFO is refused, not waited on).  Sub-folders (``--chi``) go
through :func:`gpusaxs.server.curves.confined_dir`, the curve writer's confinement.
"""

import errno
import os
import stat

from ..curves import confined_dir

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def output_root(out_dir):
    """Real path of the output folder, created if missing."""
    os.makedirs(out_dir, exist_ok=True)
    return os.path.realpath(out_dir)


def _open(path, flags):
    fd = os.open(path, flags, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{path} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_line(root, name, line):
    """Append ``line`` (str, newline added) to the file ``name`` directly in ``root``."""
    fd = _open(os.path.join(root, name), _FLAGS | os.O_APPEND)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def reserve(root, name):
    """Create the empty file ``name`` in ``root``; False if the name exists (even as a link)."""
    try:
        os.close(_open(os.path.join(root, name), _FLAGS | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def subfolder(root, name):
    """Real path of the folder ``root/name`` (created), refused if it leads out of ``root``."""
    return confined_dir(root, os.path.join(root, name))
