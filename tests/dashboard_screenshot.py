"""Retake docs/dashboard.png: `PYTHONPATH=. python tests/dashboard_screenshot.py OUT.png`.

Not a test.  A saxsdogserver (-w) and a dashboard on loopback, the demo's PILATUS 1M frames fed
at about two a second (one broken file among them) with a grazing-incidence calibration (the
dashboard's --maps shows the newest map), a screenshot in headless chromium while frames are
still coming.  Needs /usr/bin/chromium and playwright, like test_dashboard_e2e.py.
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from net_support import SECRET, Proc, free_port, write_config  # noqa: E402
from test_dashboard_e2e import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    GRAZING,
    DemoFrames,
    card,
    start_server,
)

N_FRAMES = 40
PACE_S = 0.5  # seconds between frames: a steady feed for the frames/s chart


def main(out):
    from playwright.sync_api import expect, sync_playwright

    from gpusaxs.io.masks import write_fit2d_mask
    from gpusaxs.server import protocol as P

    tmp = Path(tempfile.mkdtemp(prefix="dashboard-shot-"))
    sport = free_port()
    cfg = write_config(tmp / "net.json", sport, free_port())
    data = tmp / "base" / "run42"
    data.mkdir(parents=True)
    server = start_server(tmp, cfg, tmp / "base", sport, "server")
    dash = Proc(
        "gpusaxs.clients.dashboard",
        ["--config", cfg, "--port", "0", "--maps", str(data / "work")],
        tmp / "dash.ready",
        tmp / "dash.log",
    )
    try:
        frames = DemoFrames()
        write_fit2d_mask(tmp / "mask.msk", frames.mask)
        cal = dict(frames.cal, GrazingIncidence=GRAZING)
        req, att = P.new_request(cal, "run42", (tmp / "mask.msk").read_bytes(), "mask.msk")
        with P.Client(f"tcp://127.0.0.1:{sport}", SECRET, timeout=10) as client:
            assert client.request("new", req["argument"], att)["result"] == "new queue"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1720, "height": 1000})
            page.goto(dash.info["url"])
            frames.write(data, 0, 1)
            expect(card(page, "frames finished")).to_have_text("1", timeout=120_000)
            for i in range(1, N_FRAMES):
                frames.write(data, i, 1)
                if i == 25:
                    (data / "frame_bad_00025.tif").write_bytes(b"II*\x00 truncated")
                time.sleep(PACE_S)
                if i == N_FRAMES - 4:
                    page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        dash.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"screenshot written to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "dashboard.png")
