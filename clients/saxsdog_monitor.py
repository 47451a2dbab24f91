"""saxsdog -m: the live plot window showing the latest curve."""

import os
import sys
import threading

import numpy as np


class LiveMonitor:
    """-m: a pyplot window showing the latest curve, refreshed from the main thread."""

    def __init__(self):
        import matplotlib

        if (
            not os.environ.get("DISPLAY")
            and not os.environ.get("WAYLAND_DISPLAY")
            and sys.platform.startswith("linux")
        ):
            raise RuntimeError("no display (DISPLAY is not set)")
        import matplotlib.pyplot as plt

        backend = matplotlib.get_backend().lower()
        if backend in ("agg", "pdf", "svg", "ps", "cairo", "template"):
            raise RuntimeError(f"matplotlib backend {backend!r} cannot open a window")
        self.plt = plt
        plt.ion()
        self.fig, self.ax = plt.subplots()
        (self.line,) = self.ax.plot([], [], lw=1)
        self.ax.set_yscale("log")
        self.ax.set_xlabel("q (1/nm)")
        self.ax.set_ylabel("I")
        self._latest = None
        self._shown = None
        self._lock = threading.Lock()

    def push(self, name, q, intensity):
        with self._lock:
            self._latest = (name, q, intensity)

    def refresh(self, seconds=0.2):
        """Redraw with the latest curve and run the GUI loop for ``seconds``."""
        with self._lock:
            latest = self._latest
        if latest is not None and latest is not self._shown:
            name, q, intensity = latest
            good = np.isfinite(intensity) & (intensity > 0)
            self.line.set_data(q[good], intensity[good])
            self.ax.relim()
            self.ax.autoscale_view()
            self.ax.set_title(name)
            self._shown = latest
        self.plt.pause(seconds)
