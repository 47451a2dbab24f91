"""plotchi: plot .chi curves (specification section 2.3).

Reads the project's .chi files (2 or 3 columns) and fit2d's; draws error bands from the third
column; compares curves to the first one (-c); writes the plot to a file (-o, format from the
suffix) or opens a window.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from gpusaxs.errors import GpusaxsError
from gpusaxs.io.atomic import atomic_write
from gpusaxs.io.chi import read_chi

PROG = "plotchi"
SCALES = ("linear", "log", "symlog")

EPILOG = """\
options in detail:
  -o FILE      write the plot to FILE instead of opening a window; the format comes from the
               suffix (.png, .svg, .pdf, .eps, ...).
                 plotchi -o curves.png out/*.chi
  -c           compare to the first curve: a second panel shows the difference I - I_first
               and a third the relative difference 100 (I - I_first) / I_first in %.  Curves on
               another q grid are interpolated onto the first one's.
                 plotchi -c -o diff.pdf ours.chi fit2d.chi
  -l           logarithmic intensity axis (the same as -y log).
  -n           no legend.
  -t TITLE     plot title.
  -s N         skip the first N points of every curve (e.g. the beam stop).
  -k N         clip (drop) the last N points of every curve.
  -x TYPE      q axis scale: linear, log or symlog.
  -y TYPE      intensity axis scale: linear, log or symlog.
                 plotchi -x log -y log -s 10 -o loglog.png a.chi b.chi

Files with three columns (q, I, error) get a shaded band I +- error.  Non-finite values and
(on log axes) non-positive ones are left out.  Without -o a window is opened; on a machine
without a display plotchi says so and exits with status 2: use -o FILE there.

exit status: 0 plotted, 1 a file could not be read, 2 usage error or no display.
"""


def build_parser():
    """The argument parser (options of section 2.3)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] CHIFILE [CHIFILE ...]",
        description="Plot one or more .chi curves (ours or fit2d's).",
        epilog=EPILOG,
    )
    p.add_argument("files", nargs="+", metavar="CHIFILE", help=".chi files to plot")
    p.add_argument(
        "-o", "--out", metavar="FILE", help="write the plot to FILE (format from the suffix)"
    )
    p.add_argument(
        "-c", "--compare", action="store_true", help="compare the curves to the first one"
    )
    p.add_argument("-l", "--log", action="store_true", help="use log scale for intensity")
    p.add_argument("-n", "--no-legend", action="store_true", help="hide the legend")
    p.add_argument("-t", "--title", metavar="TITLE", help="plot title")
    p.add_argument("-s", "--skip", metavar="N", type=int, default=0, help="skip the first N points")
    p.add_argument("-k", "--clip", metavar="N", type=int, default=0, help="clip the last N points")
    p.add_argument(
        "-x",
        "--xaxisistype",
        metavar="TYPE",
        choices=SCALES,
        default="linear",
        help="X axis scale: linear|log|symlog",
    )
    p.add_argument(
        "-y",
        "--yaxisistype",
        metavar="TYPE",
        choices=SCALES,
        default=None,
        help="Y axis scale: linear|log|symlog",
    )
    return p


def _err(msg):
    sys.stderr.write(f"{PROG}: {msg}\n")


def _no_display_reason():
    """Why no window can be opened, or None if one probably can."""
    import matplotlib

    backend = matplotlib.get_backend().lower()  # resolves to "agg" on a headless machine
    if backend in ("agg", "pdf", "svg", "ps", "cairo", "template", "pgf"):
        return f"the matplotlib backend is {backend!r}, which cannot open a window"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "there is no display (DISPLAY is not set)"
    return None


def load_curves(paths, skip=0, clip=0):
    """[(label, q, I, err or None, q_label)] with ``skip`` first and ``clip`` last points cut."""
    curves = []
    for path in paths:
        c = read_chi(path)
        stop = len(c.q) - clip if clip > 0 else len(c.q)
        sl = slice(max(skip, 0), max(stop, 0))
        q = np.asarray(c.q, dtype=float)[sl]
        i = np.asarray(c.intensity, dtype=float)[sl]
        e = None if c.error is None else np.asarray(c.error, dtype=float)[sl]
        curves.append((Path(path).name, q, i, e, c.q_label))
        _I_LABELS[Path(path).name] = c.i_label
    return curves


_I_LABELS: dict[str, str] = {}  # curve label -> the file's intensity label (line 3 of the .chi)
#: Curves up to this many use matplotlib's 10-colour cycle and a legend inside the axes; more
#: get distinct colours from a colour map and a legend in columns beside the plot.
MANY_CURVES = 10


def y_label(curves):
    """The intensity axis label with its unit: the files' own label when it names a unit,
    else "I (counts/pixel)" (ours and fit2d's curves are mean counts per pixel)."""
    labels = {(_I_LABELS.get(c[0]) or "").strip() for c in curves}
    if len(labels) == 1:
        (label,) = labels
        if "(" in label and ")" in label:
            return label
    return "I (counts/pixel)"


def _colors(n):
    if n <= MANY_CURVES:
        return [None] * n
    from matplotlib import colormaps

    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * k / (n - 1)) for k in range(n)]


def _legend(ax, n):
    """Inside the axes for a few curves; beside them, in columns of at most 25, for many."""
    if n <= MANY_CURVES:
        ax.legend(fontsize="small")
        return
    ncol = -(-n // 25)
    ax.legend(
        fontsize="x-small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=ncol,
        borderaxespad=0.0,
        frameon=False,
        handlelength=1.5,
    )


def _on_first_grid(q0, q, values):
    """``values`` on the q grid ``q0`` (interpolated when the grids differ; NaN outside)."""
    if len(q) == len(q0) and np.allclose(q, q0, rtol=1e-6, atol=0):
        return values
    order = np.argsort(q)
    return np.interp(q0, q[order], values[order], left=np.nan, right=np.nan)


def _visible(values, scale):
    """Mask of points drawable on an axis of ``scale``."""
    ok = np.isfinite(values)
    if scale == "log":
        ok &= values > 0
    return ok


def make_figure(curves, args, figure_factory):
    """Draw the curves; return the figure."""
    yscale = args.yaxisistype or ("log" if args.log else "linear")
    xscale = args.xaxisistype
    nrows = 3 if args.compare and len(curves) > 1 else 1
    many = len(curves) > MANY_CURVES and not args.no_legend
    width = 8 + (1.6 * -(-len(curves) // 25) if many else 0)  # room for the legend columns
    fig = figure_factory(figsize=(width, 5 if nrows == 1 else 9))
    if many:
        fig.subplots_adjust(right=0.9 * 8 / width)  # the plot keeps its size
    if nrows == 1:
        axes = [fig.add_subplot(1, 1, 1)]
    else:
        gs = fig.add_gridspec(3, 1, height_ratios=[3, 1.3, 1.3], hspace=0.08)
        axes = [fig.add_subplot(gs[0])]
        axes += [fig.add_subplot(gs[k], sharex=axes[0]) for k in (1, 2)]
    ax = axes[0]
    q0, i0 = curves[0][1], curves[0][2]
    for (label, q, i, e, _), color in zip(curves, _colors(len(curves)), strict=True):
        ok = _visible(i, yscale) & _visible(q, xscale)
        (line,) = ax.plot(q[ok], i[ok], lw=1, label=label, color=color)
        if e is not None:
            lo, hi = i - e, i + e
            band = ok & np.isfinite(e)
            if yscale == "log":
                lo = np.where(lo > 0, lo, i * 1e-3)
            ax.fill_between(q[band], lo[band], hi[band], color=line.get_color(), alpha=0.25, lw=0)
    ax.set_yscale(yscale)
    ax.set_xscale(xscale)
    ax.set_ylabel(y_label(curves))
    if args.title:
        ax.set_title(args.title)
    if not args.no_legend:
        _legend(ax, len(curves))
    if nrows == 3:
        base = curves[0][0]
        for label, q, i, _e, _ in curves[1:]:
            on0 = _on_first_grid(q0, q, i)
            diff = on0 - i0
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(i0 != 0, 100.0 * diff / i0, np.nan)
            ok = np.isfinite(diff) & _visible(q0, xscale)
            axes[1].plot(q0[ok], diff[ok], lw=1, label=f"{label} - {base}")
            okr = np.isfinite(rel) & _visible(q0, xscale)
            axes[2].plot(q0[okr], rel[okr], lw=1, label=label)
        axes[1].axhline(0, color="0.5", lw=0.5)
        axes[2].axhline(0, color="0.5", lw=0.5)
        axes[1].set_ylabel(f"I - I[{base}]")
        axes[2].set_ylabel("relative diff. (%)")
        for a in axes[:2]:
            a.tick_params(labelbottom=False)
        axes[1].set_xscale(xscale)
        axes[2].set_xscale(xscale)
    qlabel = curves[0][4] or "q"
    axes[-1].set_xlabel(qlabel)
    return fig


def main(argv=None):
    """Run plotchi; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.skip < 0 or args.clip < 0:
        _err("error: -s and -k take N >= 0")
        return 2
    try:
        curves = load_curves(args.files, args.skip, args.clip)
    except GpusaxsError as exc:
        _err(f"error: {exc}")
        return 1
    empty = [c[0] for c in curves if len(c[1]) == 0]
    if empty:
        _err(f"error: no points left to plot in {', '.join(empty)} (check -s/-k)")
        return 1

    if args.out:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        def factory(**kw):
            fig = Figure(**kw)
            FigureCanvasAgg(fig)
            return fig

        fig = make_figure(curves, args, factory)
        out = Path(args.out)
        fmt = out.suffix.lstrip(".").lower()
        supported = fig.canvas.get_supported_filetypes()
        if fmt not in supported:
            _err(
                f"error: cannot write {out}: unknown format {out.suffix!r} "
                f"(use one of {', '.join('.' + k for k in sorted(supported))})"
            )
            return 2
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(out, "wb") as fh:
                fig.savefig(fh, format=fmt, bbox_inches="tight")
        except OSError as exc:
            _err(f"error: cannot write {out}: {exc.strerror or exc}")
            return 1
        return 0

    reason = _no_display_reason()
    if reason is not None:
        _err(
            f"cannot open a plot window: {reason}.\n"
            f"Save the plot to a file instead with -o FILE, e.g.: "
            f"{PROG} -o plot.png {' '.join(args.files)}"
        )
        return 2
    import matplotlib.pyplot as plt

    make_figure(curves, args, plt.figure)
    plt.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
