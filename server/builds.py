"""Integrator builds beside the command loop: one future per key, cancellable between chunks.

Building the integration matrix of a big calibration takes seconds to minutes.  The server never
builds in its command loop: :meth:`BuildManager.get` returns a :class:`Build` (a future) at
once, starting a build thread when no build for that key is running or cached.  The build reports
its progress after every chunk of image rows (``gpusaxs.matrix.build_matrix``'s ``progress``
hook) and stops there with :class:`gpusaxs.matrix.BuildCancelled` once cancelled, so ``abort``
and SIGTERM act within one chunk (well under a second).  Finished integrators are kept in an LRU
of ``size`` keys.  Reusable by any service that needs an integrator per calibration (queues,
live streams).
"""

import logging
import threading
import time
from collections import OrderedDict

from gpusaxs.matrix import BuildCancelled

log = logging.getLogger("saxsdogserver")

__all__ = ["Build", "BuildManager", "BuildCancelled"]


class Build:
    """The future of one integrator build (thread-safe).

    state: "building", "done", "failed" or "cancelled".  progress: (done rows, total rows).
    """

    def __init__(self, key, label=""):
        self.key = key
        self.label = label
        self.state = "building"
        self.progress = (0, 0)
        self.started = time.monotonic()
        self.finished_at = None
        self._result = None
        self._error = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    # -- the build thread's side -------------------------------------------------------------
    def report(self, done, total):
        """Progress hook for ``build_matrix``: records progress, raises BuildCancelled if asked."""
        self.progress = (int(done), int(total))
        if self._cancel.is_set():
            raise BuildCancelled(f"build cancelled at row {done} of {total}")

    def cancelled(self):
        """True once cancel() was called (``should_stop`` hook)."""
        return self._cancel.is_set()

    def _finish(self, state, result=None, error=None):
        self._result, self._error = result, error
        self.state = state
        self.finished_at = time.monotonic()
        self._done.set()

    # -- the users' side -----------------------------------------------------------------------
    def cancel(self):
        """Ask the build to stop at its next chunk boundary (no effect once finished)."""
        if not self._done.is_set():
            self._cancel.set()

    def done(self):
        return self._done.is_set()

    def wait(self, timeout=None):
        return self._done.wait(timeout)

    def result(self, timeout=None, should_stop=None, poll=0.05):
        """The integrator; waits up to ``timeout`` s, polling ``should_stop()`` every ``poll`` s.

        Raises BuildCancelled (cancelled, or ``should_stop()`` became true), TimeoutError, or the
        build's own exception.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(poll):
            if should_stop is not None and should_stop():
                raise BuildCancelled("stopped waiting for the build")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the integrator build did not finish in time")
        if self._error is not None:
            raise self._error
        return self._result

    def info(self):
        done, total = self.progress
        end = self.finished_at or time.monotonic()
        return {
            "key": self.key[0][:16] if isinstance(self.key, tuple) else str(self.key)[:16],
            "label": self.label,
            "state": self.state,
            "progress": (done / total) if total else 0.0,
            "rows": [done, total],
            "elapsed": round(end - self.started, 3),
        }


class BuildManager:
    """One build per key, run in a thread; an LRU of ``size`` finished integrators.

    ``make(build)`` constructs the integrator; it must pass ``build.report`` as the
    ``progress`` hook of the matrix build (and may check ``build.cancelled()``).
    """

    def __init__(self, size=4):
        self.size = int(size)
        self._cached = OrderedDict()  # key -> finished Build
        self._running = {}  # key -> Build in progress
        self._lock = threading.Lock()

    def __contains__(self, key):
        with self._lock:
            return key in self._cached

    def get(self, key, make, label=""):
        """The Build of ``key``: cached, running, or started now (never blocks on a build)."""
        with self._lock:
            b = self._cached.get(key)
            if b is not None:
                self._cached.move_to_end(key)
                return b
            b = self._running.get(key)
            if b is not None and not b.cancelled():
                return b
            b = Build(key, label)
            self._running[key] = b
        t = threading.Thread(target=self._run, args=(b, make), name="integrator-build", daemon=True)
        t.start()
        return b

    def _run(self, b, make):
        t0 = time.perf_counter()
        try:
            integ = make(b)
            if b.cancelled():
                raise BuildCancelled("build cancelled")
        except BuildCancelled as exc:
            log.info("integrator build cancelled after %.2f s", time.perf_counter() - t0)
            self._forget(b)
            b._finish("cancelled", error=exc)
            return
        except BaseException as exc:  # MemoryError included: reported to the waiting queue
            self._forget(b)
            b._finish("failed", error=exc)
            return
        with self._lock:
            if self._running.get(b.key) is b:
                del self._running[b.key]
            self._cached[b.key] = b
            self._cached.move_to_end(b.key)
            while len(self._cached) > self.size:
                self._cached.popitem(last=False)
        b._finish("done", result=integ)

    def _forget(self, b):
        with self._lock:
            if self._running.get(b.key) is b:
                del self._running[b.key]

    def running(self):
        """Info dicts of the builds in progress (for stat)."""
        with self._lock:
            return [b.info() for b in self._running.values()]

    def cancel_all(self):
        with self._lock:
            builds = list(self._running.values())
        for b in builds:
            b.cancel()
        return builds

    def join(self, timeout):
        """Wait up to ``timeout`` s for every running build to end; True if all ended."""
        deadline = time.monotonic() + timeout
        with self._lock:
            builds = list(self._running.values())
        return all(b.wait(max(0.0, deadline - time.monotonic())) for b in builds)
