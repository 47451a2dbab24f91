"""Per-series bookkeeping of a detector stream: counts, image-id accounting, error records.

Every image id of a series ends as exactly one curve row (counted in ``integrated``) or one
error record (``errors``, written to ``series_<id>.errors.jsonl`` next to the NeXus file and
kept, the latest ones, for ``saxsleash stat``).  Ids announced by ``number_of_images`` that
never arrive are ``missing`` (reported at the series' end); a second message with an id
already received is a ``duplicate`` (an error record, not integrated twice).  Thread-safe.
"""

import json
import os
import threading
import time
from collections import deque

RECENT_ERRORS = 20
RATE_WINDOW_S = 2.0


class Series:
    """Counters of one series.  ``lag``: frames received but not yet integrated or in error."""

    def __init__(self, series_id, unique_id="", error_log=None):
        self.series_id = series_id
        self.unique_id = unique_id
        self.state = "receiving"  # receiving, refused, ended, done
        self.expected = None  # number_of_images of the start message
        self.started = False
        self.received = 0
        self.integrated = 0
        self.flushed = 0
        self.errors = 0
        self.duplicates = 0
        self.dropped = 0
        self.malformed = 0  # bad messages of this series that name no image id
        self.missing = None  # known at the end message
        self.missing_ids = []
        self.file = None
        self.refused = None  # reason
        self.first_time = None
        self.last_time = None
        self._ids = set()
        self._error_log = error_log
        self._times = deque()  # (monotonic time, integrated count) for the rate

    def rate(self, now=None):
        """Integrated frames/s over the last ~2 s."""
        now = time.monotonic() if now is None else now
        while len(self._times) > 1 and now - self._times[0][0] > RATE_WINDOW_S:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._times[0], self._times[-1]
        return 0.0 if t1 <= t0 else (n1 - n0) / (t1 - t0)

    def info(self):
        lag = self.received - self.integrated - self.errors
        rate = self.rate()
        return {
            "series_id": self.series_id,
            "unique_id": self.unique_id,
            "state": self.state,
            "expected": self.expected,
            "received": self.received,
            "integrated": self.integrated,
            "flushed": self.flushed,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "malformed": self.malformed,
            "missing": self.missing,
            "rate": round(rate, 2),
            "lag": max(lag, 0),
            "lag s": round(lag / rate, 3) if rate > 0 else None,
            "file": self.file,
            "refused": self.refused,
        }


class SeriesBook:
    """All series seen by one consumer, plus the messages that belong to none.

    Parameters
    ----------
    out_dir : folder of the error logs (``series_<id>.errors.jsonl``, ``stream.errors.jsonl``);
        None keeps the records in memory only.
    keep : how many finished series stay listed in :meth:`info`.
    """

    def __init__(self, out_dir=None, keep=20):
        self.out_dir = out_dir
        self.keep = int(keep)
        self._lock = threading.RLock()
        self._series = {}
        self._order = deque()
        self.malformed = 0  # messages attributable to no series
        self.recent = deque(maxlen=RECENT_ERRORS)
        self._changed = threading.Condition(self._lock)

    # -- internals ------------------------------------------------------------------------------
    def _get(self, series_id, unique_id=""):
        s = self._series.get(series_id)
        if s is None:
            s = Series(series_id, unique_id)
            self._series[series_id] = s
            self._order.append(series_id)
            while len(self._order) > self.keep:
                old = self._order.popleft()
                self._series.pop(old, None)
        return s

    def _log(self, series_id, record):
        self.recent.append(record)
        if self.out_dir is None:
            return
        name = "stream.errors.jsonl" if series_id is None else f"series_{series_id}.errors.jsonl"
        try:
            with open(os.path.join(self.out_dir, name), "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError:
            pass

    # -- events ---------------------------------------------------------------------------------
    def start(self, series_id, unique_id="", expected=None):
        """A start message; a series id seen again (restart of a numbering) starts afresh."""
        with self._lock:
            old = self._series.get(series_id)
            if old is not None and (old.started or old.received):
                self._series.pop(series_id)
                self._order.remove(series_id)
            s = self._get(series_id, unique_id)
            s.started = True
            s.expected = expected
            s.first_time = time.time()
            self._changed.notify_all()
            return s

    def receive(self, series_id, image_id):
        """An image arrived: False if its id was already received (duplicate)."""
        with self._lock:
            s = self._get(series_id)
            s.received += 1
            s.last_time = time.time()
            self._changed.notify_all()
            if image_id in s._ids:
                s.duplicates += 1
                return False
            s._ids.add(image_id)
            return True

    def error(self, series_id, image_id, reason, kind="error"):
        """One error record: of an image (it is accounted for, not integrated), or of a message
        that names a series but no image id, or none at all (counted as ``malformed``)."""
        rec = {
            "time": time.time(),
            "series_id": series_id,
            "image_id": image_id,
            "kind": kind,
            "error": str(reason)[:500],
        }
        with self._lock:
            if series_id is None:
                self.malformed += 1
            elif image_id is None:
                self._get(series_id).malformed += 1
            else:
                s = self._get(series_id)
                s.errors += 1
                if kind == "dropped":
                    s.dropped += 1
            self._log(series_id, rec)
            self._changed.notify_all()

    def refuse(self, series_id, reason):
        with self._lock:
            s = self._get(series_id)
            s.state = "refused"
            s.refused = str(reason)
            self._log(
                series_id,
                {
                    "time": time.time(),
                    "series_id": series_id,
                    "image_id": None,
                    "kind": "refused",
                    "error": str(reason),
                },
            )
            self._changed.notify_all()

    def is_refused(self, series_id):
        with self._lock:
            s = self._series.get(series_id)
            return None if s is None else s.refused

    def is_started(self, series_id):
        with self._lock:
            s = self._series.get(series_id)
            return s is not None and s.started

    def integrated(self, series_id, n):
        with self._lock:
            s = self._get(series_id)
            s.integrated += n
            s._times.append((time.monotonic(), s.integrated))
            self._changed.notify_all()

    def flushed(self, series_id, n_rows, path=None):
        with self._lock:
            s = self._get(series_id)
            s.flushed = n_rows
            if path is not None:
                s.file = path
            self._changed.notify_all()

    def end(self, series_id):
        """The end message was received: compute the missing ids."""
        with self._lock:
            s = self._get(series_id)
            if s.state != "refused":
                s.state = "ended"
            if s.expected is not None:
                missing = [i for i in range(s.expected) if i not in s._ids]
                s.missing = len(missing)
                s.missing_ids = missing
                if missing:
                    self._log(
                        series_id,
                        {
                            "time": time.time(),
                            "series_id": series_id,
                            "image_id": None,
                            "kind": "missing",
                            "error": f"{len(missing)} image ids never arrived",
                            "ids": missing[:10000],
                        },
                    )
            self._changed.notify_all()
            return s

    def done(self, series_id):
        """Every frame of an ended series is written (the NeXus file is closed)."""
        with self._lock:
            s = self._get(series_id)
            if s.state != "refused":
                s.state = "done"
            self._changed.notify_all()

    # -- queries --------------------------------------------------------------------------------
    def get(self, series_id):
        with self._lock:
            s = self._series.get(series_id)
            return None if s is None else s.info()

    def info(self):
        with self._lock:
            return {
                "series": [self._series[k].info() for k in self._order if k in self._series],
                "malformed": self.malformed,
                "recent errors": list(self.recent),
            }

    def wait(self, predicate, timeout):
        """Block until ``predicate(book)`` is true (evaluated under the lock) or timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)
