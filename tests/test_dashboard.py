"""The dashboard without a browser: poller states, panels (escaping, new fields), page models."""

import re

import numpy as np
import pytest

from gpusaxs.clients.dashboard import cli, panels
from gpusaxs.clients.dashboard.watch import ServerWatch, Snapshot
from gpusaxs.server.protocol import NoAnswer


def stat_answer(processed, pics=None, directory="data", errors=(), **extra):
    pics = processed if pics is None else pics
    data = {
        "stat": {
            "time interval": 1.0,
            "queue length": 0,
            "frames per sec": 1.0,
            "images processed": processed,
            "pics": pics,
        },
        "queue": {
            "directory": directory,
            "state": "running",
            "errors": len(errors),
            "skipped": 0,
            "dropped": 0,
            "backend": "numpy",
            "failure": None,
        },
        "errors": {"count": len(errors), "recent": [{"file": f, "error": e} for f, e in errors]},
        "feeder": {"messages": 0, "files": 0, "last message age": None},
    }
    data.update(extra)
    return {"result": "stat", "data": data}


def plot_answer(name, q, intensity):
    return {
        "result": "plot data",
        "data": {"filename": name, "array": [list(q), list(intensity)], "stat": {}},
    }


class FakeClient:
    """Answers from a script: ``server`` (a dict) says what the server holds now; None = down."""

    url = "tcp://127.0.0.1:1"
    timeout = 1.0

    def __init__(self):
        self.server = None
        self.sent = []

    def request(self, command, argument=None, attachments=()):
        self.sent.append(command)
        if self.server is None:
            raise NoAnswer("down")
        return self.server[command]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return 1.7e9 + self.t, self.t


@pytest.fixture
def watched():
    client, clock = FakeClient(), Clock()
    return client, clock, ServerWatch(client, n_curves=5, clock=clock)


def test_answering_down_and_back(watched):
    client, clock, w = watched
    assert w.snapshot().answering is None
    w.poll_once()
    s = w.snapshot()
    assert s.answering is False and s.last_answer is None and "no answer" in s.problem
    assert "server not answering" in panels.status_html(s)
    clock.t += 1
    client.server = {
        "stat": stat_answer(0),
        "plot": {"result": "Error", "data": {"Error": "no curve yet"}},
    }
    w.poll_once()
    s = w.snapshot()
    assert s.answering is True and s.since == 1.7e9 + 1001 and s.problem is None
    assert s.curve_note == "no curve yet" and s.curves == []
    assert "server answering" in panels.status_html(s)
    assert "not answering" not in panels.status_html(s)
    client.server = None
    clock.t += 1
    w.poll_once()
    s = w.snapshot()
    assert s.answering is False and s.since == 1.7e9 + 1002 and s.last_answer == 1.7e9 + 1001
    assert s.data["stat"]["images processed"] == 0  # the last answer stays on the page


def test_refused_answer_is_shown(watched):
    client, clock, w = watched
    client.server = {"stat": {"result": "AuthenticationError", "data": {"Error": "bad sign"}}}
    w.poll_once()
    s = w.snapshot()
    assert s.answering is True and "AuthenticationError: bad sign" in s.problem
    assert "bad sign" in panels.status_html(s)


def test_rate_over_window_and_server_restart(watched):
    client, clock, w = watched
    q = np.linspace(0.1, 3, 50)
    for i in range(12):  # 10 frames per second for 11 s
        client.server = {"stat": stat_answer(10 * i), "plot": plot_answer(f"f{i}", q, q + i)}
        w.poll_once()
        clock.t += 1
    rate = w.snapshot().rate
    assert len(rate) == 11  # no point before two samples
    assert rate[-1][1] == pytest.approx(10.0)
    client.server["stat"] = stat_answer(3)  # restarted: counts from zero again
    w.poll_once()
    clock.t += 1
    client.server["stat"] = stat_answer(8)
    w.poll_once()
    rates = [r for _, r in w.snapshot().rate]
    assert min(rates) >= 0 and rates[-1] == pytest.approx(5.0)


def test_curves_fetched_when_new_kept_and_reset_on_new_grid(watched):
    client, clock, w = watched
    q = np.linspace(0.1, 3, 50)
    client.server = {"stat": stat_answer(1), "plot": plot_answer("a.tif", q, 1 + q)}
    w.poll_once()
    w.poll_once()  # nothing new: no second plot request
    assert client.sent == ["stat", "plot", "stat"]
    for i in range(2, 9):
        client.server = {"stat": stat_answer(i), "plot": plot_answer(f"{i}.tif", q, i + q)}
        w.poll_once()
    s = w.snapshot()
    assert [c.filename for c in s.curves] == ["4.tif", "5.tif", "6.tif", "7.tif", "8.tif"]
    assert s.curves_seen == 8
    np.testing.assert_array_equal(s.curves[-1].intensity, 8 + q)
    q2 = np.linspace(0.1, 3, 80)  # a new calibration: another q grid
    client.server = {"stat": stat_answer(9), "plot": plot_answer("n.tif", q2, q2)}
    w.poll_once()
    assert [c.filename for c in w.snapshot().curves] == ["n.tif"]


def test_null_bins_become_nan(watched):
    client, clock, w = watched
    client.server = {"stat": stat_answer(1), "plot": plot_answer("a", [1.0, 2.0], [None, 3.0])}
    w.poll_once()
    c = w.snapshot().curves[-1]
    assert np.isnan(c.intensity[0]) and c.intensity[1] == 3.0


def test_errors_newest_first_and_escaped():
    evil = "<img src=x onerror=alert(1)>.tif"
    data = stat_answer(3, errors=[("data/old.tif", "first"), (evil, "bad <b>header</b>")])["data"]
    out = panels.errors_html(data)
    assert "<img" not in out and "&lt;img src=x" in out and "&lt;b&gt;header" in out
    assert out.index("onerror") < out.index("data/old.tif")  # newest first
    assert "2 error records" in out
    assert "no error records" in panels.errors_html(stat_answer(0)["data"])


def test_cards_show_known_and_new_fields():
    data = stat_answer(
        1234,
        **{"lag s": 0.25},
        uptime=3725,
        feeder={"messages": 7, "files": 2, "rejected events": 3, "last message age": 0.4},
    )["data"]
    snap = Snapshot(url="u", data=data, rate=[(0, 12.5)])
    out = panels.cards_html(snap)
    for label, value in [
        ("frames finished", "1,234"),
        ("engine", "numpy"),
        ("lag", "0.25 s"),
        ("uptime", "1:02:05"),
        ("frames/s now", "12.5"),
        ("feeder.rejected events", "3"),
    ]:
        assert f'data-field="{label}" style="font-size:20px;color:#111">{value}<' in out, label
    empty = panels.cards_html(Snapshot(url="u"))
    assert 'data-field="lag" style="font-size:20px;color:#111">-<' in empty
    assert "feeder.files" in panels.fields_html(data)


STREAMS = {
    "detector": "tcp://eiger:31001",
    "version": 2,
    "policy": "block",
    "malformed": 2,
    "series": [
        {
            "series_id": 7,
            "state": "receiving",
            "expected": 200,
            "received": 100,
            "integrated": 50,
            "errors": 1,
            "missing": 1,
            "rate": 50.0,
            "lag": 49,
            "lag s": 0.98,
            "file": "series_7.nxs",
        },
        {
            "series_id": 8,
            "state": "ended",
            "expected": None,
            "received": 10,
            "integrated": 10,
            "errors": 0,
            "missing": None,
            "rate": 0.0,
            "lag": 0,
            "lag s": None,
        },
    ],
}


def test_stream_series_table_and_lag():
    out = panels.series_html({"streams": STREAMS})
    assert out.count("class='gs-series'") == 2
    head = re.findall(r"<th[^>]*>([^<]*)</th>", out)
    assert head[:9] == [
        "series",
        "progress",
        "received",
        "integrated",
        "errors",
        "missing",
        "rate",
        "lag",
        "lag s",
    ]
    assert {"state", "expected", "file"} <= set(head)
    assert "<b>7</b>" in out and "50 / 200" in out and "width:25%" in out
    assert "tcp://eiger:31001" in out and "malformed 2" in out
    assert panels.series_html(stat_answer(1)["data"]) == ""
    text, _ = panels.lag_text({"streams": STREAMS}, {})
    assert text == "49 fr (0.98 s)"
    cards = panels.cards_html(Snapshot(url="u", data={"streams": STREAMS}))
    assert 'data-field="streams.malformed" style="font-size:20px;color:#111">2<' in cards


def test_series_as_dict_of_dicts():
    out = panels.series_html({"series": {"a": {"received": 3}, "b": {"received": 4}}})
    assert out.count("class='gs-series'") == 2 and "<b>b</b>" in out


def test_builds_panel():
    assert panels.builds_html(stat_answer(0)["data"]) == ""
    out = panels.builds_html(
        {
            "builds": [
                {
                    "key": "ab",
                    "label": "data/<x>",
                    "state": "running",
                    "progress": 0.4,
                    "rows": [400, 1000],
                    "elapsed": 2.5,
                }
            ]
        }
    )
    assert "building the integration matrix" in out and "data/&lt;x&gt;" in out
    assert "width:40%" in out and "rows 400 / 1,000" in out and "2.5 s" in out


def test_page_models_follow_the_snapshot():
    pytest.importorskip("bokeh", reason="bokeh not installed (pip install '.[test]')")
    from bokeh.document import Document

    from gpusaxs.clients.dashboard.page import make_document

    client, clock = FakeClient(), Clock()
    w = ServerWatch(client, n_curves=20, clock=clock)
    doc = Document()
    make_document(doc, w)
    update = next(iter(doc.session_callbacks)).callback
    assert "connecting" in doc.get_model_by_name("status").text
    q = np.linspace(0.1, 3, 40)
    for i in range(15):
        client.server = {
            "stat": stat_answer(i + 1),
            "plot": plot_answer(f"data/f{i}.tif", q, (i + 1) * np.exp(-q)),
        }
        w.poll_once()
        clock.t += 1
    update()
    latest = doc.get_model_by_name("latest_curve").data
    np.testing.assert_allclose(latest["I"], 15 * np.exp(-q))
    assert "data/f14.tif" in doc.get_model_by_name("curve_figure").title.text
    img = doc.get_model_by_name("waterfall").data["image"][0]
    assert img.shape == (15, 40)
    np.testing.assert_allclose(img[0], np.log10(np.exp(-q)))  # oldest at the bottom
    assert (
        'data-field="frames finished" style="font-size:20px;color:#111">15<'
        in doc.get_model_by_name("cards").text
    )
    client.server = None
    w.poll_once()
    update()
    assert "server not answering" in doc.get_model_by_name("status").text


def test_bind_warning_and_origins():
    assert cli.bind_warning("127.0.0.1", 8050) is None
    assert cli.bind_warning("::1", 8050) is None
    assert cli.bind_warning("localhost", 8050) is None
    assert "WARNING" in cli.bind_warning("0.0.0.0", 8050)
    assert "192.168.1.5:8050" in cli.bind_warning("192.168.1.5", 8050)
    assert cli.origins("127.0.0.1") == ["localhost", "127.0.0.1"]
    assert "10.0.0.2" in cli.origins("10.0.0.2", ["cr:8050"]) and "cr:8050" in cli.origins(
        "10.0.0.2", ["cr:8050"]
    )


def test_saxsleash_dashboard_help(capsys):
    from gpusaxs.clients.saxsleash import main

    with pytest.raises(SystemExit) as exc:
        main(["dashboard", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--bind" in out and "127.0.0.1" in out and "examples:" in out


def test_stream_error_records_newest_first():
    streams = dict(STREAMS)
    streams["recent errors"] = [
        {"time": 1.7e9, "series_id": 7, "image_id": 3, "kind": "error", "error": "bad CBOR"},
        {
            "time": 1.7e9 + 5,
            "series_id": 7,
            "image_id": None,
            "kind": "missing",
            "error": "2 image ids never arrived",
            "ids": [4, 5],
        },
    ]
    out = panels.errors_html({"streams": streams})
    assert "stream error records" in out and "no error records in this queue" in out
    assert out.index("missing: 2 image ids") < out.index("series 7 image 3")
    assert "bad CBOR" in out and "[4, 5]" not in out
