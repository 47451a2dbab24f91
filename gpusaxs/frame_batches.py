"""The frame pipelines' common core (issue 24): a batch gathered from what is ready, each frame
integrated once (a batch that fails is retried frame by frame, so that one bad frame fails
alone), and a ledger where every frame ends exactly once: processed, failed or dropped.

Used by :class:`gpusaxs.pipeline.FramePipeline` (saxsdog and the server's processing queue),
the stream consumer (``gpusaxs.server.stream.consumer``) and the Dask tasks
(:mod:`gpusaxs.distributed`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._typing import AnyArray
from .integrator import Integrator

__all__ = ["NOTHING", "FrameLedger", "gather", "integrate_once", "sums_batch_call"]

#: ``gather``'s "no item left over"
NOTHING = object()

#: ``integrate(stack) -> (intensity, err or None)``, each (B, n_bins)
IntegrateFn = Callable[[AnyArray], "tuple[Any, Any]"]


def gather(
    first: Any, source: queue.Queue[Any], limit: int, belongs: Callable[[Any], bool] | None = None
) -> tuple[list[Any], Any]:
    """``first`` and the items ``source`` holds right now, up to ``limit`` in all (never waits
    to fill a batch).

    An item ``belongs`` refuses (a stop marker, a frame of another series or dtype) ends the
    batch and is returned as the second value, for the caller to handle next; else
    :data:`NOTHING`.
    """
    batch, left = [first], NOTHING
    while len(batch) < limit:
        try:
            item = source.get_nowait()
        except queue.Empty:
            break
        if belongs is not None and not belongs(item):
            left = item
            break
        batch.append(item)
    return batch, left


def sums_batch_call(integrator: Any) -> bool:
    """True when ``integrator``'s batch call is the plain ``Integrator.integrate_batch_error``
    (the engine's sums, then the error model): a pipeline may then skip it for the engine's own
    calls (queued batches, compressed frames).  False for an averaging or grazing-incidence
    integrator, whose rows are not the engine's sums alone, and for any other wrapper, unless
    its class says ``batch_call_is_sums = True`` (a class attribute: a wrapper forwarding its
    attributes does not pass it on)."""
    cls = type(integrator)
    if getattr(cls, "integrate_batch_error", None) is Integrator.integrate_batch_error:
        return True
    return getattr(cls, "batch_call_is_sums", False) is True


def integrate_once(
    stack: AnyArray, integrate: IntegrateFn
) -> tuple[AnyArray | None, AnyArray | None, dict[int, Exception]]:
    """Integrate a stack (B, H, W) in one call; if that call raises, each frame alone.

    Returns ``(intensity, err, failed)``: (B, n_bins) arrays (None when no frame succeeded;
    ``err`` None when ``integrate`` gives none; the rows of failed frames NaN) and ``failed``,
    frame index -> the exception that frame raised on its own. A frame is never integrated
    twice after it succeeded alone, and never reported both ways.
    """
    try:
        intensity, err = integrate(stack)
        return np.asarray(intensity), None if err is None else np.asarray(err), {}
    except Exception as exc:  # noqa: BLE001 - isolated below, one record per frame
        if len(stack) == 1:
            return None, None, {0: exc}
    rows: list[Any] = [None] * len(stack)
    err_rows: list[Any] = [None] * len(stack)
    failed: dict[int, Exception] = {}
    for k in range(len(stack)):
        try:
            one, one_err = integrate(stack[k : k + 1])
        except Exception as exc:  # noqa: BLE001 - this frame's own record
            failed[k] = exc
            continue
        rows[k] = np.asarray(one)[0]
        err_rows[k] = None if one_err is None else np.asarray(one_err)[0]
    good = [k for k in range(len(stack)) if k not in failed]
    if not good:
        return None, None, failed
    intensity = np.full((len(stack),) + rows[good[0]].shape, np.nan)
    has_err = err_rows[good[0]] is not None
    err = np.full_like(intensity, np.nan) if has_err else None
    for k in good:
        intensity[k] = rows[k]
        if err is not None:
            err[k] = err_rows[k]
    return intensity, err, failed


class FrameLedger:
    """Counts of submitted frames and how each ended: every frame ends exactly once.

    ``end`` more frames than were submitted raises RuntimeError (a frame reported twice is a
    bug, not a statistic). Thread-safe; :meth:`wait_idle` blocks until nothing is pending.
    """

    KINDS = ("processed", "failed", "dropped")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.submitted = 0
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.first: float | None = None
        self.last: float | None = None

    @property
    def pending(self) -> int:
        """Frames submitted and not yet ended."""
        return self.submitted - sum(self.counts.values())

    def submit(self, n: int = 1) -> None:
        with self.cond:
            if self.first is None:
                self.first = time.perf_counter()
            self.submitted += n

    def end(self, kind: str, n: int = 1) -> None:
        """``n`` frames ended as ``kind`` ("processed", "failed" or "dropped")."""
        with self.cond:
            if kind not in self.counts:
                raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
            if n > self.pending:
                raise RuntimeError(
                    f"{n} frame(s) ended as {kind} with only {self.pending} pending: a frame "
                    "was reported twice"
                )
            self.counts[kind] += n
            if kind == "processed" and n:
                self.last = time.perf_counter()
            self.cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted frame has ended; False if ``timeout`` (s) ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self.pending > 0:
                if deadline is None:
                    self.cond.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.cond.wait(left)
        return True
