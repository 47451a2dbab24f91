"""Wait until files are completely written before handing them on (watch modes).

A detector or a copy writes a file over some time; watchers get several events for it.
:class:`FileSettler` turns those events into one call per complete version of a file, used by
saxsdog -w, saxsdogserver -w and saxsfeeder.
"""

import logging
import os
import threading
import time
from collections import OrderedDict

from gpusaxs.io.images import image_complete, is_image_file

__all__ = ["FileSettler", "DEFAULT_SETTLE_S", "DEFAULT_GIVE_UP_S"]

log = logging.getLogger("gpusaxs.settle")

DEFAULT_SETTLE_S = 0.5
DEFAULT_GIVE_UP_S = 60.0


def _sig(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _is_candidate(path):
    name = os.path.basename(path)
    return not (name.startswith(".") or name.endswith((".tmp", "~")))


class FileSettler:
    """Turns raw file-system events into one call of ``callback(path)`` per complete version.

    touch(path, closed): a file event; ``closed=True`` when the writer closed the file (or renamed
    it into place), so no settling time is needed.  A worker thread checks candidates: the file
    must exist, keep its (mtime, size) for ``settle`` seconds unless closed, and, if
    ``check_complete`` and it is an image, decode fully.  A version that never becomes complete
    is handed to ``on_give_up(path)`` after ``give_up`` seconds without change, or, without
    that hook, passed on to ``callback`` (so the receiver records the error).
    """

    def __init__(
        self,
        callback,
        settle=DEFAULT_SETTLE_S,
        check_complete=True,
        give_up=DEFAULT_GIVE_UP_S,
        poll=0.02,
        memory=200_000,
        on_give_up=None,
    ):
        self.callback = callback
        self.on_give_up = on_give_up
        self.settle = float(settle)
        self.check_complete = check_complete
        self.give_up = float(give_up)
        self.poll = float(poll)
        self.memory = int(memory)
        self._cand = OrderedDict()  # path -> [sig, since (monotonic), closed]
        self._done = OrderedDict()  # path -> sig published
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="file-settler", daemon=True)
        self._thread.start()

    def touch(self, path, closed=False):
        path = os.path.abspath(path)
        if not _is_candidate(path):
            return
        with self._cond:
            ent = self._cand.get(path)
            if ent is None:
                self._cand[path] = [None, time.monotonic(), closed]
            else:
                ent[2] = ent[2] or closed
            self._cond.notify()

    def pending(self):
        with self._cond:
            return len(self._cand)

    def stop(self):
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    def _complete(self, path):
        if not self.check_complete:
            return True
        if not is_image_file(path):
            return True
        return image_complete(path)

    def _run(self):
        while True:
            with self._cond:
                while not self._cand and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                items = list(self._cand.items())
            now = time.monotonic()
            for path, ent in items:
                try:
                    st = os.stat(path)
                except OSError:
                    with self._cond:
                        self._cand.pop(path, None)
                    continue
                if not os.path.isfile(path):
                    with self._cond:
                        self._cand.pop(path, None)
                    continue
                sig = _sig(st)
                with self._cond:
                    if self._done.get(path) == sig:  # this version was published already
                        self._cand.pop(path, None)
                        continue
                    if ent[0] != sig:  # changed since last look
                        ent[0], ent[1] = sig, now
                        if not ent[2]:
                            continue
                    closed = ent[2]
                    since = ent[1]
                if not closed and now - since < self.settle:
                    continue
                ok = self._complete(path)
                if not ok and now - since < self.give_up:
                    with self._cond:
                        ent[2] = False  # wait for the next change or settle
                    continue
                if not ok:
                    log.warning("%s: not a complete image after %.0f s", path, self.give_up)
                with self._cond:
                    if self._cand.get(path) is ent:
                        del self._cand[path]
                    self._done[path] = sig
                    self._done.move_to_end(path)
                    while len(self._done) > self.memory:
                        self._done.popitem(last=False)
                target = self.callback if ok or self.on_give_up is None else self.on_give_up
                try:
                    target(path)
                except Exception:
                    log.exception("callback failed for %s", path)
            with self._cond:
                if self._cand and not self._stop:
                    self._cond.wait(self.poll)
