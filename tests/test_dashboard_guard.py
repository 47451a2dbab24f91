"""Issue 23 cases 16 and 17: the dashboard checks the Host of every request (DNS rebinding) and
bounds its sessions.  Driven as users run it: ``saxsleash --config C dashboard`` as a process,
Debian's chromium through Playwright for the browser's view."""

import http.client
import os
import subprocess
import sys

import pytest
from net_support import REPO, env, free_port, wait_for, write_config

CHROMIUM = "/usr/bin/chromium"
pytest.importorskip("bokeh", reason="bokeh not installed (pip install '.[test]')")


class Dashboard:
    def __init__(self, tmp_path, *extra):
        cfg = write_config(tmp_path / "net.json", free_port(), free_port())
        self.ready = tmp_path / "dash.ready.json"
        self.log = open(tmp_path / "dash.log", "wb")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "gpusaxs.clients.saxsleash", "--config", str(cfg)]
            + ["dashboard", "--port", "0", "--ready-file", str(self.ready), *extra],
            cwd=str(REPO),
            env=env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        assert wait_for(lambda: self.ready.exists() or self.p.poll() is not None, 60)
        assert self.ready.exists(), (tmp_path / "dash.log").read_text()
        import json

        self.port = json.loads(self.ready.read_text())["port"]

    def get(self, path="/", host=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            h = {"Host": host or f"127.0.0.1:{self.port}", **(headers or {})}
            c.request("GET", path, headers=h)
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    def rss_mb(self):
        with open(f"/proc/{self.p.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)
        self.log.close()


@pytest.fixture
def dash(tmp_path):
    made = []

    def make(*extra):
        d = Dashboard(tmp_path, *extra)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop()


def test_foreign_host_refused_on_http_and_websocket(dash):
    d = dash()
    port = d.port
    assert d.get() == 200
    assert d.get(host=f"localhost:{port}") == 200
    assert d.get(host=f"evil.test:{port}") == 403  # DNS rebinding: a foreign name
    assert d.get(host="127.0.0.1:80") == 403  # the page's real port only
    ws = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Origin": f"http://evil.test:{port}",
    }
    assert d.get("/ws", host=f"evil.test:{port}", headers=ws) == 403
    assert d.get("/static/js/bokeh.min.js", host=f"evil.test:{port}") == 403


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not found")
def test_rebound_name_is_not_live_in_chromium(dash):
    sync_api = pytest.importorskip("playwright.sync_api")
    d = dash()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--host-resolver-rules=MAP evil.test 127.0.0.1",
            ],
        )
        try:
            page = browser.new_page()
            resp = page.goto(f"http://evil.test:{d.port}/", timeout=25_000)
            assert resp.status == 403
            assert "host name not allowed" in page.content()
            good = browser.new_page()
            resp = good.goto(f"http://127.0.0.1:{d.port}/", timeout=25_000)
            assert resp.status == 200
            # live: the websocket is up and the status line is filled in by the server
            good.wait_for_function(
                """() => {
                const d = window.Bokeh && Bokeh.documents[0];
                const s = d && d.get_model_by_name('status');
                return s && s.text.length > 0;
            }""",
                timeout=25_000,
            )
        finally:
            browser.close()


def test_sessions_bounded(dash):
    d = dash("--max-sessions", "3", "--session-idle", "1")
    assert [d.get() for _ in range(3)] == [200] * 3
    assert d.get() == 503  # a fourth page while three sessions are open
    # the unused sessions expire after --session-idle: pages load again
    assert wait_for(lambda: d.get() == 200, 30, interval=0.5)


def test_memory_after_100_page_loads(dash):
    d = dash()
    assert d.get() == 200
    before = d.rss_mb()
    codes = [d.get() for _ in range(100)]
    after = d.rss_mb()
    print(
        f"\n100 page loads: {codes.count(200)} served, {codes.count(503)} answered 503; "
        f"RSS {before:.0f} -> {after:.0f} MB"
    )
    assert codes.count(503) > 0 and codes.count(200) >= 19
    assert wait_for(lambda: d.get() == 200, 40, interval=0.5)  # idle sessions expired
