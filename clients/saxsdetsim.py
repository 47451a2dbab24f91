"""saxsdetsim: a DECTRIS-like detector simulator publishing Stream V2 (CBOR) or Stream V1 frames.

Binds a ZeroMQ PUSH socket (as the detector does; consumers connect a PULL socket) and sends,
per series, a start message, the images and an end message.  The frames are image files or the
demo's synthetic silver-behenate PILATUS 1M series (:mod:`gpusaxs.demo`), converted to uint16
or uint32 like an EIGER: negative pixels (module gaps, bad pixels) become the type's maximum.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from gpusaxs.calibration_model import Calibration
from gpusaxs.demo import DEMO_CALIBRATION, calibrant_profile, pilatus_gaps
from gpusaxs.geometry import polarization_factor, q_map
from gpusaxs.io.atomic import atomic_write
from gpusaxs.io.images import read_image
from gpusaxs.server.stream import v1, v2

DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def to_detector_dtype(frame, dtype):
    """Counts -> ``dtype``; negative pixels and counts above the range -> the type's maximum."""
    dtype = np.dtype(dtype)
    top = np.iinfo(dtype).max
    f = np.asarray(frame)
    out = np.where((f < 0) | (f >= top), top, f).astype(dtype)
    return out


def demo_frames(n_distinct=8, dtype=np.uint32, seed=0, calibration=None):
    """``n_distinct`` synthetic calibrant frames (demo PILATUS 1M silver behenate) as ``dtype``.

    The frames of :func:`gpusaxs.demo.synthetic_frame` (Poisson counts of the AgBh profile,
    module gaps, 200 bad pixels), with the expected counts computed once for all frames.
    """
    cal = calibration or Calibration.from_dict(dict(DEMO_CALIBRATION, MaskFile=None))
    rng = np.random.default_rng(seed)
    expected = calibrant_profile(q_map(cal)) * polarization_factor(cal)
    gaps = pilatus_gaps(expected.shape)
    frames = []
    for _ in range(n_distinct):
        frame = rng.poisson(expected).astype(np.int64)
        frame[gaps] = -1
        frame.ravel()[rng.integers(0, frame.size, 200)] = -2
        frames.append(to_detector_dtype(frame, dtype))
    return frames


def file_frames(paths, dtype):
    return [to_detector_dtype(read_image(p), dtype) for p in paths]


class Encoder:
    """Messages of one stream version; the frame payloads are encoded once per distinct frame."""

    def __init__(self, version, compression):
        self.version, self.compression = version, compression

    def start(self, series_id, unique_id, shape, pixel_size_m, n, **geo):
        if self.version == 2:
            return [v2.encode_start(series_id, unique_id, shape, pixel_size_m, n, **geo)]
        return v1.encode_start(
            series_id,
            shape,
            pixel_size_m,
            n,
            **{k: v for k, v in geo.items() if k in ("beam_center", "distance_m", "wavelength_A")},
        )

    def images(self, series_id, unique_id, frames, n):
        """Generator of the n image messages (frame i % len(frames) for image_id i)."""
        import cbor2

        if self.version == 2:
            datas = [v2.image_data(f, self.compression) for f in frames]
            for i in range(n):
                yield [
                    v2.dumps(
                        {
                            "type": "image",
                            "series_id": int(series_id),
                            "series_unique_id": str(unique_id),
                            "image_id": i,
                            "real_time": [1, 1],
                            "start_time": [i, 1],
                            "stop_time": [i + 1, 1],
                            "series_date": cbor2.CBORTag(0, "2026-01-01T00:00:00Z"),
                            "data": {"threshold_1": datas[i % len(datas)]},
                        }
                    )
                ]
        else:
            encoded = [v1.encode_image(series_id, 0, f, self.compression) for f in frames]
            for i in range(n):
                parts = list(encoded[i % len(encoded)])
                parts[0] = json.dumps(
                    {
                        "htype": "dimage-1.0",
                        "series": int(series_id),
                        "frame": i,
                        "hash": "",
                    }
                ).encode()
                yield parts

    def end(self, series_id, unique_id):
        if self.version == 2:
            return [v2.encode_end(series_id, unique_id)]
        return v1.encode_end(series_id)


def default_bind(version):
    """Loopback, as the server binds: another host must be named with --bind."""
    return "tcp://127.0.0.1:31001" if version == 2 else "tcp://127.0.0.1:9999"


def send(sock, parts):
    if len(parts) == 1:
        sock.send(parts[0], copy=False)
    else:
        sock.send_multipart(parts, copy=False)


def publish_series(
    sock,
    encoder,
    frames,
    n,
    series_id,
    pixel_size_m,
    rate=None,
    unique_id=None,
    geometry=None,
    progress=None,
):
    """Send one series (start, n images, end) on a bound PUSH socket; returns frames/s sent."""
    unique_id = unique_id if unique_id is not None else f"sim-{os.getpid()}-{series_id}"
    shape = frames[0].shape
    send(
        sock,
        encoder.start(series_id, unique_id, shape, pixel_size_m, n, **(geometry or {})),
    )
    t0 = time.perf_counter()
    for i, parts in enumerate(encoder.images(series_id, unique_id, frames, n)):
        if rate:
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing of the simulated detector
        send(sock, parts)
        if progress is not None:
            progress(i + 1)
    dt = time.perf_counter() - t0
    send(sock, encoder.end(series_id, unique_id))
    return n / dt if dt > 0 else float("inf")


EXAMPLES = """\
examples:
  saxsdetsim --frames 1000                 1000 synthetic AgBh PILATUS 1M frames, Stream V2,
                                           bslz4, uint32, as fast as possible on tcp://127.0.0.1:31001
  saxsdetsim --stream-version 1 --bind tcp://127.0.0.1:9999 --compression lz4 --dtype uint16 \\
             --rate 100 --frames 500       a Stream V1 detector at 100 frames/s
  saxsdetsim -c cal.json frames/*.tif      publish image files (the calibration gives the
                                           pixel size and geometry of the start message)

then, e.g.:  saxsdogserver --detector tcp://localhost:31001 --calibration cal.json -o out/ base/
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsdetsim",
        description="Detector stream simulator (DECTRIS Stream V2 / V1 over ZeroMQ PUSH).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "files",
        nargs="*",
        help="image files to publish (default: generated silver-behenate frames of the demo)",
    )
    p.add_argument(
        "--bind",
        default=None,
        help="endpoint to bind (default tcp://127.0.0.1:31001 for V2, tcp://127.0.0.1:9999 "
        "for V1: loopback; tcp://*:PORT for all interfaces)",
    )
    p.add_argument(
        "--stream-version",
        type=int,
        choices=[1, 2],
        default=2,
        help="2: CBOR messages (default); 1: legacy multipart JSON",
    )
    p.add_argument(
        "--compression",
        choices=["bslz4", "lz4", "none"],
        default="bslz4",
        help="frame compression (default bslz4)",
    )
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="uint32",
        help="pixel type (default uint32); the type's maximum marks gaps/bad pixels",
    )
    p.add_argument(
        "-n",
        "--frames",
        type=int,
        default=100,
        help="images per series (default 100; files are repeated cyclically)",
    )
    p.add_argument(
        "--distinct",
        type=int,
        default=8,
        help="distinct generated frames, repeated cyclically (default 8)",
    )
    p.add_argument("--series", type=int, default=1, help="number of series (default 1)")
    p.add_argument("--series-id", type=int, default=1, help="first series id (default 1)")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="HZ",
        help="frames per second (default: as fast as the consumer takes them)",
    )
    p.add_argument(
        "-c",
        "--calibration",
        metavar="FILE",
        help="calibration for the start message (default: the demo's)",
    )
    p.add_argument("--hwm", type=int, default=1000, help="send high-water mark (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of generated frames")
    p.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {pid, url} as JSON to FILE once bound",
    )
    return p


def main(argv=None):
    import zmq

    args = build_parser().parse_args(argv)
    if args.calibration:
        cal = Calibration.from_file(args.calibration)
    else:
        cal = Calibration.from_dict(dict(DEMO_CALIBRATION, MaskFile=None))
    dtype = DTYPES[args.dtype]
    frames = (
        file_frames(args.files, dtype)
        if args.files
        else demo_frames(args.distinct, dtype, args.seed, cal)
    )
    if tuple(frames[0].shape) != tuple(cal.imagesize):
        print(
            f"saxsdetsim: frames are {frames[0].shape}, the calibration says "
            f"{tuple(cal.imagesize)}",
            file=sys.stderr,
        )
        return 2
    bind = args.bind or default_bind(args.stream_version)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, args.hwm)
    sock.bind(bind)
    url = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    if args.ready_file:
        with atomic_write(args.ready_file, "w") as fh:
            json.dump({"pid": os.getpid(), "url": url}, fh)
    print(
        f"saxsdetsim: Stream V{args.stream_version} on {url}, {args.series} series x "
        f"{args.frames} frames {frames[0].shape[0]}x{frames[0].shape[1]} {args.dtype} "
        f"{args.compression}",
        file=sys.stderr,
    )
    px = tuple(p * 1e-6 for p in cal.pixel_size_um)
    h = cal.imagesize[0]
    geometry = {
        "beam_center": (cal.beam_center[1], h - cal.beam_center[0]),
        "distance_m": cal.distance_mm * 1e-3,
        "wavelength_A": cal.wavelength_A,
    }
    enc = Encoder(args.stream_version, args.compression)
    try:
        for k in range(args.series):
            sid = args.series_id + k
            fps = publish_series(
                sock,
                enc,
                frames,
                args.frames,
                sid,
                px,
                rate=args.rate,
                geometry=geometry,
            )
            print(
                f"saxsdetsim: series {sid}: {args.frames} frames sent ({fps:.0f} frames/s)",
                file=sys.stderr,
            )
    except KeyboardInterrupt:
        return 130
    finally:
        sock.close(linger=-1)  # deliver what is queued before exiting
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
