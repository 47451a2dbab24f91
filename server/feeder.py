"""saxsfeeder: publish "new file" events of a folder tree on a ZeroMQ PUB socket (section 5.4.2).

Watches one or more folders recursively with watchdog and publishes::

    {"command": "new file", "argument": "/absolute/path/to/file.tif", "time": ..., "sign": ...}

signed with the network's shared secret exactly like a request (``server.auth.sign_frame``:
HMAC-SHA256 over the message bytes, checked before parsing), so a server drops events from
anyone without the secret.
Only image files are published, never files below a folder named ``work`` (``--skip-dir``: the
server's own output folders; only the part of the path below the watched folder counts, and
``-v`` logs each skipped file) nor hidden/temporary names.  Binds 127.0.0.1 unless ``--bind``.

once a file is completely written: after a close-after-write event (Linux inotify) or a rename
into place, or when its size and time stamp have stayed the same for ``--settle`` seconds, and,
for images, only once the image decodes fully (``gpusaxs.io.images.image_complete``).  An
overwritten file is published again (a new size/time stamp is a new version).  Every
``--heartbeat`` seconds it publishes ``{"command": "heartbeat", "time": ..., "sign": ...}`` so
subscribers
can tell that they are connected.  ``--simulate`` replays the files already there (the
simulator of the specification) instead of watching.

The socket is an XPUB socket (a PUB socket that also sees subscriptions), so --simulate can wait
for the first subscriber instead of publishing into the void.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from gpusaxs.io.atomic import atomic_write
from gpusaxs.io.images import is_image_file
from gpusaxs.io.settle import DEFAULT_GIVE_UP_S, DEFAULT_SETTLE_S, FileSettler

from .auth import sign_frame
from .netconfig import (
    DEFAULT_FEEDER_PORT,
    NetConfigError,
    load_config,
    permission_warning,
    url_port,
)

log = logging.getLogger("saxsfeeder")


def make_handler(settler):
    """A watchdog event handler feeding ``settler``."""
    from watchdog.events import FileSystemEventHandler

    class _Handler(FileSystemEventHandler):
        def on_closed(self, event):
            if not event.is_directory:
                settler.touch(event.src_path, closed=True)

        def on_moved(self, event):
            if not event.is_directory:
                settler.touch(event.dest_path, closed=True)

        def on_created(self, event):
            if not event.is_directory:
                settler.touch(event.src_path)

        def on_modified(self, event):
            if not event.is_directory:
                settler.touch(event.src_path)

    return _Handler()


def walk_images(folder, skip_dirs=("work",)):
    """Image files below ``folder`` (sorted; hidden entries and ``skip_dirs`` skipped)."""
    out = []
    for path, dirs, files in os.walk(folder):
        for d in dirs:
            if d in skip_dirs:
                log.debug("skipped folder %s (--skip-dir %s)", os.path.join(path, d), d)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip_dirs)
        out.extend(os.path.join(path, f) for f in sorted(files) if is_image_file(f))
    return out


def skipped_by(path, roots, skip_dirs=("work",)):
    """The folder name of ``skip_dirs`` that ``path`` lies below, or None.

    Only the part of the path below the watched folder (the one of ``roots`` holding it) counts:
    a folder named ``work`` above the watched folder skips nothing.
    """
    path = os.path.abspath(path)
    below = None
    for root in roots:
        root = os.path.abspath(root)
        try:
            if os.path.commonpath([path, root]) == root:
                rel = os.path.relpath(os.path.dirname(path), root)
                if below is None or len(rel) < len(below):
                    below = rel
        except ValueError:
            continue
    if below is None:
        below = os.path.dirname(path)
    parts = os.path.normpath(below).split(os.sep)
    return next((d for d in skip_dirs if d in parts), None)


def wanted(path, skip_dirs=("work",), roots=()):
    """True for an image file that is not below a folder named in ``skip_dirs`` (below the
    watched folders ``roots``; see :func:`skipped_by`)."""
    if not is_image_file(path):
        return False
    return skipped_by(path, roots, skip_dirs) is None


class Feeder:
    """The XPUB socket with publish(), heartbeats and subscriber counting.

    secret: the shared secret; every message is signed with it (None: unsigned, for tests of
    the server's rejection only).
    """

    def __init__(self, bind_url, secret=None, context=None):
        import zmq

        self.ctx = context or zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.SNDHWM, 0)  # never drop events for a slow subscriber
        self.sock.bind(bind_url)
        self.url = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.subscribers = 0
        self.published = 0
        self._secret = secret
        self._lock = threading.Lock()

    def __repr__(self):
        return f"Feeder(url={self.url!r}, secret=<hidden>)"

    def _poll_subscriptions(self):
        import zmq

        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
                log.info("subscriber joined (%d)", self.subscribers)
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def send(self, obj):
        if self._secret is not None:
            data = sign_frame(self._secret, obj)  # checked over its bytes, before parsing
        else:
            data = json.dumps(obj).encode("utf-8")
        with self._lock:
            self._poll_subscriptions()
            self.sock.send(data)

    def publish(self, path):
        self.send({"command": "new file", "argument": path})
        self.published += 1
        log.debug("new file %s", path)

    def heartbeat(self):
        self.send({"command": "heartbeat"})

    def wait_subscriber(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                self._poll_subscriptions()
                if self.subscribers:
                    return True
            time.sleep(0.02)
        return False

    def close(self):
        self.sock.close()
        self.ctx.term()


EXAMPLES = """\
examples:
  saxsfeeder -d /data/beamtime            watch a folder tree, publish on FeederUrl's port
                                          of this computer (127.0.0.1)
  saxsfeeder --bind '*' -d /data/beamtime publish to servers on other computers
  saxsfeeder -p 5556 -d /data/a -d /data/b two folders, port 5556
  saxsfeeder --simulate -d data/ --interval 0.1 --loop
                                          replay the files already there (spec simulator)
  saxsdogserver -f tcp://feederhost:5556 /data   a server subscribing to this feeder
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsfeeder",
        description="Publish new-file events of a folder tree (ZeroMQ PUB).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-p",
        "--port",
        type=int,
        default=None,
        help="port to publish on (default: port of FeederUrl in the config, else 5556)",
    )
    p.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this computer only; '*' for every interface, "
        "when the server runs on another computer)",
    )
    p.add_argument(
        "-d",
        "--dir",
        action="append",
        default=None,
        metavar="DIR",
        help="folder to watch recursively (repeatable; default .)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="network configuration (default ~/.saxsdognetwork): FeederUrl (port) and "
        "Secret (messages are signed with it)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        metavar="S",
        help="seconds a file must stay unchanged when no close event is seen "
        f"(default {DEFAULT_SETTLE_S})",
    )
    p.add_argument(
        "--give-up",
        type=float,
        default=DEFAULT_GIVE_UP_S,
        metavar="S",
        help="settle timeout: an image that does not decode completely after S "
        "seconds without change is published anyway, so the server records "
        f"the error (default {DEFAULT_GIVE_UP_S:g})",
    )
    p.add_argument(
        "--skip-dir",
        action="append",
        default=None,
        metavar="NAME",
        help="never publish files below folders of this name (repeatable; default "
        "'work', the server's output folders)",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="do not decode images to check that they are complete",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between heartbeat messages (default 0.5; 0 = none)",
    )
    p.add_argument(
        "--simulate",
        action="store_true",
        help="publish the image files already in the folders instead of watching",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=0.1,
        metavar="S",
        help="--simulate: seconds between messages (default 0.1)",
    )
    p.add_argument("--loop", action="store_true", help="--simulate: repeat forever")
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="S",
        help="--simulate: wait up to S seconds for a subscriber (default 10)",
    )
    p.add_argument(
        "--polling",
        action="store_true",
        help="use a polling observer (network file systems without inotify)",
    )
    p.add_argument(
        "--ready-file",
        metavar="FILE",
        help="write {pid, url} as JSON to FILE once publishing (for scripts/tests)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every published and every skipped file (DEBUG)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="warnings and errors only (default: routine events too, INFO)",
    )
    return p


def _load_config(path):
    """(port, secret) from the network configuration; its secret signs every message."""
    cfg = load_config(path)
    warning = permission_warning(cfg.path)
    if warning:
        log.warning("%s", warning)
    return url_port(cfg.feeder_url, DEFAULT_FEEDER_PORT), cfg.secret


def _write_ready(path, info):
    with atomic_write(path, "w") as fh:
        json.dump(info, fh)


def main(argv=None):
    args = build_parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s saxsfeeder %(levelname)s %(message)s")
    try:
        cfg_port, secret = _load_config(args.config)
        port = args.port if args.port is not None else cfg_port
    except NetConfigError as exc:
        print(f"saxsfeeder: {exc}", file=sys.stderr)
        return 2
    dirs = [os.path.abspath(d) for d in (args.dir or ["."])]
    for d in dirs:
        if not os.path.isdir(d):
            print(f"saxsfeeder: {d}: not a folder", file=sys.stderr)
            return 2
    try:
        feeder = Feeder(f"tcp://{args.bind}:{port}", secret=secret)
    except Exception as exc:
        print(f"saxsfeeder: cannot bind tcp://{args.bind}:{port}: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    log.info("publishing on %s", feeder.url)
    if args.ready_file:
        _write_ready(args.ready_file, {"pid": os.getpid(), "url": feeder.url})

    skip = tuple(args.skip_dir) if args.skip_dir else ("work",)
    if args.simulate:
        if not feeder.wait_subscriber(args.wait):
            log.warning("no subscriber after %.0f s; publishing anyway", args.wait)
        try:
            while not stop.is_set():
                for path in (p for d in dirs for p in walk_images(d, skip)):
                    if stop.is_set():
                        break
                    feeder.publish(os.path.realpath(path))
                    stop.wait(args.interval)
                if not args.loop:
                    break
        finally:
            feeder.close()
        return 0

    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    def publish(p):
        if not is_image_file(p):
            return
        skipped = skipped_by(p, dirs, skip)
        if skipped is not None:
            log.debug("skipped %s: below a folder named %r (--skip-dir)", p, skipped)
            return
        feeder.publish(os.path.realpath(p))

    settler = FileSettler(
        publish, settle=args.settle, check_complete=not args.no_check, give_up=args.give_up
    )
    observer = PollingObserver(timeout=0.5) if args.polling else Observer()
    handler = make_handler(settler)
    for d in dirs:
        observer.schedule(handler, d, recursive=True)
    observer.start()
    try:
        while not stop.is_set():
            if args.heartbeat > 0:
                feeder.heartbeat()
            stop.wait(args.heartbeat if args.heartbeat > 0 else 1.0)
    finally:
        observer.stop()
        observer.join(timeout=5)
        settler.stop()
        feeder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
