"""Authentication of Saxsdog network requests (section 5.1 / 5.4, done properly).

Every request is a multi-part ZeroMQ message: frame 0 is the JSON request, the following frames
are attachments (e.g. the mask file of ``new``).  The request carries ``time`` (seconds since the
epoch, ``time.time()``) and ``sign``, an HMAC-SHA256 with the shared secret, in one of two forms:

* **raw** (what the clients send, :func:`sign_frame`): ``body`` is the request without "sign" as
  compact JSON (any key order); the frame is ``body`` with ``,"sign":"<64 hex>"}`` in place of
  its closing brace, and::

      sign = HMAC(secret, b"saxsdog-raw1\n" || body || for each attachment:
                          len(attachment) as 8 bytes big-endian || attachment).hexdigest()

  The server checks it over the frame's bytes (a fixed-length suffix, then one HMAC pass)
  *before* parsing the JSON, so a peer without the secret costs one hash of at most
  ``--max-request`` bytes, never a parse.
* **canonical** (older clients, :func:`sign_request`): the HMAC of the canonical JSON of the
  parsed request without "sign" (``sort_keys``, compact, ASCII) and the attachments as above,
  with no prefix.  It needs a parse before the check, so the server takes it only for frames of
  at most :data:`LEGACY_MAX_BYTES`.

Then ``time`` must lie within ``window`` seconds of the server's clock and the signature must
not have been seen before (replay cache, entries expire with the window, bounded in size).  Only
then is the request looked at any further.

The secret is never logged, never put into an answer or an exception message.
"""

import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

DEFAULT_WINDOW_S = 900.0
DEFAULT_REPLAY_CAPACITY = 100_000
#: largest frame 0 accepted with the canonical (parse-first) signature of older clients
LEGACY_MAX_BYTES = 64 * 1024
#: domain of the raw signature (never equal to a canonical one)
RAW_PREFIX = b"saxsdog-raw1\n"
_RAW_SUFFIX = re.compile(rb',"sign":"([0-9a-f]{64})"\}\Z')
_RAW_SUFFIX_LEN = len(b',"sign":""}') + 64


class AuthenticationError(Exception):
    """A request failed authentication; ``str(exc)`` is safe to send back (never the secret)."""


def canonical_bytes(request):
    """The canonical form of ``request`` (a dict) with "sign" left out, as UTF-8 bytes."""
    if not isinstance(request, dict):
        raise TypeError("request must be a JSON object")
    body = {k: v for k, v in request.items() if k != "sign"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("utf-8")


def _key(secret):
    if isinstance(secret, bytes):
        return secret
    if not isinstance(secret, str) or not secret:
        raise ValueError("the shared secret must be a non-empty string")
    return secret.encode("utf-8")


def compute_sign(secret, request, attachments=()):
    """HMAC-SHA256 (hex) of the canonical request and its attachment frames."""
    mac = hmac.new(_key(secret), canonical_bytes(request), hashlib.sha256)
    for att in attachments:
        att = memoryview(att)  # no copy of a (possibly large) frame
        mac.update(att.nbytes.to_bytes(8, "big"))
        mac.update(att)
    return mac.hexdigest()


def _update_attachments(mac, attachments):
    for att in attachments:
        att = memoryview(att)  # no copy of a (possibly large) frame
        mac.update(att.nbytes.to_bytes(8, "big"))
        mac.update(att)


def sign_frame(
    secret: "str | bytes",
    request: "Mapping[str, Any]",
    attachments: "Iterable[bytes]" = (),
    now: "float | None" = None,
) -> bytes:
    """Frame 0 of ``request`` with a fresh ``time`` and its raw signature (module doc)."""
    req = {k: v for k, v in request.items() if k != "sign"}
    req["time"] = float(time.time() if now is None else now)
    body = json.dumps(req, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    mac = hmac.new(_key(secret), RAW_PREFIX, hashlib.sha256)
    mac.update(body)
    _update_attachments(mac, attachments)
    return body[:-1] + b',"sign":"' + mac.hexdigest().encode("ascii") + b'"}'


def sign_request(
    secret: "str | bytes",
    request: "Mapping[str, Any]",
    attachments: "Iterable[bytes]" = (),
    now: "float | None" = None,
) -> Any:
    """Return a copy of ``request`` with a fresh ``time`` and its ``sign``."""
    req = {k: v for k, v in request.items() if k != "sign"}
    req["time"] = float(time.time() if now is None else now)
    req["sign"] = compute_sign(secret, req, attachments)
    return req


class ReplayCache:
    """Signatures seen recently; each expires ``ttl`` seconds after the request's time.

    Bounded: when ``capacity`` unexpired signatures are held, new requests are refused (rather
    than forgetting a signature that could then be replayed).
    """

    def __init__(self, ttl=DEFAULT_WINDOW_S, capacity=DEFAULT_REPLAY_CAPACITY):
        self.ttl = float(ttl)
        self.capacity = int(capacity)
        self._seen = OrderedDict()  # sign -> expiry (monotonic insertion order ~ expiry order)
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._seen)

    def _purge(self, now):
        # Entries are inserted roughly in expiry order; pop from the front while expired, and
        # do a full sweep only when the cache is full.
        while self._seen:
            sign, exp = next(iter(self._seen.items()))
            if exp > now:
                break
            self._seen.popitem(last=False)
        if len(self._seen) >= self.capacity:
            for sign in [s for s, e in self._seen.items() if e <= now]:
                del self._seen[sign]

    def check_and_add(self, sign, req_time, now=None):
        """Raise AuthenticationError if ``sign`` was seen; otherwise remember it."""
        now = time.time() if now is None else now
        with self._lock:
            self._purge(now)
            if sign in self._seen:
                raise AuthenticationError("replayed request (signature already used)")
            if len(self._seen) >= self.capacity:
                raise AuthenticationError("too many requests in the time window, try later")
            # A request stays acceptable until req_time + ttl (time window); remember it that long.
            self._seen[sign] = max(req_time, now) + self.ttl


class Authenticator:
    """Checks signature, time window and replay for incoming requests."""

    def __init__(
        self,
        secret,
        window=DEFAULT_WINDOW_S,
        replay_capacity=DEFAULT_REPLAY_CAPACITY,
        clock=time.time,
    ):
        self._key = _key(secret)
        self.window = float(window)
        self.clock = clock
        self.replay = ReplayCache(ttl=self.window, capacity=replay_capacity)

    def __repr__(self):
        return f"Authenticator(window={self.window}, secret=<hidden>)"

    def verify_frame(self, frame, attachments, parse, legacy_max=LEGACY_MAX_BYTES):
        """The parsed request of ``frame`` (bytes-like) once authentic and fresh.

        A raw signature is checked over the bytes before ``parse(frame)`` runs; a canonical one
        (older clients) only for frames of at most ``legacy_max`` bytes.  Raises
        AuthenticationError; ``parse`` raises what it raises (only for authentic raw frames).
        """
        view = memoryview(frame)
        n = view.nbytes
        m = _RAW_SUFFIX.match(bytes(view[n - _RAW_SUFFIX_LEN :])) if n > _RAW_SUFFIX_LEN else None
        if m is None:
            if n > legacy_max:
                raise AuthenticationError(
                    f"request not signed over its bytes ({n} bytes; the older signature "
                    f"over the parsed JSON is taken up to {legacy_max} bytes)"
                )
            request = parse(frame)
            self.verify(request, attachments)
            return request
        mac = hmac.new(self._key, RAW_PREFIX, hashlib.sha256)
        mac.update(view[: n - _RAW_SUFFIX_LEN])
        mac.update(b"}")
        _update_attachments(mac, attachments)
        sign = m.group(1)
        if not hmac.compare_digest(mac.hexdigest().encode("ascii"), sign):
            raise AuthenticationError("wrong signature (check the shared secret)")
        request = parse(frame)
        if not isinstance(request, dict):
            raise AuthenticationError("request is not a JSON object")
        self._check_fresh(request.get("time"), sign.decode("ascii"))
        return request

    def verify(self, request, attachments=()):
        """Raise AuthenticationError unless ``request`` (a parsed dict) is authentic and fresh."""
        if not isinstance(request, dict):
            raise AuthenticationError("request is not a JSON object")
        sign = request.get("sign")
        if not isinstance(sign, str) or not sign:
            raise AuthenticationError("request is not signed (missing 'sign')")
        t = request.get("time")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise AuthenticationError("request has no valid 'time'")
        try:
            expected = hmac.new(self._key, canonical_bytes(request), hashlib.sha256)
        except (TypeError, ValueError):
            raise AuthenticationError("request cannot be canonicalised") from None
        for att in attachments:
            att = memoryview(att)  # no copy of a (possibly large) frame
            expected.update(att.nbytes.to_bytes(8, "big"))
            expected.update(att)
        # compare_digest on ASCII str requires ASCII; compare bytes to be safe.
        if not hmac.compare_digest(
            expected.hexdigest().encode("ascii"), sign.encode("utf-8", "replace")
        ):
            raise AuthenticationError("wrong signature (check the shared secret)")
        self._check_fresh(t, sign)

    def _check_fresh(self, t, sign):
        """Time window and replay cache of an authentic request."""
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise AuthenticationError("request has no valid 'time'")
        now = self.clock()
        if abs(now - float(t)) > self.window:
            raise AuthenticationError(
                f"request time outside the accepted window of {self.window:g} s "
                f"(clock difference {now - float(t):.0f} s)"
            )
        self.replay.check_and_add(sign, float(t), now)
