"""saxsdogserver: the command line of the Saxsdog network server (sections 5.2, 5.4).

Options, the network configuration, the sockets and the command loop: a ZeroMQ REP socket
answers signed commands through a :class:`~.service.SaxsdogService`; a SUB socket takes "new
file" events from a saxsfeeder (-f or the config's FeederUrl), or the server watches the queue's
folder itself (-w, :mod:`.watcher`).  Integration runs in a
:class:`~.processing_queue.ProcessingQueue` (dispatcher thread + FramePipeline threads), so the
command loop never waits for frames.  SIGINT/SIGTERM: stop accepting, finish the frames in
flight, close the sockets, terminate the context.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading

from gpusaxs.io.atomic import atomic_write
from gpusaxs.robust_curves import add_average_arguments, average_params

from . import protocol as P
from .auth import DEFAULT_WINDOW_S
from .netconfig import (
    DEFAULT_SERVER_PORT,
    NetConfigError,
    load_config,
    permission_warning,
    url_port,
)
from .service import SaxsdogService
from .stream.hook import add_arguments as add_stream_arguments
from .stream.hook import start_consumer
from .watcher import Watcher
from .wire import TooManyFrames, configure_command_socket, recv_request

log = logging.getLogger("saxsdogserver")

DEFAULT_PORT = 7777

EXAMPLES = """\
examples:
  saxsdogserver /data                      serve the folder tree /data on port 7777 of this
                                           computer (127.0.0.1)
  saxsdogserver --bind '*' /data           serve the network (consider "Curve": true, saxsnetconf)
  saxsdogserver -p 7777 -f tcp://beamline:5556 /data
                                           take new-file events from a saxsfeeder
  saxsdogserver -w -t 4 -o /data/curves /data
                                           watch the queue folder itself, 4 reader threads,
                                           curves mirrored below /data/curves
  saxsdogserver --config lab.json --bind 127.0.0.1 -p 0 --ready-file ready.json /tmp/base
                                           loopback only, any free port (written to ready.json)
  saxsdogserver --detector tcp://eiger:31001 --calibration cal.json -o /data/curves /data
                                           integrate every image of the detector's stream
                                           into /data/curves/series_<id>.nxs

Every directory a request names is resolved inside the base folder; curves go to a folder
'work' in each image's folder unless -o is given.  Authentication uses the Secret of the network
configuration (saxsnetconf).
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsdogserver",
        description="The Saxsdog network server (integration service).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "basedir",
        nargs="?",
        default=".",
        help="base folder: every directory of a request must be inside it (default .)",
    )
    p.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help=f"port of the command service (default: port of ServerUrl in the "
        f"config, else {DEFAULT_PORT}; 0 = any free port)",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this computer only; '*' for every "
        'interface: then consider "Curve": true in the configuration)',
    )
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        default=2,
        help="reader threads of the frame pipeline (default 2)",
    )
    p.add_argument(
        "-b", "--batch-size", type=int, default=16, help="frames per integration call (default 16)"
    )
    p.add_argument(
        "-f",
        "--feeder",
        metavar="tcp://hostname:port",
        default=None,
        help="subscribe to this saxsfeeder (default: FeederUrl of the config when -w "
        "is not given; 'none' to disable)",
    )
    p.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="watch the queue's folder for new files (recursively) with file system events",
    )
    p.add_argument(
        "-o",
        "--out",
        metavar="OUTDIR",
        default=None,
        help="write curves below OUTDIR (mirroring the queue folder; created when missing); "
        "default: a folder 'work' in each image's folder",
    )
    p.add_argument(
        "--config", metavar="FILE", help="network configuration (default ~/.saxsdognetwork)"
    )
    p.add_argument("--name", help="server entry of a list-form configuration")
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "numpy", "cupy"],
        help="integration backend (default auto: GPU when present)",
    )
    p.add_argument(
        "--time-window",
        type=float,
        default=DEFAULT_WINDOW_S,
        metavar="S",
        help=f"accepted clock difference of requests (default {DEFAULT_WINDOW_S:g} s)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=10.0,
        metavar="S",
        help="retry unreadable, recently changed images for up to S seconds (default 10)",
    )
    p.add_argument(
        "--max-request",
        type=int,
        default=P.MAX_REQUEST_BYTES,
        metavar="BYTES",
        help=f"largest JSON request (default {P.MAX_REQUEST_BYTES})",
    )
    p.add_argument(
        "--max-attachment",
        type=int,
        default=P.MAX_ATTACHMENT_BYTES,
        metavar="BYTES",
        help=f"largest attachment (default {P.MAX_ATTACHMENT_BYTES})",
    )
    p.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {pid, port, url} as JSON to FILE once serving (scripts/tests)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: every command and build step (DEBUG)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="warnings and errors only (default: routine events too, INFO)",
    )
    add_average_arguments(p)  # sigma-clipped or median curves instead of the mean
    add_stream_arguments(p)
    return p


def _write_ready(path, info):
    with atomic_write(path, "w") as fh:
        json.dump(info, fh)


def _serve_one(rep, service):
    """Receive one request, answer it; never raises (MemoryError included)."""
    import zmq

    try:
        frames = recv_request(rep, 1 + service.max_attachments)
    except zmq.Again:
        return
    except TooManyFrames as exc:
        answer = P.error_response(exc)
    except MemoryError:
        log.error("out of memory receiving a request")
        answer = P.error_response("out of memory receiving the request; try again later")
    else:
        answer = service.handle(frames)
        del frames
    try:
        data = P.encode_response(answer)
    except MemoryError:
        data = P.encode_response(P.error_response("out of memory encoding the answer"))
    except (TypeError, ValueError) as exc:
        log.exception("cannot encode an answer")
        data = P.encode_response(P.error_response(f"internal error: {exc}"))
    try:
        rep.send(data)
    except zmq.ZMQError as exc:  # peer gone; the REP socket is ready for the next one
        log.info("cannot send an answer: %s", exc)


def serve(args):
    import zmq

    try:
        cfg = load_config(args.config, args.name)
    except NetConfigError as exc:
        print(f"saxsdogserver: {exc}", file=sys.stderr)
        return 2
    warning = permission_warning(cfg.path)
    if warning:
        print(f"saxsdogserver: refusing to start: {warning}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else url_port(cfg.server_url, DEFAULT_SERVER_PORT)
    feeder_url = args.feeder
    if feeder_url is None and not args.watch:
        feeder_url = cfg.feeder_url
    if feeder_url in ("none", ""):
        feeder_url = None
    try:
        service = SaxsdogService(
            args.basedir,
            cfg.secret,
            window=args.time_window,
            out_dir=args.out,
            threads=args.threads,
            batch_size=args.batch_size,
            backend=args.backend,
            settle=args.settle,
            max_request=args.max_request,
            max_attachment=args.max_attachment,
            average=average_params(
                args.average, args.clip_thres, args.clip_iter, args.percentile, args.error_model
            ),
        )
    except ValueError as exc:
        print(f"saxsdogserver: {exc}", file=sys.stderr)
        return 2

    try:
        stream = start_consumer(args, service)
    except ValueError as exc:
        print(f"saxsdogserver: {exc}", file=sys.stderr)
        return 2

    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    # bounded before authentication: frame size, queued messages per peer (server/wire.py)
    configure_command_socket(
        rep,
        max(args.max_request, args.max_attachment),
        curve_secret=cfg.secret if cfg.curve else None,
    )
    try:
        if port == 0:
            rep.bind(f"tcp://{args.bind}:*")
        else:
            rep.bind(f"tcp://{args.bind}:{port}")
    except zmq.ZMQError as exc:
        print(f"saxsdogserver: cannot bind port {port}: {exc}", file=sys.stderr)
        rep.close()
        ctx.term()
        return 2
    endpoint = rep.getsockopt_string(zmq.LAST_ENDPOINT)
    bound_port = int(endpoint.rsplit(":", 1)[1])
    sub = None
    if feeder_url:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)  # events of ~200 bytes
        sub.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # a path and a signature, never more
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(feeder_url)
    watcher = None
    if args.watch:
        watcher = Watcher(service)
        service.on_new_queue = watcher.watch

    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    poller = zmq.Poller()
    poller.register(rep, zmq.POLLIN)
    if sub is not None:
        poller.register(sub, zmq.POLLIN)
    log.info(
        "serving %s on %s%s%s%s",
        service.base,
        endpoint,
        f", feeder {feeder_url}" if feeder_url else "",
        ", watching" if args.watch else "",
        ", CURVE" if cfg.curve else "",
    )
    if args.ready_file:
        _write_ready(args.ready_file, {"pid": os.getpid(), "port": bound_port, "url": endpoint})
    try:
        while not stop.is_set():
            try:
                events = dict(poller.poll(200))
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EINTR:
                    continue
                raise
            if rep in events:
                _serve_one(rep, service)
            if sub is not None and sub in events:
                for _ in range(10_000):
                    try:
                        raw = sub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except MemoryError:
                        log.error("out of memory receiving a feeder message")
                        break
                    service.feeder_message(raw)
    finally:
        log.info("shutting down: finishing frames in flight")
        poller.unregister(rep)
        rep.close(linger=0)
        if sub is not None:
            sub.close(linger=0)
        if watcher is not None:
            watcher.stop()
        if stream is not None:
            stream.stop()
        service.shutdown()
        ctx.term()
        log.info("stopped")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s saxsdogserver %(levelname)s %(message)s")
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
