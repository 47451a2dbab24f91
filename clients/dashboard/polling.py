"""A background thread that calls ``poll_once`` every ``interval`` seconds until stopped: the
dashboard's watchers (the server's stat and curves, a folder's maps) are its subclasses."""

import logging
import threading
import time

log = logging.getLogger("saxsleash.dashboard")

__all__ = ["Poller"]


class Poller:
    """Subclasses set ``interval`` (s) and define ``poll_once``; ``thread_name`` names the
    thread. A failing poll is logged and the next one comes as planned."""

    thread_name = "dashboard-poll"
    interval = 1.0

    def _poller_init(self):
        self._stop = threading.Event()
        self._thread = None

    def poll_once(self):
        raise NotImplementedError

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self):
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # never let the page freeze on a surprise
                log.exception("%s failed", self.thread_name)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))
