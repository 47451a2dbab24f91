"""The command socket: bounded before authentication, zero-copy receive, errors never fatal.

What an unauthenticated peer can make the server hold is bounded by ZeroMQ itself, before any
Python code runs:

* ``ZMQ_MAXMSGSIZE`` = the largest legitimate frame (the JSON request or a mask attachment,
  see :data:`server.protocol.MAX_ATTACHMENT_BYTES`); a peer sending a bigger frame is
  disconnected while its size header is decoded, before the frame is allocated;
* ``ZMQ_RCVHWM`` = :data:`RCVHWM` messages queued per peer; beyond that libzmq stops reading the
  peer's TCP stream (back-pressure in the kernel buffers);
* frames are received without copying (``copy=False``) and only the first ``max_frames`` are
  kept; extra frames are received and dropped one by one.

Residual bound: a multi-part message is queued whole by libzmq (ZMTP has no limit on the number
of frames), so peers x RCVHWM x frames x MAXMSGSIZE is not a hard bound on a hostile network;
there, enable CURVE (``"Curve": true`` in the network configuration): a peer without the shared
secret then fails the handshake and cannot send a single frame.
"""

import hashlib
import hmac
import logging
from typing import Any

log = logging.getLogger("saxsdogserver")

#: complete messages queued per peer on the command socket (libzmq default 1000)
RCVHWM = 4
SNDHWM = 4


def configure_command_socket(sock, max_frame_bytes, curve_secret=None):
    """Set the limits above on a REP/ROUTER socket before it binds; optional CURVE server."""
    import zmq

    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, int(max_frame_bytes))
    sock.setsockopt(zmq.RCVHWM, RCVHWM)
    sock.setsockopt(zmq.SNDHWM, SNDHWM)
    if curve_secret is not None:
        keys = curve_keys(curve_secret)
        sock.curve_server = True
        sock.curve_secretkey = keys["server_secret"]
        sock.curve_publickey = keys["server_public"]


def configure_client_socket(sock: Any, curve_secret: Any = None) -> None:
    """CURVE client settings matching :func:`configure_command_socket` (None: plain TCP)."""
    if curve_secret is None:
        return
    keys = curve_keys(curve_secret)
    sock.curve_serverkey = keys["server_public"]
    sock.curve_secretkey = keys["client_secret"]
    sock.curve_publickey = keys["client_public"]


def curve_keys(secret):
    """CURVE key pairs (Z85 bytes) derived from the shared secret.

    The server's key pair is HMAC-SHA256(secret, "saxsdog-curve-server"); nobody without the
    secret knows the server's public key, so nobody without it completes the handshake.
    """
    import zmq
    from zmq.utils import z85

    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    out = {}
    for who in ("server", "client"):
        raw = hmac.new(key, f"saxsdog-curve-{who}".encode(), hashlib.sha256).digest()
        sec = z85.encode(raw)
        out[f"{who}_secret"] = sec
        out[f"{who}_public"] = zmq.curve_public(sec)
    return out


class TooManyFrames(Exception):
    """A message had more frames than a request may have (they were received and dropped)."""


def recv_request(sock, max_frames):
    """Receive one multi-part message zero-copy; keep at most ``max_frames`` frames.

    Returns a list of memoryviews.  Raises TooManyFrames (after dropping the rest) or MemoryError
    (after draining the rest of the message, so the REP socket can still answer).
    """
    import zmq

    frames, extra = [], 0
    try:
        while True:
            f = sock.recv(copy=False)
            if len(frames) < max_frames:
                frames.append(f.buffer)
            else:
                extra += 1
            del f
            if not sock.getsockopt(zmq.RCVMORE):
                break
    except MemoryError:
        frames = None
        drain(sock)
        raise
    if extra:
        raise TooManyFrames(f"too many frames ({max_frames + extra}, limit {max_frames})")
    return frames


def drain(sock):
    """Receive and drop the remaining frames of the current message."""
    import zmq

    while sock.getsockopt(zmq.RCVMORE):
        try:
            sock.recv(copy=False)
        except MemoryError:
            continue
