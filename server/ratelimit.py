"""Log records under a flood: a token bucket per message kind."""

import logging
import threading
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """A logger that lets through ``burst`` records, then one per ``1/per_s`` s, and says how
    many it suppressed meanwhile (so a flood of bad events cannot flood the log)."""

    def __init__(self, logger, per_s=1.0, burst=5):
        self.logger, self.rate, self.burst = logger, float(per_s), float(burst)
        self._tokens, self._t, self._suppressed = float(burst), time.monotonic(), 0
        self._lock = threading.Lock()

    def log(self, level, msg, *args):
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            if self._tokens < 1.0:
                self._suppressed += 1
                return False
            self._tokens -= 1.0
            suppressed, self._suppressed = self._suppressed, 0
        if suppressed:
            msg = msg + f" ({suppressed} similar messages suppressed)"
        self.logger.log(level, msg, *args)
        return True

    def warning(self, msg, *args):
        return self.log(logging.WARNING, msg, *args)
