"""What the dashboard knows about the server: one thread polls ``stat`` and ``plot``.

:class:`ServerWatch` asks the server for ``stat`` every ``interval`` seconds over the signed
ZeroMQ protocol (:class:`gpusaxs.server.protocol.Client`; the secret stays in this process),
and for ``plot`` when the server has finished frames since the last curve.  It keeps what the page
shows: the last answer, the frames/s history, the recent curves, and whether the server answers.
The page reads it with :meth:`ServerWatch.snapshot` (a consistent copy, cheap).  No Bokeh here.
"""

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from gpusaxs.server.protocol import NoAnswer

from .polling import Poller

log = logging.getLogger("saxsleash.dashboard")

#: seconds over which the dashboard's own frames/s is measured (one chart point per poll)
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Curve:
    """One integrated curve as the server sent it (``plot`` answer)."""

    filename: str  #: image path relative to the server's base folder
    received: float  #: wall time (s since the epoch) the dashboard got it
    q: np.ndarray  #: scattering vector (nm^-1)
    intensity: np.ndarray  #: azimuthally averaged intensity (NaN for empty bins)


@dataclass
class Snapshot:
    """Everything the page draws, as of one poll."""

    url: str
    version: int = 0  #: +1 at every poll (the page redraws when it changes)
    answering: bool | None = None  #: None until the first try
    since: float | None = None  #: wall time ``answering`` last changed
    last_answer: float | None = None  #: wall time of the last answer
    problem: str | None = None  #: why the last poll failed, or the server's refusal
    data: dict = field(default_factory=dict)  #: ``data`` of the last ``stat`` answer
    rate: list = field(default_factory=list)  #: [(wall time, frames/s finished)]
    curves: list = field(default_factory=list)  #: [Curve], oldest first
    curve_note: str | None = None  #: why there is no curve (e.g. "no queue")
    curves_seen: int = 0  #: curves taken in since start (a new one: +1)


def parse_curve(answer, now=None):
    """The :class:`Curve` of a ``plot`` answer, or None when it carries no usable array."""
    data = answer.get("data") or {}
    rows = data.get("array") or []
    if len(rows) < 2 or not rows[0]:
        return None
    q = np.array([np.nan if v is None else v for v in rows[0]], dtype=float)
    intensity = np.array([np.nan if v is None else v for v in rows[1]], dtype=float)
    if q.shape != intensity.shape:
        return None
    return Curve(str(data.get("filename", "")), time.time() if now is None else now, q, intensity)


def finished_count(data):
    """Frames the server has finished: ``stat["images processed"]`` (curves) plus
    ``stat["images failed"]`` (error records; absent from older servers)."""
    st = data.get("stat") or {}
    value = st.get("images processed")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    failed = st.get("images failed")
    if isinstance(failed, (int, float)) and math.isfinite(failed):
        value += failed
    return value


class ServerWatch(Poller):
    """Poll a saxsdogserver in a thread and keep the page's state.

    Parameters
    ----------
    client : gpusaxs.server.protocol.Client
        Signed REQ client (its timeout bounds how long one poll waits; use ``retries=0``).
    interval : float
        Seconds between polls (default 0.5).
    n_curves : int
        Curves kept for the faded history and the waterfall (default 60).
    history_s : float
        Seconds of frames/s history kept for the chart (default 600).
    clock : callable, optional
        Returns (wall time, monotonic time) in s; for tests.
    """

    def __init__(self, client, interval=0.5, n_curves=60, history_s=600.0, clock=None):
        self._clock = clock or (lambda: (time.time(), time.monotonic()))
        self.client = client
        self.interval = float(interval)
        self.history_s = float(history_s)
        self._lock = threading.Lock()
        self._snap = Snapshot(url=client.url)
        self._curves = deque(maxlen=max(1, int(n_curves)))
        self._rate = deque()
        self._samples = deque()  # (monotonic, finished count)
        self._curve_key = None
        self._poller_init()

    def poll_once(self):
        """Ask ``stat`` (and ``plot`` when there are new frames); update the snapshot."""
        try:
            answer = self.client.request("stat", {})
        except NoAnswer:
            self._update(False, f"no answer within {self.client.timeout:g} s")
            return
        if not isinstance(answer, dict) or answer.get("result") != "stat":
            msg = answer.get("data", {}).get("Error") if isinstance(answer, dict) else None
            result = answer.get("result") if isinstance(answer, dict) else "?"
            self._update(True, f"{result}: {msg or answer}")
            return
        data = answer.get("data") or {}
        curve, note = self._maybe_plot(data)
        self._update(True, None, data, curve, note)

    def _maybe_plot(self, data):
        """Fetch the latest curve when the finished count or the queue changed since the last."""
        queue = data.get("queue") or {}
        key = (queue.get("directory"), (data.get("stat") or {}).get("pics"), finished_count(data))
        if key == self._curve_key:
            return None, ...
        try:
            answer = self.client.request("plot")
        except NoAnswer:
            return None, ...
        if not isinstance(answer, dict) or answer.get("result") != "plot data":
            self._curve_key = key
            data = answer.get("data") if isinstance(answer, dict) else None
            return None, str((data or {}).get("Error") or answer)
        self._curve_key = key
        return parse_curve(answer, self._clock()[0]), None

    def _update(self, answering, problem, data=None, curve=None, note=...):
        now, mono = self._clock()
        with self._lock:
            s = self._snap
            if s.answering is not answering:
                s.since = now
            s.answering = answering
            s.problem = problem
            s.version += 1
            if data is None:
                return
            s.last_answer = now
            s.data = data
            if note is not ...:
                s.curve_note = note
            if curve is not None:
                last = self._curves[-1] if self._curves else None
                if last is not None and last.q.shape != curve.q.shape:
                    self._curves.clear()  # another q grid: a new calibration
                if (
                    last is None
                    or last.filename != curve.filename
                    or not np.array_equal(last.intensity, curve.intensity, equal_nan=True)
                ):
                    self._curves.append(curve)
                    s.curves_seen += 1
                s.curve_note = None
            self._add_rate(now, mono, finished_count(data))

    def _add_rate(self, now, mono, count):
        """One frames/s point: finished frames over the last :data:`RATE_WINDOW_S` seconds."""
        if count is None:
            return
        if self._samples and count < self._samples[-1][1]:
            self._samples.clear()  # the server restarted: counts from zero again
        self._samples.append((mono, count))
        while len(self._samples) > 2 and mono - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        if mono - t0 > 0:
            self._rate.append((now, (count - c0) / (mono - t0)))
        while self._rate and now - self._rate[0][0] > self.history_s:
            self._rate.popleft()

    def snapshot(self):
        """A copy of the current state (lists copied; arrays shared, never modified)."""
        with self._lock:
            s = self._snap
            return Snapshot(
                url=s.url,
                version=s.version,
                answering=s.answering,
                since=s.since,
                last_answer=s.last_answer,
                problem=s.problem,
                data=s.data,
                rate=list(self._rate),
                curves=list(self._curves),
                curve_note=s.curve_note,
                curves_seen=s.curves_seen,
            )
