"""Authentication of requests: HMAC-SHA256 over canonical JSON + attachments, window, replay."""

import json

import pytest

from gpusaxs.server.auth import (
    AuthenticationError,
    Authenticator,
    ReplayCache,
    canonical_bytes,
    compute_sign,
    sign_request,
)

SECRET = "s3cr3t-" + "x" * 57


def test_canonical_ignores_key_order_and_sign():
    a = {"command": "stat", "time": 1.5, "argument": {"b": 1, "a": [1, 2]}, "sign": "zz"}
    b = {"argument": {"a": [1, 2], "b": 1}, "time": 1.5, "command": "stat"}
    assert canonical_bytes(a) == canonical_bytes(b)
    assert canonical_bytes(b) == b'{"argument":{"a":[1,2],"b":1},"command":"stat","time":1.5}'


def test_good_request_accepted_once_then_replay_refused():
    auth = Authenticator(SECRET, clock=lambda: 1000.0)
    req = sign_request(SECRET, {"command": "stat"}, now=1000.0)
    auth.verify(json.loads(json.dumps(req)))
    with pytest.raises(AuthenticationError, match="replay"):
        auth.verify(req)


def test_wrong_secret():
    auth = Authenticator(SECRET, clock=lambda: 1000.0)
    req = sign_request("another secret of some length", {"command": "stat"}, now=1000.0)
    with pytest.raises(AuthenticationError, match="wrong signature") as ei:
        auth.verify(req)
    assert SECRET not in str(ei.value)


@pytest.mark.parametrize("delta", [-901, 901, 10_000])
def test_stale_or_future_time(delta):
    auth = Authenticator(SECRET, clock=lambda: 100_000.0)
    req = sign_request(SECRET, {"command": "stat"}, now=100_000.0 + delta)
    with pytest.raises(AuthenticationError, match="window"):
        auth.verify(req)


def test_window_is_configurable():
    auth = Authenticator(SECRET, window=5, clock=lambda: 100.0)
    auth.verify(sign_request(SECRET, {"command": "stat"}, now=96.0))
    with pytest.raises(AuthenticationError):
        auth.verify(sign_request(SECRET, {"command": "stat"}, now=94.0))


def test_tampered_request_and_attachment():
    auth = Authenticator(SECRET, clock=lambda: 50.0)
    att = [b"mask bytes \x00\x01"]
    req = sign_request(SECRET, {"command": "new", "argument": {"directory": "a"}}, att, now=50.0)
    bad = dict(req, argument={"directory": "b"})
    with pytest.raises(AuthenticationError):
        auth.verify(bad, att)
    with pytest.raises(AuthenticationError):
        auth.verify(req, [b"mask bytes \x00\x02"])
    with pytest.raises(AuthenticationError):
        auth.verify(req, [])  # attachment left out
    with pytest.raises(AuthenticationError):
        auth.verify(req, att + [b""])  # attachment added
    with pytest.raises(AuthenticationError):  # bytes moved between attachments
        auth.verify(req, [b"mask bytes", b" \x00\x01"])
    auth.verify(req, att)


def test_sign_is_hmac_sha256_of_documented_message():
    import hashlib
    import hmac

    req = {"command": "new", "time": 3.0}
    atts = [b"abc", b""]
    msg = canonical_bytes(req) + b"".join(len(a).to_bytes(8, "big") + a for a in atts)
    assert (
        compute_sign(SECRET, req, atts)
        == hmac.new(SECRET.encode(), msg, hashlib.sha256).hexdigest()
    )


@pytest.mark.parametrize(
    "req",
    [
        {"command": "stat", "time": 1.0},  # unsigned
        {"command": "stat", "time": 1.0, "sign": ""},
        {"command": "stat", "sign": "ab" * 32},  # no time
        {"command": "stat", "time": "now", "sign": "ab" * 32},
        {"command": "stat", "time": True, "sign": "ab" * 32},
        {"command": "stat", "time": 1.0, "sign": 5},
        {"command": "stat", "time": 1.0, "sign": "\udcff" * 3},
    ],
)
def test_malformed_auth_fields(req):
    with pytest.raises(AuthenticationError):
        Authenticator(SECRET, clock=lambda: 1.0).verify(req)


def test_replay_cache_expires_and_is_bounded():
    c = ReplayCache(ttl=10, capacity=3)
    c.check_and_add("a", 0.0, now=0.0)
    c.check_and_add("b", 0.0, now=0.0)
    c.check_and_add("c", 0.0, now=0.0)
    with pytest.raises(AuthenticationError, match="too many"):
        c.check_and_add("d", 0.0, now=1.0)
    c.check_and_add("d", 11.0, now=11.0)  # a, b, c expired
    assert len(c) == 1
    with pytest.raises(AuthenticationError):
        c.check_and_add("d", 11.0, now=12.0)


def test_repr_hides_secret():
    assert SECRET not in repr(Authenticator(SECRET))
