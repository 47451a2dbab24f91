"""The server's curve files: confined writes, calibration key, leftovers of a kill.

* :func:`confined_dir` resolves (and creates, one checked level at a time) the folder of a curve
  and refuses it unless its real path is inside the server's root (the base folder, or -o);
  a ``work`` folder that is a symbolic link out of the base is refused, not followed.
  The curve is then written under that real folder (temporary name + rename; a rename replaces
  a symbolic link at the final name, it never writes through it).
* :class:`CurveWriter` is the pipeline's writer: the .chi title line carries the calibration
  key (``gpusaxs.io.chi.write_chi(calibration_key=...)``, docs/ARCHITECTURE.md; read back
  with ``read_chi_key``: a resume redoes a curve whose key differs), a failed write names the
  output path (disk full, permissions).
* :func:`sweep_tmp` removes the hidden temporary files a killed writer left behind.
"""

import errno
import os
import re
import time
from pathlib import Path

from gpusaxs.io import chi


def inside(path, root):
    """True if the real path ``path`` is ``root`` or below it (both already real paths)."""
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


#: hidden temporary files of gpusaxs.io.atomic: .<name>.<8 hex>.tmp
TMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: a temporary file younger than this may belong to a write in progress: left alone
TMP_MIN_AGE_S = 2.0


class OutsideRoot(OSError):
    """A curve folder whose real path is outside the server's root."""


def confined_dir(root, folder):
    """Real path of ``folder`` (created if missing), which must be inside ``root`` (a real path).

    Each missing level is created with ``os.mkdir`` under an already checked real folder, and
    checked again after creation, so no symbolic link leads a write out of ``root``.
    """
    folder = os.path.abspath(folder)
    missing = []
    cur = folder
    while not os.path.lexists(cur):
        parent = os.path.dirname(cur)
        if parent == cur:
            break
        missing.append(os.path.basename(cur))
        cur = parent
    real = os.path.realpath(cur)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            errno.ENOENT, f"the server's output folder {root} does not exist (any more)"
        )
    if not inside(real, root):
        raise OutsideRoot(
            errno.EACCES,
            f"curve folder {folder} leads outside the server's folder {root} (symbolic link?)",
        )
    for name in reversed(missing):
        real = os.path.join(real, name)
        try:
            os.mkdir(real)
        except FileExistsError:
            pass
        if os.path.realpath(real) != real:
            raise OutsideRoot(errno.EACCES, f"curve folder {real} was replaced by a link")
    if not os.path.isdir(real):
        raise NotADirectoryError(errno.ENOTDIR, f"curve folder {folder} is not a folder")
    return real


class CurveWriter:
    """``writer(image_path, out_path, q, I, err)`` for the FramePipeline (see module doc)."""

    def __init__(self, root, calibration_key=None, grazing=None, title=""):
        self.root = os.path.realpath(root)
        self.key = calibration_key
        self.grazing = grazing  # a GrazingStage: its maps and cuts beside each curve
        self.title = title  # after the image name (the averaging's parameters, --average)

    def __call__(self, image_path, out_path, q, intensity, error):
        out_path = Path(out_path)
        try:
            folder = confined_dir(self.root, out_path.parent)
            if self.grazing is not None:
                name = Path(image_path).name
                target = Path(folder) / out_path.name
                self.grazing.write(target, name, intensity, error, self.key or None)
                intensity, error = intensity[: len(q)], error[: len(q)]
            chi.write_chi(
                os.path.join(folder, out_path.name),
                q,
                intensity,
                error=error,
                title=f"{Path(image_path).name}  {self.title}"
                if self.title
                else Path(image_path).name,
                calibration_key=self.key or None,
            )
        except OutsideRoot:
            raise
        except OSError as exc:  # disk full, read-only, permissions: say which file
            raise OSError(
                exc.errno, f"cannot write the curve {out_path}: {exc.strerror or exc}"
            ) from exc


def sweep_tmp(folder, min_age=TMP_MIN_AGE_S, now=None):
    """Remove hidden temporary files (``.name.<hex>.tmp``) older than ``min_age`` s in ``folder``.

    Returns the number removed; a missing folder or a vanished file is not an error.
    """
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if not TMP_RE.match(e.name):
            continue
        try:
            if (
                not e.is_file(follow_symlinks=False)
                or now - e.stat(follow_symlinks=False).st_mtime < min_age
            ):
                continue
            os.unlink(e.path)
            removed += 1
        except OSError:
            continue
    return removed
