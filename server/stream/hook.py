"""The saxsdogserver side of streams: command-line options and starting the consumer."""

import logging
import os
import signal

from gpusaxs.calibration_model import Calibration
from gpusaxs.errors import GpusaxsError
from gpusaxs.grazing_config import read_grazing_config
from gpusaxs.grazing_outputs import GrazingStage
from gpusaxs.integrator import Integrator
from gpusaxs.robust_curves import AveragedIntegrator

from .consumer import IDLE_TIMEOUT_S, StreamConsumer

log = logging.getLogger("saxsdogserver.stream")


def add_arguments(parser):
    g = parser.add_argument_group("detector stream (docs/streams.md)")
    g.add_argument(
        "--detector",
        metavar="tcp://HOST:PORT",
        default=None,
        help="consume this detector's ZeroMQ stream (DECTRIS Stream V2 port 31001, "
        "V1 port 9999); one NeXus file series_<id>.nxs per series in -o "
        "(default: the base folder)",
    )
    g.add_argument(
        "--stream-version",
        type=int,
        choices=[1, 2],
        default=2,
        help="2: CBOR messages (default); 1: legacy multipart JSON",
    )
    g.add_argument(
        "--calibration",
        metavar="FILE",
        default=None,
        help="calibration of the stream at start (else: the one 'saxsleash new' "
        "sends); a series whose image or pixel size disagrees is refused",
    )
    g.add_argument(
        "--stream-buffer",
        type=int,
        default=256,
        metavar="FRAMES",
        help="frames buffered between receiving and decoding (default 256)",
    )
    g.add_argument(
        "--stream-hwm",
        type=int,
        default=64,
        metavar="MESSAGES",
        help="ZeroMQ receive high-water mark (default 64; frames wait in --stream-buffer)",
    )
    g.add_argument(
        "--stream-policy",
        choices=["block", "drop"],
        default="block",
        help="full buffer: block (default: backpressure to the detector) or drop "
        "(each dropped frame gets an error record)",
    )
    g.add_argument(
        "--stream-threads",
        type=int,
        default=2,
        metavar="N",
        help="frame decoding threads (default 2)",
    )
    g.add_argument(
        "--stream-timeout",
        type=float,
        default=IDLE_TIMEOUT_S,
        metavar="S",
        help="end a series that received no message for S seconds, its missing frames "
        f"reported (default {IDLE_TIMEOUT_S:g})",
    )
    g.add_argument(
        "--chi",
        action="store_true",
        help="also write one .chi per stream image (series_<id>/image_<n>.chi)",
    )


def _stop_server(reason):
    """A stream stage died: say so and stop the server (its SIGTERM path: files closed)."""
    log.error("%s: stopping the server", reason)
    os.kill(os.getpid(), signal.SIGTERM)


def start_consumer(args, service):
    """A started StreamConsumer for ``args.detector`` (None without --detector).

    Raises ValueError with a one-line reason for bad options or an unreadable calibration.
    """
    if not args.detector:
        return None
    if not args.stream_timeout > 0:
        raise ValueError(f"--stream-timeout must be positive, not {args.stream_timeout}")
    integrator = None
    if args.calibration:
        try:
            cal = Calibration.from_file(args.calibration)
            grazing = read_grazing_config(args.calibration, cal.imagesize)  # maps and cuts
        except (GpusaxsError, OSError) as exc:
            raise ValueError(f"--calibration {args.calibration}: {exc}") from None
        backend = args.backend
        built = {}

        def integrator():
            if "i" not in built:
                integ = Integrator(cal, backend=backend).warm_up()
                average = service.average  # --average: sigma-clipped or median curves
                integ = integ if average is None else AveragedIntegrator(integ, average)
                built["i"] = integ if grazing is None else GrazingStage(integ, grazing)
            return built["i"]

        integrator()  # build now: a bad mask file is reported at start, not per series
    out = args.out or args.basedir
    try:
        consumer = _consumer(StreamConsumer, args, out, integrator)
    except OSError as exc:
        raise ValueError(f"output folder {out}: {exc}") from None
    service.stream = consumer
    consumer.start()
    log.warning(
        "consuming Stream V%d from %s into %s",
        args.stream_version,
        args.detector,
        os.path.realpath(out),
    )
    return consumer


def _consumer(cls, args, out, integrator):
    return cls(
        args.detector,
        out,
        version=args.stream_version,
        integrator=integrator,
        batch_size=args.batch_size,
        decode_threads=args.stream_threads,
        buffer_frames=args.stream_buffer,
        hwm=args.stream_hwm,
        policy=args.stream_policy,
        chi=args.chi,
        idle_timeout_s=args.stream_timeout,
        resume=integrator is not None,
        on_fatal=_stop_server,
    )
