"""End to end in a real headless browser: saxsdogserver + a folder of frames + saxsleash dashboard.

The frames are the demo's synthetic silver behenate on a PILATUS 1M (real size).

Debian's chromium (``apt-get install chromium``) driven by Playwright for Python.  Every wait is a
bounded Playwright wait on a page condition.  Set GPUSAXS_DASHBOARD_SCREENSHOT=FILE.png to keep a
screenshot of the page taken mid-run (docs/dashboard.png comes from the longer run of
tests/dashboard_screenshot.py).
"""

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found (apt-get install -y chromium)", allow_module_level=True)
pytest.importorskip("bokeh", reason="bokeh not installed (pip install '.[test]')")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright not installed (pip install '.[test]')"
)

from net_support import SECRET, Proc, free_port, write_config  # noqa: E402

from gpusaxs.clients.dashboard.maps import newest_map  # noqa: E402
from gpusaxs.server import protocol as P  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
]
WAIT_MS = 25_000


class DemoFrames:
    """The demo's synthetic silver-behenate frames on a PILATUS 1M (gpusaxs.demo), real size.

    The expected counts are computed once; each frame is a Poisson draw of them (times 1, 2 or 3,
    so consecutive curves differ), with the module gaps at -1.
    """

    def __init__(self):
        from gpusaxs.calibration_model import Calibration
        from gpusaxs.demo import (
            DEMO_CALIBRATION,
            PILATUS_1M_SHAPE,
            calibrant_profile,
            demo_mask,
            pilatus_gaps,
        )
        from gpusaxs.geometry import polarization_factor, q_map

        self.cal = dict(DEMO_CALIBRATION)
        cal = Calibration.from_dict(self.cal).replace(mask_file=None)
        self.expected = calibrant_profile(q_map(cal)) * polarization_factor(cal)
        self.gaps = pilatus_gaps(PILATUS_1M_SHAPE)
        height = self.cal["Imagesize"][0]
        y, x = self.cal["BeamCenter"]
        self.mask = demo_mask(PILATUS_1M_SHAPE, (height - y, x))

    def write(self, folder, start, n):
        """Frames frame_<start>.tif ... (int32 TIFF, temporary name then rename)."""
        import tifffile

        for i in range(start, start + n):
            img = np.random.default_rng(i).poisson(self.expected * (1 + i % 3)).astype(np.int32)
            img[self.gaps] = -1
            buf = io.BytesIO()
            tifffile.imwrite(buf, img)
            tmp = folder / f".frame_{i:05d}.tif.part"
            tmp.write_bytes(buf.getvalue())
            os.replace(tmp, folder / f"frame_{i:05d}.tif")


def start_server(tmp, cfg, base, port, name):
    return Proc(
        "gpusaxs.server.saxsdogserver",
        [
            "--config",
            cfg,
            "--bind",
            "127.0.0.1",
            "-p",
            port,
            "-w",
            "--settle",
            "1",
            "-t",
            "1",
            "-b",
            "4",
            base,
        ],
        tmp / f"{name}.ready",
        tmp / f"{name}.log",
    )


@pytest.fixture
def setup(tmp_path):
    sport = free_port()
    cfg = write_config(tmp_path / "net.json", sport, free_port())
    base = tmp_path / "base"
    data = base / "data"
    data.mkdir(parents=True)
    procs = {}
    yield {"cfg": cfg, "base": base, "data": data, "sport": sport, "tmp": tmp_path, "procs": procs}
    for p in procs.values():
        p.kill()


def card(page, field):
    return page.locator(f'.gs-card[data-field="{field}"]')


def latest_curve(page):
    """(title, q, I) of the latest curve as the browser holds it (Bokeh's data source)."""
    return page.evaluate("""() => {
        const doc = Bokeh.documents[0];
        const src = doc.get_model_by_name('latest_curve');
        const fig = doc.get_model_by_name('curve_figure');
        return [fig.title.text, Array.from(src.data.q), Array.from(src.data.I)];
    }""")


def wait_curve_title(page, filename):
    page.wait_for_function(
        """(f) => {
        const d = window.Bokeh && Bokeh.documents[0];
        const fig = d && d.get_model_by_name('curve_figure');
        return fig && fig.title.text.includes(f);
    }""",
        arg=filename,
        timeout=WAIT_MS,
    )


def check_against_chi(page, chi_path):
    """The page's latest curve is the server's .chi file (positive values; log axis)."""
    from gpusaxs.io.chi import read_chi

    _, q, intensity = latest_curve(page)
    c = read_chi(chi_path)
    expected = np.where(c.intensity > 0, c.intensity, np.nan)
    got = np.array([np.nan if v is None else v for v in intensity], dtype=float)
    assert len(q) == len(c.q)
    np.testing.assert_allclose(np.array(q, dtype=float), c.q, rtol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)
    return got


#: the queue also writes each frame's grazing-incidence map (issue 28); the page shows the newest
GRAZING = {"IncidentAngleDeg": 0.5, "SplitPixels": False, "Map": {"NptIp": 60, "NptOop": 50}}


def map_view(page):
    """(title, x label, y label, image cells) of the map figure as the browser holds it."""
    return page.evaluate("""() => {
        const doc = Bokeh.documents[0];
        const fig = doc.get_model_by_name('map_figure');
        const img = doc.get_model_by_name('gi_map').data.image;
        return [fig.title.text, fig.below[0].axis_label, fig.left[0].axis_label,
                img.length ? Array.from(img[0]) : []];
    }""")


def wait_map_title_not(page, old):
    """Wait until the map figure is shown with a title other than ``old``."""
    page.wait_for_function(
        """(old) => {
        const d = window.Bokeh && Bokeh.documents[0];
        const fig = d && d.get_model_by_name('map_figure');
        return fig && fig.visible && fig.title.text.startsWith('map: ')
            && fig.title.text !== old;
    }""",
        arg=old,
        timeout=WAIT_MS,
    )


def check_map_against_file(page, path):
    """The page's map is the file's intensity (cells <= 0 or NaN: no colour)."""
    import h5py

    title, xlabel, ylabel, cells = map_view(page)
    assert (xlabel, ylabel) == ("qip (1/nm)", "qoop (1/nm)")
    with h5py.File(path, "r") as f:
        grid = f["entry/data/intensity"][()]
    expected = np.where(grid > 0, grid, np.nan).ravel()
    got = np.array([np.nan if v is None else v for v in cells], dtype=float)
    np.testing.assert_allclose(got, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(got).any() and np.isfinite(got).any()  # the wedge and the data
    return title, got


@pytest.mark.slow
def test_dashboard_live_in_chromium(setup):
    s = setup
    tmp, data = s["tmp"], s["data"]
    frames = DemoFrames()
    failed = []
    with ThreadPoolExecutor(2) as pool:  # both start at once, each waits for its ready file
        server = pool.submit(start_server, tmp, s["cfg"], s["base"], s["sport"], "server")
        dash = pool.submit(
            Proc,
            "gpusaxs.clients.dashboard",
            [
                "--config",
                s["cfg"],
                "--port",
                "0",
                "--interval",
                "0.25",
                "--timeout",
                "1",
                "--maps",
                str(data / "work"),
            ],
            tmp / "dash.ready",
            tmp / "dash.log",
        )
        for name, future in (("server", server), ("dash", dash)):
            try:
                s["procs"][name] = future.result()
            except RuntimeError as exc:  # the fixture stops the one that started
                failed.append(str(exc))
    if failed:
        pytest.fail("\n".join(failed))
    dash = s["procs"]["dash"]
    page_url = dash.info["url"]
    assert page_url.startswith("http://127.0.0.1:")

    client = P.Client(f"tcp://127.0.0.1:{s['sport']}", SECRET, timeout=10)
    from gpusaxs.io.masks import write_fit2d_mask

    write_fit2d_mask(tmp / "mask.msk", frames.mask)
    cal = dict(frames.cal, GrazingIncidence=GRAZING)
    req, att = P.new_request(cal, "data", (tmp / "mask.msk").read_bytes(), "mask.msk")
    answer = client.request("new", req["argument"], att)
    assert answer["result"] == "new queue", answer

    requests, ws_frames = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1250})
            page.on("request", lambda r: requests.append(r.url))
            page.on(
                "websocket",
                lambda ws: ws.on("framereceived", lambda payload: ws_frames.append(payload)),
            )
            page.goto(page_url)
            expect = sync_api.expect
            expect(page.get_by_text("server answering")).to_be_visible(timeout=WAIT_MS)

            # frames come: the count and the curve follow the server
            frames.write(data, 0, 3)
            # the first build of the integration matrix may compile numba kernels: in a fresh
            # clone (cold numba cache) on 2 busy cores the whole test took 160 s instead of ~40 s
            expect(card(page, "frames finished")).to_have_text("3", timeout=300_000)
            expect(card(page, "curves")).to_have_text("3")
            title, _, _ = latest_curve(page)
            first_name = title.split("latest curve: ")[1].split()[0]
            first = check_against_chi(page, data / "work" / (Path(first_name).stem + ".chi"))
            wait_map_title_not(page, "")  # the map view appears with the first map
            map_title, _, _, _ = map_view(page)
            map_name = map_title.split("map: ")[1].split()[0]
            _, first_map = check_map_against_file(page, data / "work" / f"{map_name}.gi.nxs")

            frames.write(data, 3, 4)
            (data / "broken_00001.tif").write_bytes(b"II*\x00 this is not a TIFF frame")
            expect(card(page, "frames finished")).to_have_text("8", timeout=WAIT_MS)
            expect(card(page, "errors")).to_have_text("1")
            expect(page.locator(".gs-error").first).to_contain_text("data/broken_00001.tif")
            title, _, _ = latest_curve(page)
            name = title.split("latest curve: ")[1].split()[0]
            assert name != first_name
            wait_curve_title(page, name)
            latest = check_against_chi(page, data / "work" / (Path(name).stem + ".chi"))
            assert not np.allclose(latest, first, equal_nan=True)  # the curve changed
            wait_map_title_not(page, map_title)  # a newer map replaced the first
            newest = Path(newest_map(data / "work")[1]).name[: -len(".gi.nxs")]
            assert newest in {f"frame_{i:05d}" for i in range(3, 7)}
            page.wait_for_function(  # the newest of the 7 (the watch may show one between)
                "(f) => Bokeh.documents[0].get_model_by_name('map_figure').title.text"
                ".startsWith('map: ' + f + ' ')",
                arg=newest,
                timeout=WAIT_MS,
            )
            _, latest_map = check_map_against_file(page, data / "work" / f"{newest}.gi.nxs")
            assert not np.allclose(latest_map, first_map, equal_nan=True)  # the map changed
            page.wait_for_function(  # the waterfall filled
                "() => Bokeh.documents[0].get_model_by_name('waterfall').data.image.length > 0",
                timeout=WAIT_MS,
            )
            page.wait_for_function(  # the frames/s chart moved
                "() => Math.max(...Bokeh.documents[0].get_model_by_name('frames_per_s')"
                ".data.rate) > 0",
                timeout=WAIT_MS,
            )
            assert SECRET not in page.content()
            shot = os.environ.get("GPUSAXS_DASHBOARD_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)

            # the server goes away and comes back
            assert s["procs"].pop("server").stop() == 0
            expect(page.get_by_text("server not answering")).to_be_visible(timeout=WAIT_MS)
            s["procs"]["server"] = start_server(tmp, s["cfg"], s["base"], s["sport"], "server2")
            expect(page.get_by_text("server answering")).to_be_visible(timeout=WAIT_MS)
            expect(card(page, "frames finished")).to_have_text("0", timeout=WAIT_MS)
        finally:
            browser.close()
            client.close()
    assert s["procs"].pop("dash").stop() == 0, dash.output()  # SIGTERM: clean exit

    origin = page_url.rstrip("/")
    outside = [
        u
        for u in requests
        if not (u.startswith(origin) or u.startswith("data:") or u.startswith("blob:"))
    ]
    assert not outside, f"the page loaded assets from elsewhere: {outside}"
    assert any("/static/" in u and u.endswith(".js") or ".js?" in u for u in requests)
    assert ws_frames, "no websocket updates seen"
    assert not any(
        SECRET in (f if isinstance(f, str) else f.decode("latin-1")) for f in ws_frames
    ), "the secret reached the browser"
