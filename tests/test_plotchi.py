"""plotchi: real processes on our and fit2d's .chi files, plus the figure it draws."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gpusaxs.io.chi import write_chi

ROOT = Path(__file__).resolve().parents[1]


def run(args, cwd, **env_changes):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.plotchi", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture
def ours(tmp_path):
    """A 3-column curve of ours on a q grid like fit2d's."""
    q = np.linspace(0.0034, 6.7, 1002)
    intensity = 5000 * np.exp(-q) + 10
    path = tmp_path / "ours.chi"
    write_chi(path, q, intensity, error=np.sqrt(intensity) / 10, title="ours")
    return path


def test_png_compare_log_ours_and_fit2d(reference_dir, ours, tmp_path):
    fit2d = reference_dir / "buf1_00000.fit2d.chi"
    out = tmp_path / "plots" / "cmp.png"
    r = run(["-c", "-l", "-t", "ours vs fit2d", "-o", out, fit2d, ours], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    assert img.std() > 0.01  # something was drawn
    for suffix in (".svg", ".pdf"):
        r = run(["-o", tmp_path / f"p{suffix}", ours], cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "p.pdf").read_bytes()[:5] == b"%PDF-"


def test_headless_without_out_says_use_o(ours, tmp_path):
    r = run([ours], cwd=tmp_path, DISPLAY=None, WAYLAND_DISPLAY=None, MPLBACKEND="Agg")
    assert r.returncode == 2
    assert "-o FILE" in r.stderr and "Traceback" not in r.stderr


def test_bad_inputs(ours, tmp_path):
    bad = tmp_path / "bad.chi"
    bad.write_text("title\nq\nI\n 3\n 1.0 2.0\n 1.0 x\n")
    r = run(["-o", tmp_path / "x.png", ours, bad], cwd=tmp_path)
    assert r.returncode == 1 and "bad.chi" in r.stderr and "Traceback" not in r.stderr
    r = run(["-o", tmp_path / "x.unknownfmt", ours], cwd=tmp_path)
    assert r.returncode == 2 and "unknown format" in r.stderr
    assert not (tmp_path / "x.png").exists()
    r = run(["-x", "cubic", "-o", tmp_path / "x.png", ours], cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_help_lists_options(tmp_path):
    r = run(["--help"], cwd=tmp_path)
    assert r.returncode == 0
    for opt in (
        "-o FILE",
        "-c",
        "-l",
        "-n",
        "-t TITLE",
        "-s N",
        "-k N",
        "-x TYPE",
        "-y TYPE",
        "plotchi -c -o diff.pdf",
    ):
        assert opt in r.stdout, opt


def _args(**kw):
    base = dict(
        compare=False,
        log=False,
        no_legend=False,
        title=None,
        skip=0,
        clip=0,
        xaxisistype="linear",
        yaxisistype=None,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _figure(**kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def test_figure_options(reference_dir, ours):
    from gpusaxs.clients.plotchi import load_curves, make_figure

    fit2d = reference_dir / "buf1_00000.fit2d.chi"
    curves = load_curves([fit2d, ours], skip=10, clip=5)
    assert len(curves[0][1]) == 1002 - 15
    assert curves[0][3] is None and curves[1][3] is not None  # fit2d: 2 columns
    assert curves[0][1][0] == pytest.approx(7.0681080e-02)  # 11th q of the file

    fig = make_figure(
        curves, _args(log=True, title="T", no_legend=True, xaxisistype="log"), _figure
    )
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    assert ax.get_title() == "T" and ax.get_legend() is None
    assert len(ax.collections) == 1  # one error band: only ours has errors
    # fit2d's zero (masked) bins are not drawn on a log axis
    xdata = ax.lines[0].get_xdata()
    assert len(xdata) == np.count_nonzero(curves[0][2] > 0)

    fig = make_figure(curves, _args(compare=True, yaxisistype="symlog"), _figure)
    main, diff, rel = fig.axes
    assert main.get_yscale() == "symlog" and main.get_legend() is not None
    # relative difference (%) of ours against the first curve (fit2d) on fit2d's grid
    q0, i0 = curves[0][1], curves[0][2]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = 100 * (np.interp(q0, curves[1][1], curves[1][2]) - i0) / i0
    ok = np.isfinite(expected) & (i0 != 0)
    np.testing.assert_allclose(rel.lines[0].get_ydata(), expected[ok], rtol=1e-9)
    np.testing.assert_allclose(
        diff.lines[0].get_ydata()[:3], (np.interp(q0, curves[1][1], curves[1][2]) - i0)[:3]
    )


def _write_curves(folder, n, i_label="Intensity"):
    from gpusaxs.io.chi import write_chi

    q = np.linspace(0.05, 5, 300)
    paths = []
    for k in range(n):
        p = folder / f"frame_{k:03d}.chi"
        write_chi(p, q, 1e4 * np.exp(-q * (1 + 0.1 * k)) + 1, np.full(300, 2.0), i_label=i_label)
        paths.append(p)
    return paths


def test_y_label_names_the_unit(reference_dir, ours, tmp_path):
    from gpusaxs.clients.plotchi import load_curves, make_figure

    fig = make_figure(load_curves([reference_dir / "buf1_00000.fit2d.chi", ours]), _args(), _figure)
    assert fig.axes[0].get_ylabel() == "I (counts/pixel)"
    paths = _write_curves(tmp_path, 2, i_label="I (photons/s/pixel)")
    fig = make_figure(load_curves(paths), _args(), _figure)
    assert fig.axes[0].get_ylabel() == "I (photons/s/pixel)"


def test_legend_copes_with_20_curves(tmp_path):
    from gpusaxs.clients.plotchi import load_curves, make_figure

    curves = load_curves(_write_curves(tmp_path, 20))
    fig = make_figure(curves, _args(log=True), _figure)
    ax = fig.axes[0]
    colors = {
        tuple(np.round(line.get_color(), 4))
        if not isinstance(line.get_color(), str)
        else line.get_color()
        for line in ax.lines
    }
    assert len(ax.lines) == 20 and len(colors) == 20  # no colour used twice
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [c[0] for c in curves]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box, axbox = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axbox.x1  # beside the plot, not over it
    figbox = fig.bbox
    assert box.x1 <= figbox.x1 + 1 and box.y0 >= figbox.y0 - 1  # and inside the figure
