"""Where numba keeps the compiled CPU kernels: the user's cache, beside the matrix cache.

Compiling the banded kernels takes 10-15 s per pixel type and variant; numba's own cache sits
in ``__pycache__`` beside the installed source (lost at every reinstall, often not writable)
and is keyed by the source file's modification time.  :func:`install` puts the kernels of this
package in ``<matrix cache folder>/numba/<digest>``, keyed by the content of this package's
sources and the numba version instead, so a reinstall of the same version keeps them and a
new version gets its own folder.  ``$NUMBA_CACHE_DIR`` (numba's own setting) wins when set; no
disk cache (``GPUSAXS_CACHE_DIR=off``): numba's default.
"""

import hashlib
import os

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: numba's saves stay unlocked
    fcntl = None  # type: ignore[assignment]

from gpusaxs.cache_dir import default_cache_dir

__all__ = ["install", "kernel_cache_dir", "lock_saves", "needs_compile"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_SOURCES = ("banded.py", "simd.py", "kernel_cache.py", "robust_kernel.py", "gather.py")
_STATE: dict = {}


def _digest():
    import numba

    h = hashlib.sha256(numba.__version__.encode())
    for name in _SOURCES:
        with open(os.path.join(_HERE, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def kernel_cache_dir():
    """The folder of the compiled kernels, or None (numba's default place)."""
    if "dir" not in _STATE:
        base = default_cache_dir()
        if os.environ.get("NUMBA_CACHE_DIR") or base is None:
            _STATE["dir"] = None
        else:
            _STATE["dir"] = os.path.join(str(base), "numba", _digest())
    return _STATE["dir"]


def install():
    """Route the caching of this package's numba functions to :func:`kernel_cache_dir` (call
    before the kernels are defined).  Falls back to numba's default if its internals differ."""
    if _STATE.get("installed"):
        return
    _STATE["installed"] = True
    folder = kernel_cache_dir()
    if folder is None:
        return
    try:
        from numba.core import caching

        # public from numba 0.59 on; 0.58 (pyproject's lower bound) names it with a "_"
        base = getattr(caching, "UserProvidedCacheLocator", None)
        if base is None:
            base = caching._UserProvidedCacheLocator
    except (ImportError, AttributeError):  # pragma: no cover - another numba
        return
    stamp = _digest()

    class KernelCacheLocator(base):  # type: ignore[misc, valid-type, unused-ignore]
        """numba's user-folder locator, stamped by content instead of mtime."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = folder

        def get_source_stamp(self):
            return stamp

        @classmethod
        def from_function(cls, py_func, py_file):
            if os.path.dirname(os.path.abspath(py_file)) != _HERE:
                return None
            self = cls(py_func, py_file)
            try:
                self.ensure_cache_path()
            except OSError:
                return None
            return self

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    if isinstance(classes, list):
        classes.insert(0, KernelCacheLocator)
        lock_saves(caching, folder)


#: the lock file beside the kernels: held while numba saves a kernel into the folder
SAVE_LOCK = ".save.lock"


def lock_saves(caching, folder):
    """Hold an exclusive lock on ``folder``/SAVE_LOCK while numba saves a compiled kernel there.

    numba's ``IndexDataCacheFile.save`` reads the folder's index, names a new entry's data file
    by counting the entries, then writes the index and the file: two processes saving different
    variants of one kernel at the same moment (two commands started together on a fresh
    install) could write the same file, and one would later load the other's machine code
    (numba issue #10128).  Saves elsewhere are left as numba does them; no lock where the
    platform has no ``fcntl``."""
    if fcntl is None:  # pragma: no cover - not POSIX
        return
    cls = getattr(caching, "IndexDataCacheFile", None)
    save = getattr(cls, "save", None)
    if save is None or getattr(save, "gpusaxs_locked", False):
        return
    root = os.path.abspath(folder)

    def locked_save(self, key, data):
        path = os.path.abspath(str(getattr(self, "_cache_path", "")))
        if path != root:
            return save(self, key, data)
        with open(os.path.join(path, SAVE_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            return save(self, key, data)

    locked_save.gpusaxs_locked = True
    cls.save = locked_save


def needs_compile(dispatcher, args):
    """True if calling ``dispatcher`` with ``args`` will compile (not in memory, not in the
    disk cache); False if not; None if this numba's internals do not tell."""
    import numba

    try:
        sig = tuple(numba.typeof(a) for a in args)
        if any(tuple(o) == sig for o in dispatcher.overloads):
            return False
        cache = dispatcher._cache
        index = cache._cache_file._load_index()
        magic = dispatcher.targetctx.codegen().magic_tuple()
        return not any(key[0] == sig and key[1] == magic for key in index)
    except Exception:
        return None
