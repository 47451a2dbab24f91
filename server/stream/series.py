"""Per-series bookkeeping of a detector stream: counts, image-id accounting, error records.

Every image id of a series ends as exactly one curve row (counted in ``integrated``) or one
error record (``errors``, written to ``series_<id>.errors.jsonl`` next to the NeXus file and
kept, the latest ones, for ``saxsleash stat``).  Ids announced by ``number_of_images`` that
never arrive are ``missing`` (reported at the series' end); a second message with an id
already received is a ``duplicate`` (an error record, not integrated twice).  Thread-safe.

Bounded whatever the messages announce: received ids are kept as ranges (:class:`.idset.IdRanges`)
and the missing ones are counted and listed range by range (at most ``MISSING_RANGES`` ranges in
the record); at most ``keep`` finished series and ``MAX_STRAYS`` series never started stay listed,
and a series that is still receiving is never evicted (at most ``MAX_ACTIVE`` of them).
"""

import json
import logging
import threading
import time
from collections import deque

from .files import append_line
from .idset import IdRanges

log = logging.getLogger("saxsdogserver.stream")

RECENT_ERRORS = 20
RATE_WINDOW_S = 2.0
#: ranges of missing ids listed in a ``missing`` record (the count is always complete)
MISSING_RANGES = 1000
#: the ids themselves are listed too when there are at most this many
MISSING_IDS = 10000
#: series receiving at once (started, not ended); a start beyond this is refused
MAX_ACTIVE = 64
#: series known only from strays (images of a series whose start this server never saw)
MAX_STRAYS = 20


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
        self.missing_ranges = []  # [[first, last + 1], ...], the first MISSING_RANGES
        self.ended_by = None  # "end message" or "inactivity"
        self.file = None
        self.refused = None  # reason
        self.first_time = None
        self.last_time = None
        self.last_activity = time.monotonic()
        self.resumed = None  # {"file": ..., "rows": ...} when resumed after a restart
        self._ids = IdRanges()
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
            "ended by": self.ended_by,
            "resumed": self.resumed,
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
            self._evict()
        return s

    def _evict(self):
        """Drop the oldest finished series beyond ``keep``, strays beyond ``MAX_STRAYS``; never a
        series that is still receiving."""
        series = self._series

        def drop(pred, excess):
            for sid in list(self._order):
                if excess <= 0:
                    return
                if pred(series[sid]):
                    self._order.remove(sid)
                    del series[sid]
                    excess -= 1

        strays = sum(1 for s in series.values() if not s.started and s.state == "receiving")
        drop(lambda s: not s.started and s.state == "receiving", strays - MAX_STRAYS)
        finished = sum(1 for s in series.values() if s.state != "receiving")
        drop(lambda s: s.state != "receiving", min(finished, len(series) - self.keep))

    def active(self):
        """Ids of the started series still receiving (no end message yet)."""
        with self._lock:
            return [k for k, s in self._series.items() if s.started and s.state == "receiving"]

    def _log(self, series_id, record):
        self.recent.append(record)
        if self.out_dir is None:
            return
        name = "stream.errors.jsonl" if series_id is None else f"series_{series_id}.errors.jsonl"
        try:
            append_line(self.out_dir, name, json.dumps(record))
        except OSError as exc:  # a planted link or FIFO, disk full: the record stays in memory
            log.warning("cannot write the error record to %s: %s", name, exc)

    # -- events ---------------------------------------------------------------------------------
    def start(self, series_id, unique_id="", expected=None):
        """A start message; a series id seen again (restart of a numbering) starts afresh.

        Refused (``state`` "refused") when ``MAX_ACTIVE`` other series are still receiving.
        """
        with self._lock:
            old = self._series.get(series_id)
            if old is not None and (old.started or old.received):
                self._series.pop(series_id)
                self._order.remove(series_id)
            busy = len(self.active())
            s = self._get(series_id, unique_id)
            s.started = True
            s.expected = expected
            s.first_time = time.time()
            s.last_activity = time.monotonic()
            if busy >= MAX_ACTIVE:
                self.refuse(series_id, f"{busy} series are still receiving (at most {MAX_ACTIVE})")
            self._changed.notify_all()
            return s

    def resume(self, series_id, unique_id, file, rows):
        """A series whose start this server never saw, continued after a restart: ``rows`` (an
        IdRanges) are the ids already in ``file``; one ``resumed`` record names them."""
        with self._lock:
            s = self.start(series_id, unique_id, None)
            if rows is not None:
                s._ids = rows
            s.resumed = {"file": file, "rows": len(s._ids)}
            self._log(
                series_id,
                {
                    "time": time.time(),
                    "series_id": series_id,
                    "image_id": None,
                    "kind": "resumed",
                    "error": f"resumed after a restart: {len(s._ids)} rows already in {file}"
                    if file
                    else "resumed after a restart: no earlier file of this series",
                },
            )
            return s

    def receive(self, series_id, image_id):
        """An image arrived: False if its id was already received (duplicate)."""
        with self._lock:
            s = self._get(series_id)
            s.received += 1
            s.last_time = time.time()
            s.last_activity = time.monotonic()
            self._changed.notify_all()
            if not s._ids.add(image_id):
                s.duplicates += 1
                return False
            return True

    def idle(self, timeout_s, now=None):
        """Ids of the started, receiving series with no message for ``timeout_s`` seconds."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return [
                k
                for k, s in self._series.items()
                if s.started and s.state == "receiving" and now - s.last_activity > timeout_s
            ]

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

    def end(self, series_id, by="end message"):
        """The series ended (its end message, or ``by`` "inactivity"): count the missing ids
        (``0 .. number_of_images-1``, or up to the largest id received when none was announced)
        and write one ``missing`` record listing them as ranges."""
        with self._lock:
            s = self._get(series_id)
            if s.ended_by is not None:  # ended already (by inactivity): one missing record
                return s
            if s.state != "refused":
                s.state = "ended"
            s.ended_by = by
            stop = s.expected
            if stop is None and s.resumed is not None:
                top = s._ids.max()
                stop = None if top is None else top + 1
            if stop is not None:
                ranges, n = s._ids.gaps(stop, MISSING_RANGES)
                s.missing = n
                s.missing_ranges = [[a, b] for a, b in ranges]
                if n:
                    why = "" if by == "end message" else f" (series ended by {by})"
                    self._log(
                        series_id,
                        {
                            "time": time.time(),
                            "series_id": series_id,
                            "image_id": None,
                            "kind": "missing",
                            "error": f"{n} image ids never arrived{why}",
                            "ranges": s.missing_ranges,
                            "ranges complete": sum(b - a for a, b in ranges) == n,
                            "ids": [i for a, b in ranges for i in range(a, b)]
                            if n <= MISSING_IDS
                            else None,
                        },
                    )
            self._changed.notify_all()
            return s

    def note(self, series_id, kind, reason):
        """A record about a series that accounts for no image (e.g. a failed ``.chi`` copy)."""
        with self._lock:
            self._log(
                series_id,
                {
                    "time": time.time(),
                    "series_id": series_id,
                    "image_id": None,
                    "kind": kind,
                    "error": str(reason)[:500],
                },
            )
            self._changed.notify_all()

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
