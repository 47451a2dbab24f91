"""``saxsleash dashboard``: options, the Bokeh server, signals."""

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys

from gpusaxs.clients.connection import add_connection_arguments, client_config
from gpusaxs.io.atomic import atomic_write
from gpusaxs.server import protocol as P

from .guard import host_port_pairs
from .guard import install as install_guard
from .maps import MapWatch
from .page import make_document
from .watch import ServerWatch

DEFAULT_PORT = 8050
DEFAULT_MAX_SESSIONS = 20
DEFAULT_SESSION_IDLE_S = 10.0

EXAMPLES = """\
examples:
  saxsleash dashboard                         page at http://127.0.0.1:8050/ for the server of
                                              ~/.saxsdognetwork
  saxsleash dashboard --port 8060 -S tcp://gpubox:7777 --config lab.json
  ssh -L 8050:127.0.0.1:8050 beamline-pc      then open http://127.0.0.1:8050/ on your laptop
  saxsleash dashboard --maps results/         also the newest grazing-incidence map (*.gi.nxs)
                                              written into results/
  saxsleash dashboard --bind 0.0.0.0 --allow-origin controlroom:8050
                                              reachable from the network (no password: anyone
                                              who reaches the port sees the data)

The page shows, refreshed twice a second: whether the server answers, queue and frame counts,
frames/s over the last minutes, lag, engine, uptime, the latest curve (log I vs q) with the
previous ones faded, a waterfall of the recent curves, the error records (newest first) and the
progress of stream series; with --maps the newest grazing-incidence map of a folder (log
colour scale, empty cells grey, axes as the file names them).  The dashboard talks to the
server with the signed protocol of saxsleash; the browser talks only to the dashboard, so the
secret never reaches it.
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsleash dashboard",
        description="Serve a live web page showing a Saxsdog server's state and curves.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"HTTP port of the page (default {DEFAULT_PORT}; 0 = any free port)",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this computer only)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="extra host name the browser may use to reach the page (repeatable; "
        "needed with --bind when the page is opened by host name)",
    )
    add_connection_arguments(p)
    p.add_argument(
        "--interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between polls of the server (default 0.5)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to wait for an answer before saying 'server not answering' (default 2)",
    )
    p.add_argument(
        "--curves",
        type=int,
        default=60,
        metavar="N",
        help="recent curves kept for the waterfall (default 60; the latest 10 are "
        "drawn faded behind the newest)",
    )
    p.add_argument(
        "--history",
        type=float,
        default=600.0,
        metavar="S",
        help="seconds of frames/s history in the chart (default 600)",
    )
    p.add_argument(
        "--maps",
        metavar="FOLDER",
        help="show the newest grazing-incidence map (*.gi.nxs, docs/grazing.md) written into "
        "FOLDER (not its subfolders), looked at every --interval seconds (at least 1 s)",
    )
    p.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {pid, port, url} as JSON to FILE once serving (scripts/tests)",
    )
    p.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"open pages (Bokeh sessions) at most; a further page load is answered 503 "
        f"(default {DEFAULT_MAX_SESSIONS})",
    )
    p.add_argument(
        "--session-idle",
        type=float,
        default=DEFAULT_SESSION_IDLE_S,
        metavar="S",
        help="drop the session of a closed page after S seconds "
        f"(default {DEFAULT_SESSION_IDLE_S:g})",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return p


def is_loopback(address):
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def bind_warning(bind, port):
    """The warning printed when the page is reachable from other computers, else None."""
    if is_loopback(bind):
        return None
    return (
        f"WARNING: serving on {bind or '*'}:{port}, not only on this computer: anyone who "
        f"can reach this port sees the server's state and curves (there is no password; the "
        f"secret itself stays in this process). Prefer the default --bind 127.0.0.1 and an "
        f"SSH tunnel."
    )


def origins(bind, extra=()):
    """Host names the browser may use: every request's Host header and the websocket's Origin
    are checked against them (clients/dashboard/guard.py); names without ``:PORT`` get the
    page's real port there."""
    names = ["localhost", "127.0.0.1"]
    if not is_loopback(bind):
        hosts = {socket.gethostname(), socket.getfqdn()}
        if bind not in ("", "0.0.0.0", "::"):
            hosts.add(bind)
        names += sorted(hosts)
    return names + list(extra)


def serve(args):
    try:
        import bokeh  # noqa: F401
    except ImportError:
        print(
            "saxsleash dashboard: needs Bokeh: pip install 'gpusaxs[dashboard]' "
            "(or pip install bokeh)",
            file=sys.stderr,
        )
        return 2
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from tornado.ioloop import IOLoop

    cfg = client_config(args, "saxsleash dashboard")
    if cfg is None:
        return 2
    url = args.server or cfg.server_url
    client = P.Client(url, cfg.secret, timeout=args.timeout, retries=0)
    watch = ServerWatch(
        client, interval=args.interval, n_curves=args.curves, history_s=args.history
    )
    maps = None if args.maps is None else MapWatch(args.maps, interval=max(1.0, args.interval))
    refresh_ms = max(100, min(1000, int(args.interval * 1000)))
    app = Application(FunctionHandler(lambda doc: make_document(doc, watch, refresh_ms, maps=maps)))
    io_loop = IOLoop.current()
    try:
        idle_ms = max(100, int(args.session_idle * 1000))
        server = Server(
            {"/": app},
            io_loop=io_loop,
            port=args.port,
            address=args.bind,
            unused_session_lifetime_milliseconds=idle_ms,
            check_unused_sessions_milliseconds=max(100, min(idle_ms, 2000)),
        )
    except OSError as exc:
        print(
            f"saxsleash dashboard: cannot serve on {args.bind}:{args.port}: {exc}", file=sys.stderr
        )
        client.close()
        return 2
    port = server.port
    install_guard(
        server,
        host_port_pairs(origins(args.bind, args.allow_origin), port),
        max(1, args.max_sessions),
    )
    warning = bind_warning(args.bind, port)
    if warning:
        print(f"saxsleash dashboard: {warning}", file=sys.stderr)

    watch.start()
    if maps is not None:
        maps.start()
    server.start()
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.bind, args.bind)
    page = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    print(f"saxsleash dashboard: open {page} (server {url}; Ctrl-C ends)", file=sys.stderr)
    if args.ready_file:
        with atomic_write(args.ready_file, "w") as fh:
            json.dump({"pid": os.getpid(), "port": port, "url": page}, fh)

    for sig in (signal.SIGTERM, signal.SIGINT):
        io_loop.asyncio_loop.add_signal_handler(sig, io_loop.stop)
    try:
        io_loop.start()
    finally:
        server.stop()
        watch.stop()
        if maps is not None:
            maps.stop()
        client.close()
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    level = (
        logging.WARNING
        if args.verbose == 0
        else logging.INFO
        if args.verbose == 1
        else logging.DEBUG
    )
    logging.basicConfig(level=level, format="%(asctime)s dashboard %(levelname)s %(message)s")
    return serve(args)
