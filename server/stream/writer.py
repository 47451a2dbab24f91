"""The stream consumer's writer stage: one live NeXus file per series, ``.chi`` copies on request.

:class:`SeriesWriter` takes the integrated rows of :class:`~.consumer.StreamConsumer` and writes
``series_<series_id>.nxs`` in the output folder with :class:`gpusaxs.io.nexus.NXazintWriter` in
live mode (rows appended as they come, flushed at least every second); with ``chi=True`` also
``series_<id>/image_<id>.chi`` per image.  With grazing-incidence outputs (a GrazingStage as the
integrator) the maps and cuts go into the same file (:mod:`.gi_series`).  Files are written only
inside the output folder (:mod:`.files`); every failure becomes an error record or a note in the
series' book (:class:`~.series.SeriesBook`).
"""

import logging
import os
import queue
import time

from gpusaxs.io.chi import write_chi
from gpusaxs.io.nexus import NXazintWriter
from gpusaxs.matrix_cache import matrix_key

from .files import reserve, subfolder
from .gi_series import GrazingSeries, grazing_stage

log = logging.getLogger("saxsdogserver.stream")


def calibration_key(integ):
    key = getattr(integ, "matrix_key", None)
    if callable(key):
        key = key()
    if key is None:
        key = matrix_key(integ.calibration)
    return str(key)


class SeriesWriter:
    """Stage 4: the rows of every series into its file (``run`` is the stage's loop).

    ``out_dir``: the output folder (already checked); ``url``: the detector's, recorded as the
    files' input; ``book``: the consumer's SeriesBook.
    """

    def __init__(self, out_dir, url, book, chi=False):
        self.out_dir = out_dir
        self.url = url
        self.book = book
        self.chi = bool(chi)

    def series_path(self, series_id):
        """A new file in the output folder: never an earlier series' file, never a link."""
        name, n = f"series_{series_id}.nxs", 1
        while not reserve(self.out_dir, name):
            n += 1
            name = f"series_{series_id}.{n}.nxs"
        return os.path.join(self.out_dir, name)

    def run(self, rows, stop):
        """Write what comes from ``rows`` until ``stop`` comes; then every file is closed."""
        writers = {}  # series_id -> [writer, rows, q, last flush]
        while True:
            try:
                item = rows.get(timeout=0.25)
            except queue.Empty:
                item = None
            now = time.monotonic()
            for sid, w in writers.items():  # rows reach the file at least every second
                if w[1] != w[3] and now - w[4] >= 0.5:
                    try:
                        w[0].flush()
                    except Exception as exc:  # noqa: BLE001 - disk full: said, rows kept
                        self.book.note(sid, "write", f"flush failed: {exc}")
                    w[3], w[4] = w[1], now
                    self.book.flushed(sid, w[1])
            if item is None:
                continue
            if item is stop:
                for sid in list(writers):
                    self._close_writer(sid, writers.pop(sid))
                return
            kind = item[0]
            if kind == "start":
                start, integ, key = item[1], item[2], item[3]
                sid = start.series_id
                if sid in writers:  # same id again: finish the old file
                    self._close_writer(sid, writers.pop(sid))
                try:
                    stage = grazing_stage(integ)
                    gi = None if stage is None else GrazingSeries(stage)
                    path = self.series_path(sid)
                    key = key or calibration_key(integ)
                    w = NXazintWriter(
                        path,
                        integ.q,
                        radial_unit="q_nm^-1",
                        calibration=integ.calibration,
                        calibration_key=key,
                        inputs=[f"{self.url} series {sid} {start.unique_id}".strip()],
                        # --average: the clipping / percentile parameters, as option_* fields
                        options=dict(getattr(integ, "params", None) or {}),
                        live=True,
                        flush_interval_s=1.0,
                        extra=None if gi is None else gi.header,
                    )
                except Exception as exc:  # noqa: BLE001 - reported as the series' refusal
                    self.book.refuse(sid, f"cannot create the series file: {exc}")
                    continue
                writers[sid] = [w, 0, integ.q, 0, now, key, gi]
                self.book.flushed(sid, 0, os.path.basename(path))
            elif kind == "end":
                sid = item[1].series_id
                if sid in writers:
                    self._close_writer(sid, writers.pop(sid))
                self.book.done(sid)
            else:
                _, sid, intensity, err, ids = item
                w = writers.get(sid)
                if w is None:
                    for i in ids:
                        self.book.error(sid, int(i), "no open output file for the series", "write")
                    continue
                gi = w[6]
                try:
                    if gi is not None:  # the maps and cuts first: the curves' ids come last
                        w[0].extend(gi.appender(intensity, err))
                        intensity, err = gi.curves(intensity), gi.curves(err)
                    w[0].append(intensity, err, ids)
                except Exception as exc:
                    log.exception("cannot append to %s", w[0].path)
                    for i in ids:
                        self.book.error(sid, int(i), f"cannot write the row: {exc}", "write")
                    continue
                w[1] += len(ids)
                self.book.integrated(sid, len(ids))
                if self.chi:
                    try:
                        self._write_chi(sid, w[2], intensity, err, ids, w[5])
                    except Exception as exc:  # noqa: BLE001 - the rows are in the file
                        log.warning("series %s: .chi copies failed: %s", sid, exc)
                        self.book.note(sid, "chi", f".chi copies of ids {ids[0]}..: {exc}")

    def _close_writer(self, sid, w):
        try:
            w[0].close()
            self.book.flushed(sid, w[1])
        except Exception:
            log.exception("cannot close %s", w[0].path)

    def _write_chi(self, sid, q, intensity, err, ids, key):
        folder = subfolder(self.out_dir, f"series_{sid}")
        for k, i in enumerate(ids):
            path = os.path.join(folder, f"image_{int(i):06d}.chi")
            write_chi(
                path,
                q,
                intensity[k],
                err[k],
                title=f"series {sid} image {int(i)}",
                calibration_key=key,
            )
