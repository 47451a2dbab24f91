"""A small progress bar for command-line tools: files/s and ETA on stderr.

The bar is drawn only on a terminal (and not when silent); the final summary line is printed
whenever the tool is not silent, terminal or not.
"""

import sys
import threading
import time

__all__ = ["Progress", "format_duration"]


def format_duration(seconds):
    """'4.2 s', '42 s', '3 min 05 s', '1 h 02 min' for a duration in seconds."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class Progress:
    """Thread-safe progress counter with an optional one-line bar.

    total: number of items expected (may grow with ``add_total``; None = unknown).
    unit: what is counted ("files", "rows", ...).
    silent: no bar and no summary.  enabled: draw the bar (default: stream is a tty).
    """

    def __init__(
        self,
        total=None,
        *,
        silent=False,
        stream=None,
        enabled=None,
        label="",
        min_interval=0.1,
        unit="files",
    ):
        self.stream = sys.stderr if stream is None else stream
        self.silent = silent
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.enabled = enabled and not silent
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.failed = 0
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def add_total(self, n=1):
        """Expect ``n`` more files."""
        with self._lock:
            self.total = (self.total or 0) + n
        self._draw()

    def advance(self, n=1, failed=False):
        """Count ``n`` files as finished (``failed`` ones count separately)."""
        with self._lock:
            if failed:
                self.failed += n
            else:
                self.done += n
        self._draw()

    def set_done(self, n):
        """Set the number of finished items (e.g. rows of a build) and redraw."""
        with self._lock:
            self.done = int(n)
        self._draw()

    @property
    def elapsed(self):
        return time.monotonic() - self._t0

    def rate(self):
        """Finished files per second since the start."""
        el = self.elapsed
        return (self.done + self.failed) / el if el > 0 else 0.0

    def line(self):
        """The bar's text: count, total, files/s and ETA."""
        finished = self.done + self.failed
        rate = self.rate()
        parts = []
        if self.label:
            parts.append(self.label)
        if self.total:
            frac = min(1.0, finished / self.total)
            width = 24
            fill = int(round(frac * width))
            parts.append(f"[{'#' * fill}{'.' * (width - fill)}] {finished}/{self.total}")
        else:
            parts.append(f"{finished} {self.unit}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0 and finished < self.total:
            parts.append(f"ETA {format_duration((self.total - finished) / rate)}")
        if self.failed:
            parts.append(f"{self.failed} failed")
        return "  ".join(parts)

    def _draw(self, force=False):
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self.min_interval:
                return
            self._last_draw = now
            text = self.line()
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._drawn = True

    def clear(self):
        """Erase the bar (before printing a message on the same stream)."""
        if self.enabled and self._drawn:
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()

    def message(self, text):
        """Print ``text`` on its own line without mangling the bar."""
        self.clear()
        with self._lock:
            self.stream.write(text.rstrip("\n") + "\n")
            self.stream.flush()
            self._last_draw = 0.0

    def finish(self, summary):
        """Erase the bar and print ``summary`` unless silent."""
        self.clear()
        self.enabled = False
        if not self.silent:
            self.stream.write(summary.rstrip("\n") + "\n")
            self.stream.flush()
