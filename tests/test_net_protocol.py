"""Protocol: schemas, command names, path confinement, fuzzed requests (in-process service)."""

import base64
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from net_support import SECRET, ask, calibration_dict, mask_array, signed, wait_for, write_frames

from gpusaxs.server import protocol as P
from gpusaxs.server.auth import sign_request
from gpusaxs.server.saxsdogserver import SaxsdogService

RESULTS = {
    "new queue",
    "queue closed",
    "queue stopped emptied and closed",
    "plot data",
    "directory refilled queue",
    "stat",
    "directory listing",
    "Error",
    "AuthenticationError",
}


@pytest.fixture
def service(tmp_path):
    base = tmp_path / "base"
    (base / "data").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.chi").write_text("secret curve\n")
    os.symlink(outside, base / "link")
    svc = SaxsdogService(base, SECRET, threads=1, batch_size=4, backend="numpy")
    yield svc
    svc.shutdown(timeout=30)


def test_schemas_are_valid_and_shipped():
    import jsonschema

    for name in ("request", "response"):
        schema = P.load_schema(name)
        jsonschema.validators.validator_for(schema).check_schema(schema)
    assert set(P.load_schema("request")["properties"]["command"]["enum"]) == set(P.COMMANDS)


@pytest.mark.parametrize(
    "cmd", ["stat", "plot", "send plot", "close", "close queue", "abort", "abort queue", "readdir"]
)
def test_command_names_without_queue(service, cmd):
    ans = ask(service, signed({"command": cmd}))
    if P.COMMANDS[cmd] == "stat":
        assert ans["result"] == "stat"
        assert set(ans["data"]["stat"]) == set(P.STAT_FIELDS) | {P.STAT_FAILED}
    else:
        assert ans["result"] == "Error" and "new" in ans["data"]["Error"]


def _new(svc, directory="data", mask=True, maskbin=False):
    from gpusaxs.io.masks import fit2d_mask_bytes

    mb = fit2d_mask_bytes(mask_array()) if mask else None
    req, atts = P.new_request(calibration_dict(), directory, mb, "m.msk", use_maskbin=maskbin)
    req["command"] = "new queue"
    return ask(svc, signed(req, atts))


def test_new_readdir_plot_get_close_in_process(service, tmp_path):
    write_frames(tmp_path / "base" / "data", 5)
    ans = _new(service, maskbin=True)
    assert ans["result"] == "new queue", ans
    assert ask(service, signed({"command": "readdir"}))["result"] == "directory refilled queue"
    done = wait_for(
        lambda: ask(service, signed({"command": "stat"}))["data"]["stat"]["pics"] == 5, 60
    )
    assert done
    plot = ask(service, signed({"command": "send plot"}))
    assert plot["result"] == "plot data" and len(plot["data"]["array"]) == 3
    assert plot["data"]["filename"].startswith("data/img_")
    got = ask(service, signed({"command": "get", "argument": {"path": "data/img_00002.tif"}}))
    assert got["result"] == "plot data" and got["data"]["filename"] == "data/img_00002.tif"
    lst = ask(service, signed({"command": "listdir", "argument": {"directory": "data"}}))
    names = [e["name"] for e in lst["data"]["entries"]]
    assert "work" in names and "img_00000.tif" in names
    # same calibration again: the integrator comes from the cache
    ans = _new(service)
    assert ans["data"]["cal"]["cached"] is True
    # restart-safe: readdir skips the 5 done frames
    ask(service, signed({"command": "readdir"}))
    assert wait_for(lambda: service.queue.skipped == 5, 30)
    closed = ask(service, signed({"command": "close queue"}))
    assert closed["result"] == "queue closed"
    assert wait_for(lambda: service.queue.state == "closed", 30)
    assert ask(service, signed({"command": "readdir"}))["result"] == "Error"


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../outside",
        "/",
        "/etc",
        "link",
        "link/",
        "data/../..",
        "data/../../outside",
        "/tmp",
    ],
)
def test_path_traversal_refused(service, path):
    for req in (
        {"command": "listdir", "argument": {"directory": path}},
        {"command": "get", "argument": {"path": path + "/x.chi"}},
    ):
        ans = ask(service, signed(req))
        assert ans["result"] == "Error", (req, ans)
    ans = _new(service, directory=path)
    assert ans["result"] == "Error" and (
        "outside" in ans["data"]["Error"] or "does not exist" in ans["data"]["Error"]
    )
    assert service.queue is None


def test_absolute_path_inside_base_is_fine(service, tmp_path):
    ans = ask(
        service,
        signed({"command": "listdir", "argument": {"directory": str(tmp_path / "base" / "data")}}),
    )
    assert ans["result"] == "directory listing" and ans["data"]["directory"] == "data"


def test_auth_errors_and_limits(service):
    req = {"command": "stat", "time": 1.0}
    assert ask(service, [json.dumps(req).encode()])["result"] == "AuthenticationError"
    frames = signed({"command": "stat"})
    assert ask(service, frames)["result"] == "stat"
    replay = ask(service, frames)
    assert replay["result"] == "AuthenticationError" and "replay" in replay["data"]["Error"]
    other = [json.dumps(sign_request("wrong secret, long enough", {"command": "stat"})).encode()]
    ans = ask(service, other)
    assert ans["result"] == "AuthenticationError"
    assert SECRET not in json.dumps(ans)
    stale = [json.dumps(sign_request(SECRET, {"command": "stat"}, now=1.0)).encode()]
    assert ask(service, stale)["result"] == "AuthenticationError"
    # tampered attachment
    req2, atts = P.new_request(calibration_dict(), "data", b"abc", "m.msk")
    fr = signed(req2, atts)
    fr[1] = b"abd"
    assert ask(service, fr)["result"] == "AuthenticationError"
    # size limits
    big = signed({"command": "stat"}, [b"x" * (service.max_attachment + 1)])
    assert "too large" in ask(service, big)["data"]["Error"]
    many = signed({"command": "stat"}, [b""] * (service.max_attachments + 1))
    assert "too many" in ask(service, many)["data"]["Error"]
    huge = [b"{" + b" " * (service.max_request + 1) + b"}"]
    assert "too large" in ask(service, huge)["data"]["Error"]
    # bad base64 mask, unknown command (signed)
    req3 = {
        "command": "new",
        "argument": {"directory": "data", "calibration": calibration_dict(), "maskbin": "***"},
    }
    assert "base64" in ask(service, signed(req3))["data"]["Error"]
    assert ask(service, signed({"command": "explode"}))["result"] == "Error"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

commands = st.sampled_from(sorted(P.COMMANDS) + ["", "NEW", "new file", "stat "]) | st.text(
    max_size=12
)
arguments = (
    st.fixed_dictionaries(
        {},
        optional={
            "directory": st.sampled_from([".", "data", "..", "/", "link", "nope"]) | json_values,
            "calibration": st.just(calibration_dict())
            | st.dictionaries(st.sampled_from(list(calibration_dict())), json_values, max_size=10)
            | json_values,
            "mask": json_values | st.text(max_size=12),
            "maskbin": st.just(base64.b64encode(b"\x00" * 16).decode()) | json_values,
            "path": st.sampled_from(["data/a.tif", "../x.chi", "data"]) | json_values,
        },
    )
    | json_values
)
requests = st.fixed_dictionaries(
    {"command": commands}, optional={"argument": arguments, "extra": json_values}
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(req=requests, atts=st.lists(st.binary(max_size=64), max_size=2))
def test_fuzz_signed_requests(service, req, atts):
    try:
        frames = signed(req, atts)
    except ValueError:  # not canonicalisable (cannot be signed): not a request
        return
    ans = ask(service, frames)
    assert ans["result"] in RESULTS
    assert ans["result"] != "AuthenticationError", ans


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    frames=st.lists(
        st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()),
        min_size=0,
        max_size=3,
    )
)
def test_fuzz_unsigned_garbage(service, frames):
    ans = ask(service, frames)
    assert ans["result"] in ("Error", "AuthenticationError")


def test_service_still_answers_after_fuzz(service):
    assert ask(service, signed({"command": "stat"}))["result"] == "stat"
