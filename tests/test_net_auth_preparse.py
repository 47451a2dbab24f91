"""Issue 23 case 14: the signature is checked over the raw bytes before any JSON parsing."""

import json
import statistics
import time

import pytest
from net_support import SECRET, free_port, signed, start_server, write_config

from gpusaxs.server import protocol as P
from gpusaxs.server.auth import LEGACY_MAX_BYTES, Authenticator, sign_frame
from gpusaxs.server.saxsdogserver import SaxsdogService

FAKE = "ab" * 32


def _big_request(n_bytes):
    """A ~n_bytes JSON request of many small numbers (costly to parse and to walk)."""
    body = {"command": "stat", "argument": {"x": [0] * (n_bytes // 2)}, "time": time.time()}
    return body


def _best(fn, n=3):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def test_forged_big_request_costs_no_parse(tmp_path):
    svc = SaxsdogService(tmp_path, SECRET)
    body = _big_request(3_900_000)
    compact = json.dumps(body, separators=(",", ":")).encode()
    raw_fake = compact[:-1] + f',"sign":"{FAKE}"}}'.encode()  # the raw form, wrong key
    legacy_fake = json.dumps({"sign": FAKE, **body}, separators=(",", ":")).encode()  # older
    assert 3_800_000 < len(raw_fake) < 4_100_000
    t_parse = _best(lambda: P.parse_json(raw_fake))  # what the server did first before
    answers = []
    t_raw = _best(lambda: answers.append(svc.handle([raw_fake])))
    t_legacy = _best(lambda: answers.append(svc.handle([legacy_fake])))
    assert all(a["result"] == P.R_AUTH for a in answers), answers[:2]
    print(
        f"\n3.9 MB forged request: parse {t_parse * 1e3:.1f} ms; refused in "
        f"{t_raw * 1e3:.2f} ms (raw form), {t_legacy * 1e3:.3f} ms (older form)"
    )
    assert t_raw < 0.2 * t_parse and t_legacy < 0.2 * t_parse


def test_raw_signature_round_trip_and_older_form(tmp_path):
    auth = Authenticator(SECRET)
    att = [b"\x00mask\xff" * 100]
    frame = sign_frame(SECRET, {"command": "stat", "argument": {}}, att)
    req = auth.verify_frame(frame, att, json.loads)
    assert req["command"] == "stat" and "sign" in req
    with pytest.raises(Exception, match="replayed"):
        auth.verify_frame(frame, att, json.loads)
    tampered = sign_frame(SECRET, {"command": "stat", "argument": {}}, att)
    with pytest.raises(Exception, match="wrong signature"):
        auth.verify_frame(tampered, [b"other"], json.loads)  # attachments are signed
    with pytest.raises(Exception, match="wrong signature"):
        auth.verify_frame(sign_frame("another secret 0123456789", {"command": "stat"}), (), len)
    # older clients: the canonical signature, for frames up to LEGACY_MAX_BYTES
    old = signed({"command": "stat", "argument": {}})[0]
    assert auth.verify_frame(old, (), json.loads)["command"] == "stat"
    big_old = signed({"command": "stat", "argument": {"x": "y" * LEGACY_MAX_BYTES}})[0]
    with pytest.raises(Exception, match="not signed over its bytes"):
        auth.verify_frame(big_old, (), json.loads)


def test_command_round_trip_cost(tmp_path):
    """stat round trip over loopback: raw signature (now) vs the older form (parse first)."""
    base = tmp_path / "base"
    base.mkdir()
    cfg = write_config(tmp_path / "net.json", free_port())
    srv = start_server(tmp_path, base, cfg, ["-f", "none", "-q"])
    client = P.Client(srv.info["url"], SECRET, timeout=10)
    try:
        raw, old = [], []
        for _ in range(300):
            t0 = time.perf_counter()
            a = client.request("stat", {})
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()  # signing included on both sides
            b = client.request_raw(signed({"command": "stat", "argument": {}}))
            old.append(time.perf_counter() - t0)
            assert a["result"] == b["result"] == "stat", (a, b)
        m_raw, m_old = statistics.median(raw), statistics.median(old)
        print(
            f"\nstat round trip (median of 300): raw signature {m_raw * 1e3:.3f} ms, older "
            f"canonical signature {m_old * 1e3:.3f} ms, ratio {m_raw / m_old:.3f}"
        )
        assert m_raw < 1.5 * m_old
    finally:
        client.close()
        srv.stop()


def test_client_falls_back_to_the_older_signature_for_an_older_server():
    """A server that only knows the canonical signature (parse, then verify) still answers."""
    import threading

    import zmq

    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    auth = Authenticator(SECRET)
    seen = []

    def older_server():
        for _ in range(3):
            if not rep.poll(10_000):
                return
            frame = rep.recv()
            req = json.loads(frame)
            try:
                auth.verify(req)
                ans = {"result": "stat", "data": {"ok": True}}
            except Exception as exc:
                ans = {"result": P.R_AUTH, "data": {"Error": str(exc)}}
            seen.append(ans["result"])
            rep.send(json.dumps(ans).encode())

    t = threading.Thread(target=older_server, daemon=True)
    t.start()
    with P.Client(f"tcp://127.0.0.1:{port}", SECRET, timeout=10, context=ctx) as c:
        assert c.request("stat", {})["result"] == "stat"  # raw refused, canonical answered
        assert c.request("stat", {})["result"] == "stat"  # canonical at once
    t.join(20)
    rep.close(0)
    ctx.term()
    assert seen == [P.R_AUTH, "stat", "stat"]
