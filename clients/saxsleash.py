"""saxsleash: command-line remote control of a saxsdogserver (section 5.3).

Prints the server's JSON answer on stdout.  Exit status: 0 answer OK, 1 error answer
("Error" / "AuthenticationError"), 2 usage or local error, 3 no answer (timeout).
"""

import argparse
import json
import os
import sys

import numpy as np

from gpusaxs.calibration_file import read_calibration_file
from gpusaxs.clients.connection import add_connection_arguments, client_config
from gpusaxs.clients.dashboard.cli import main as dashboard_main
from gpusaxs.server import protocol as P

EXAMPLES = """\
examples:
  saxsleash new cal.json data/AAA_integ.msk data/    start a queue (folder relative to the
                                                     server's base folder)
  saxsleash new cal.json data/                       the same with the calibration's MaskFile
  saxsleash readdir                                  queue every image already in the folder
  saxsleash stat                                     statistics
  saxsleash plot -x log -y log -s 10                 live plot of the latest curve (Ctrl-C ends)
  saxsleash plot --once -o latest.png                save one plot (no window needed; log y
                                                     axis unless -y linear)
  saxsleash close                                    finish what is queued, ignore new files
  saxsleash abort                                    finish frames in flight, drop the rest
  saxsleash get data/img_00001.tif                   the curve of one image (or a .chi file)
  saxsleash listdir data                             list a folder of the server's base folder
  saxsleash -S tcp://gpubox:7777 --config lab.json stat
  saxsleash dashboard --port 8050                    live page in the browser (see
                                                     saxsleash dashboard --help)
  saxsleash --config lab.json dashboard              options may come before any command

commands: new CAL [MASK] DIR | close | abort | plot | readdir | stat | get PATH | listdir [DIR]
          | dashboard [options]
exit status: 0 ok, 1 error answer, 2 usage/local error, 3 no answer from the server (nothing
listening: at once; no connection: after --connect-timeout; no answer: after --timeout)
"""

#: seconds saxsleash waits for the TCP connection to the server (--connect-timeout)
CONNECT_TIMEOUT_S = 3.0

#: options of saxsleash and saxsleash dashboard that take a value (to find the command word)
VALUE_OPTIONS = {
    "-S",
    "--server",
    "--config",
    "--name",
    "--timeout",
    "--retries",
    "--connect-timeout",
    "-s",
    "--skip",
    "-k",
    "--clip",
    "-x",
    "--xaxisistype",
    "-y",
    "--yaxisistype",
    "-o",
    "--output",
    "--interval",
}

NARGS = {
    "new": (2, 3),
    "close": (0, 0),
    "abort": (0, 0),
    "plot": (0, 0),
    "readdir": (0, 0),
    "stat": (0, 0),
    "get": (1, 1),
    "listdir": (0, 1),
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsleash",
        usage="saxsleash [options] close|abort|new|plot|readdir|stat|get|listdir|dashboard "
        "[options] [arguments]",
        description="Send a command to a Saxsdog server and print its JSON answer.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "command",
        choices=sorted(NARGS),
        metavar="COMMAND",
        help="close|abort|new|plot|readdir|stat|get|listdir, or dashboard (live web page, "
        "its own options: saxsleash dashboard --help)",
    )
    p.add_argument(
        "arguments",
        nargs="*",
        help="new: CAL [MASK] DIR (MASK defaults to the calibration's MaskFile); get: PATH; "
        "listdir: [DIR]",
    )
    add_connection_arguments(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for an answer (default 10)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="tries after a timeout, each with a fresh socket (default 1)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help="seconds to wait for the connection to the server before giving up (default "
        f"{CONNECT_TIMEOUT_S:g}; a refused connection gives up at once)",
    )
    p.add_argument(
        "--maskbin",
        action="store_true",
        help="new: send the mask base64 in the request (old servers) instead of as an attachment",
    )
    g = p.add_argument_group("plot options")
    g.add_argument(
        "-s", "--skip", type=int, default=0, metavar="N", help="plot: skip first N points"
    )
    g.add_argument(
        "-k", "--clip", type=int, default=0, metavar="N", help="plot: clip last N points"
    )
    g.add_argument(
        "-x",
        "--xaxisistype",
        default="linear",
        metavar="TYPE",
        choices=["linear", "log", "symlog"],
        help="plot: X axis scale [linear|log|symlog]",
    )
    g.add_argument(
        "-y",
        "--yaxisistype",
        default="log",
        metavar="TYPE",
        choices=["linear", "log", "symlog"],
        help="plot: Y axis scale [linear|log|symlog] (default log)",
    )
    g.add_argument("--once", action="store_true", help="plot: fetch one curve and stop")
    g.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="plot: save the plot to FILE (png, svg, pdf) instead of a window; "
        "prints only where it was saved (--json: the answer too)",
    )
    g.add_argument(
        "--json", action="store_true", help="plot --once/-o: print the answer JSON as well"
    )
    g.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="plot: seconds between updates of the live window (default 1)",
    )
    return p


def _print(answer, stream=sys.stdout):
    stream.write(json.dumps(answer) + "\n")
    stream.flush()


def _is_error(answer):
    return not isinstance(answer, dict) or answer.get("result") in ("Error", "AuthenticationError")


def _curve(answer, skip, clip):
    arr = answer["data"].get("array") or []
    rows = [np.array([np.nan if v is None else v for v in r], dtype=float) for r in arr]
    if len(rows) < 2:
        return None
    n = len(rows[0])
    sl = slice(max(0, skip), n - max(0, clip))
    return [r[sl] for r in rows]


def _draw(ax, answer, args):
    rows = _curve(answer, args.skip, args.clip)
    ax.clear()
    if rows is None:
        return
    q, intensity = rows[0], rows[1]
    if len(rows) > 2:
        ax.errorbar(q, intensity, yerr=rows[2], fmt="-", lw=1, elinewidth=0.5)
    else:
        ax.plot(q, intensity, "-", lw=1)
    ax.set_xscale(args.xaxisistype)
    ax.set_yscale(args.yaxisistype)
    ax.set_xlabel("q (nm$^{-1}$)")
    ax.set_ylabel("Intensity")
    st = answer["data"].get("stat", {})
    ax.set_title(
        f"{answer['data'].get('filename', '')}   "
        f"{st.get('frames per sec', 0):.1f} frames/s, {st.get('pics', 0)} curves",
        fontsize=9,
    )


def _headless():
    return sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def _plot(client, args):
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
    elif _headless():
        print(
            "saxsleash: no display for a live plot window; use --once -o FILE.png to save a "
            "plot instead",
            file=sys.stderr,
        )
        return 2
    import matplotlib.pyplot as plt

    if args.once or args.output:
        answer = client.request("plot")
        if args.json or not args.output or _is_error(answer):
            _print(answer)
        if _is_error(answer):
            print(
                f"saxsleash: {answer.get('result')}: {answer.get('data', {}).get('Error')}",
                file=sys.stderr,
            )
            return 1
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw(ax, answer, args)
        fig.tight_layout()
        if args.output:
            fig.savefig(args.output, dpi=100)
            print(f"saxsleash: plot saved to {args.output}", file=sys.stderr)
        else:
            plt.show()
        plt.close(fig)
        return 0
    plt.ion()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    last = None
    try:
        while plt.fignum_exists(fig.number):
            answer = client.request("plot")
            if _is_error(answer):
                ax.set_title(answer.get("data", {}).get("Error", "error"), fontsize=9)
            elif answer["data"].get("filename") != last or True:
                last = answer["data"].get("filename")
                _draw(ax, answer, args)
            fig.canvas.draw_idle()
            plt.pause(max(0.05, args.interval))
    except KeyboardInterrupt:
        pass
    return 0


def run(args):
    lo, hi = NARGS[args.command]
    if not lo <= len(args.arguments) <= hi:
        need = {"new": "CAL [MASK] DIR", "get": "PATH", "listdir": "[DIR]"}.get(
            args.command, "none"
        )
        print(f"saxsleash {args.command}: expected arguments: {need}", file=sys.stderr)
        return 2
    cfg = client_config(args, "saxsleash")
    if cfg is None:
        return 2
    url = args.server or cfg.server_url
    argument, attachments = None, []
    if args.command == "new":
        cal_file, directory = args.arguments[0], args.arguments[-1]
        mask_file = args.arguments[1] if len(args.arguments) == 3 else None
        try:  # a JSON calibration or a pyFAI .poni (geometry expanded here, client side)
            calibration = read_calibration_file(cal_file)
            if mask_file is None:
                mask_file = calibration_mask_file(calibration, cal_file)
            with open(mask_file, "rb") as fh:
                mask = fh.read()
        except (OSError, ValueError) as exc:
            print(f"saxsleash: {exc}", file=sys.stderr)
            return 2
        except LookupError as exc:
            print(f"saxsleash new: {exc}", file=sys.stderr)
            return 2
        if not isinstance(calibration, dict):
            print(f"saxsleash: {cal_file}: not a calibration (JSON object)", file=sys.stderr)
            return 2
        if len(mask) > P.MAX_ATTACHMENT_BYTES:
            print(
                f"saxsleash: {mask_file}: {len(mask)} bytes, more than a server takes "
                f"({P.MAX_ATTACHMENT_BYTES}); save the mask as a fit2d .msk (1 bit per pixel) "
                f"or a compressed TIFF",
                file=sys.stderr,
            )
            return 2
        req, attachments = P.new_request(
            calibration, directory, mask, os.path.basename(mask_file), use_maskbin=args.maskbin
        )
        argument = req["argument"]
    elif args.command == "get":
        argument = {"path": args.arguments[0]}
    elif args.command == "listdir":
        argument = {"directory": args.arguments[0] if args.arguments else "."}
    elif args.command == "stat":
        argument = {}
    with P.Client(
        url,
        cfg.secret,
        timeout=args.timeout,
        retries=args.retries,
        curve=cfg.curve,
        connect_timeout=args.connect_timeout,
    ) as client:
        try:
            if args.command == "plot":
                return _plot(client, args)
            answer = client.request(args.command, argument, attachments)
        except P.NoAnswer as exc:
            print(f"saxsleash: {exc}", file=sys.stderr)
            return 3
    _print(answer)
    if _is_error(answer):
        err = answer.get("data", {}).get("Error") if isinstance(answer, dict) else answer
        print(
            f"saxsleash: {answer.get('result') if isinstance(answer, dict) else 'error'}: {err}",
            file=sys.stderr,
        )
        return 1
    return 0


def calibration_mask_file(calibration, cal_file):
    """The MaskFile a calibration names (relative to the calibration file's folder); raises
    LookupError when it names none."""
    mask = calibration.get("MaskFile") if isinstance(calibration, dict) else None
    if not mask and isinstance(calibration, dict):
        masks = calibration.get("Masks")
        if isinstance(masks, list) and masks and isinstance(masks[0], dict):
            mask = masks[0].get("MaskFile")
    if not isinstance(mask, str) or not mask:
        raise LookupError(f"{cal_file} names no MaskFile: give the mask, new CAL MASK DIR")
    return os.path.join(os.path.dirname(os.path.abspath(cal_file)), os.path.expanduser(mask))


def command_index(argv):
    """Index of the command word in ``argv`` (options may come before it), or None."""
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return i + 1 if i + 1 < len(argv) else None
        if tok.startswith("-") and tok != "-":
            i += 2 if tok in VALUE_OPTIONS else 1
            continue
        return i
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    i = command_index(argv)
    if i is not None and argv[i] == "dashboard":  # its own options: clients/dashboard/cli.py
        return dashboard_main(argv[:i] + argv[i + 1 :])
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # e.g. NoAnswer during plot
        if isinstance(exc, P.NoAnswer):
            print(f"saxsleash: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
