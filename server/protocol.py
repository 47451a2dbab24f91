"""The Saxsdog network protocol (section 5.4): messages, schemas, names, limits and a client.

A request is a multi-part ZeroMQ message on a REQ socket: frame 0 is the JSON request
(``{"command": ..., "argument": {...}, "time": ..., "sign": ...}``), frames 1.. are attachments
(for ``new``: the mask file).  The answer is one JSON frame ``{"result": ..., "data": {...}}``.
Signing: see :mod:`server.auth` (clients sign the raw bytes of frame 0, checked before
parsing).  Schemas: ``server/schemas/{request,response}.schema.json``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from importlib import resources
from types import TracebackType
from typing import Any, TypedDict, TypeVar

import numpy as np

from .auth import sign_frame, sign_request
from .wire import configure_client_socket

# -- command names ------------------------------------------------------------------------------
#: every accepted command name -> canonical short name
COMMANDS = {
    "new": "new",
    "new queue": "new",
    "close": "close",
    "close queue": "close",
    "abort": "abort",
    "abort queue": "abort",
    "plot": "plot",
    "send plot": "plot",
    "readdir": "readdir",
    "stat": "stat",
    "get": "get",
    "listdir": "listdir",
}

# -- result strings (exactly those of the specification) ----------------------------------------
R_NEW = "new queue"
R_CLOSED = "queue closed"
R_ABORTED = "queue stopped emptied and closed"
R_PLOT = "plot data"
R_READDIR = "directory refilled queue"
R_STAT = "stat"
R_LISTDIR = "directory listing"
R_ERROR = "Error"
R_AUTH = "AuthenticationError"
ERROR_RESULTS = (R_ERROR, R_AUTH)

STAT_FIELDS = ("time interval", "queue length", "frames per sec", "images processed", "pics")
#: beside STAT_FIELDS (not in the specification): frames that ended as an error record
STAT_FAILED = "images failed"

# -- size limits (server defaults; see saxsdogserver --help) ------------------------------------
MAX_REQUEST_BYTES = 4 * 1024 * 1024  # frame 0 (the JSON request)
#: each attachment, and ZMQ_MAXMSGSIZE of the command socket.  Sized for the largest legitimate
#: attachment, the mask of an EIGER2 X 16M (4148 x 4362 = 18.1 Mpixel) stored as one byte per
#: pixel (uncompressed 8-bit TIFF/EDF: 18.1 MB + header; fit2d .msk packs it into 2.3 MB);
#: a PILATUS 1M .msk is ~130 kB.
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
MAX_ATTACHMENTS = 4
MAX_JSON_DEPTH = 32


class _RequestCommand(TypedDict):
    command: str


class Request(_RequestCommand, total=False):
    """A request (frame 0, JSON): ``command``, its ``argument``, and, once signed, ``time``
    (seconds since the epoch) and ``sign`` (HMAC, server/auth.py)."""

    argument: Any
    time: float
    sign: str


class Response(TypedDict):
    """An answer: ``result`` (one of the R_* names) and its ``data``."""

    result: str
    data: Any


class ProtocolError(ValueError):
    """A request that cannot be served (answered with result "Error")."""


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed JSON schema ``request`` or ``response`` shipped in server/schemas/."""
    text = (
        resources.files(__package__)
        .joinpath("schemas")
        .joinpath(f"{name}.schema.json")
        .read_text("utf-8")
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _validator(name: str) -> Any:
    import jsonschema

    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_error(name: str, document: object) -> str | None:
    """None if ``document`` is valid against schema ``name``, else a one-line reason."""
    v = _validator(name)
    err = next(iter(sorted(v.iter_errors(document), key=lambda e: list(e.path))), None)
    if err is None:
        return None
    where = "#" + "".join(f"/{p}" for p in err.absolute_path)
    msg = err.message
    if len(msg) > 200:
        msg = msg[:200] + "..."
    return f"{where}: {msg}"


def validate_request(request: object) -> None:
    reason = schema_error("request", request)
    if reason:
        raise ProtocolError(f"invalid request: {reason}")


def validate_response(response: object) -> None:
    reason = schema_error("response", response)
    if reason:
        raise ProtocolError(f"invalid response: {reason}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(obj: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def parse_json(frame: bytes | bytearray | memoryview, max_bytes: int = MAX_REQUEST_BYTES) -> Any:
    """Decode one JSON frame strictly (UTF-8, no NaN/Infinity, bounded size and depth)."""
    if len(frame) > max_bytes:
        raise ProtocolError(f"request too large ({len(frame)} bytes, limit {max_bytes})")
    try:
        text = bytes(frame).decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("malformed request: JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"malformed request: not valid JSON ({str(exc)[:120]})") from None
    if not _depth(obj, MAX_JSON_DEPTH):
        raise ProtocolError("malformed request: JSON nested too deeply")
    return obj


def json_safe(x: Any) -> Any:
    """Floats that JSON cannot carry (NaN, inf) become null; NumPy scalars become Python ones."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def array_rows(*arrays: Any) -> list[list[float | None]]:
    """NumPy 1D arrays -> list of lists of float/None (NaN -> null) for the "array" field."""
    rows: list[list[float | None]] = []
    for values in arrays:
        a = np.asarray(values, dtype=np.float64)
        lst = a.tolist()
        if not np.all(np.isfinite(a)):
            lst = [v if math.isfinite(v) else None for v in lst]
        rows.append(lst)
    return rows


def encode_response(response: Response | dict[str, Any]) -> bytes:
    return json.dumps(json_safe(response), separators=(",", ":"), allow_nan=False).encode("utf-8")


def error_response(message: object, result: str = R_ERROR) -> Response:
    return {"result": result, "data": {"Error": str(message)}}


def make_request(command: str, argument: Any = None) -> Request:
    req: Request = {"command": command}
    if argument is not None:
        req["argument"] = argument
    return req


def new_request(
    calibration: Any,
    directory: object,
    mask_bytes: bytes | None = None,
    mask_name: str | None = None,
    use_maskbin: bool = False,
) -> tuple[Request, list[bytes]]:
    """A ``new`` request and its attachments: the mask goes as attachment (or base64 maskbin)."""
    arg: dict[str, Any] = {"directory": str(directory), "calibration": calibration}
    attachments: list[bytes] = []
    if mask_bytes is not None:
        if mask_name:
            arg["mask"] = str(mask_name)
        if use_maskbin:
            arg["maskbin"] = base64.b64encode(mask_bytes).decode("ascii")
        else:
            attachments.append(bytes(mask_bytes))
    return make_request("new", arg), attachments


_T = TypeVar("_T")


def _wrong_signature(answer: Any) -> bool:
    return (
        isinstance(answer, dict)
        and answer.get("result") == R_AUTH
        and "wrong signature" in str((answer.get("data") or {}).get("Error", ""))
    )


# -- client -----------------------------------------------------------------------------------
class NoAnswer(ConnectionError):
    """The server did not answer within the timeout (after all retries)."""


class Client:
    """A REQ client with the lazy pirate pattern of the ZeroMQ guide.

    Each try uses a REQ socket with RCVTIMEO/SNDTIMEO and LINGER=0; after a timeout the socket
    is closed and a fresh one is made (a REQ socket cannot send twice without an answer).
    Every try is signed anew (fresh time, so the server's replay cache does not refuse it).
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        timeout: float = 10.0,
        retries: int = 1,
        context: Any = None,
        curve: bool = False,
        connect_timeout: float | None = None,
    ) -> None:
        import zmq

        self.url = url
        #: seconds to wait for the TCP connection before the first request (None: no check)
        self.connect_timeout = connect_timeout
        self._connected_once = False
        self._canonical = False  # True: the older signature (a server older than sign_frame)
        self._secret = secret
        self.curve = bool(curve)  # ZeroMQ CURVE with keys derived from the secret
        self.timeout = float(timeout)
        self.retries = int(retries)
        self._own_ctx = context is None
        self.ctx = context or zmq.Context()
        self.sock: Any = None

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, secret=<hidden>)"

    def _socket(self) -> Any:
        import zmq

        s = self.ctx.socket(zmq.REQ)
        ms = max(1, int(self.timeout * 1000))
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, ms)
        s.setsockopt(zmq.SNDTIMEO, ms)
        if self.curve:
            configure_client_socket(s, self._secret)
        if self.connect_timeout is not None and not self._connected_once:
            try:
                self._wait_connected(s)
            except NoAnswer:
                s.close(linger=0)
                raise
            self._connected_once = True
        else:
            s.connect(self.url)
        return s

    def _wait_connected(self, s: Any) -> None:
        """Connect ``s`` and wait up to ``connect_timeout`` s for the TCP connection; a refused
        connection (nothing listening) raises :class:`NoAnswer` at once."""
        import zmq

        mon = s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)
        try:
            s.connect(self.url)
            deadline = time.monotonic() + float(self.connect_timeout or 0.0)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not mon.poll(max(1, int(left * 1000))):
                    raise NoAnswer(
                        f"no answer from {self.url}: no connection within "
                        f"{self.connect_timeout:g} s (--connect-timeout); is saxsdogserver "
                        f"running there?"
                    )
                from zmq.utils.monitor import recv_monitor_message

                event = recv_monitor_message(mon)["event"]
                if event == zmq.EVENT_CONNECTED:
                    return
                if event == zmq.EVENT_CONNECT_RETRIED:
                    raise NoAnswer(
                        f"no answer from {self.url}: nothing listens there (connection "
                        f"refused); is saxsdogserver running there?"
                    )
        finally:
            s.disable_monitor()
            mon.close(linger=0)

    def _drop(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def request_raw(self, frames: Sequence[bytes]) -> Any:
        """Send raw frames (no signing) and return the decoded answer; for tests."""
        import zmq

        for _attempt in range(self.retries + 1):
            if self.sock is None:
                self.sock = self._socket()
            try:
                self.sock.send_multipart(frames)
                return json.loads(self.sock.recv())
            except zmq.Again:
                self._drop()
        raise NoAnswer(
            f"no answer from {self.url} within {self.timeout:g} s "
            f"({self.retries + 1} tries); is saxsdogserver running there?"
        )

    def request(
        self,
        command: str,
        argument: Any = None,
        attachments: Iterable[bytes] = (),
        now: float | None = None,
    ) -> Any:
        """Sign and send one request; return the answer (dict).

        Signed over the raw bytes (server/auth.py); a server older than that answers "wrong
        signature", and the request is sent once more with the older canonical signature
        (which this client then keeps using).
        """
        frames = [bytes(a) for a in attachments]
        answer = self._send(command, argument, frames, now)
        if not self._canonical and _wrong_signature(answer):
            self._canonical = True
            older = self._send(command, argument, frames, now)
            if isinstance(older, dict) and older.get("result") == R_AUTH:
                self._canonical = False  # the secret is wrong, not the server old
                return answer
            return older
        return answer

    def _send(self, command: str, argument: Any, frames: list[bytes], now: float | None) -> Any:
        import zmq

        for _attempt in range(self.retries + 1):
            req = make_request(command, argument)
            if self._canonical:
                frame0 = json.dumps(sign_request(self._secret, req, frames, now)).encode()
            else:
                frame0 = sign_frame(self._secret, req, frames, now)
            if self.sock is None:
                self.sock = self._socket()
            try:
                self.sock.send_multipart([frame0] + frames)
                return json.loads(self.sock.recv())
            except zmq.Again:
                self._drop()
        raise NoAnswer(
            f"no answer from {self.url} within {self.timeout:g} s "
            f"({self.retries + 1} tries); is saxsdogserver running there?"
        )

    def close(self) -> None:
        self._drop()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def wait_for(predicate: Callable[[], _T], timeout: float, interval: float = 0.05) -> _T:
    """Poll ``predicate()`` until truthy or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)
