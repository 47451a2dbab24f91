"""saxsnetconf: create the Saxsdog network configuration (section 5.1)."""

import argparse
import os
import sys

from gpusaxs.server.netconfig import (
    NetConfigError,
    default_path,
    insecure_mode,
    load_config,
    write_config,
)

EXAMPLES = """\
examples:
  saxsnetconf                                   ask for the two URLs, write ~/.saxsdognetwork
  saxsnetconf --server tcp://gpubox:7777 --feeder tcp://beamline:5556
                                                non-interactive (scripts)
  saxsnetconf --config lab.json --new --server tcp://gpubox:7777 --feeder tcp://beamline:5556
                                                replace an existing file (new secret!)
  saxsnetconf --show --config lab.json          print the URLs (never the secret)

The file holds a random shared secret (256 bits) and is created with mode 0600; copy it to
every computer that runs saxsleash or saxsdogserver in this network.
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="saxsnetconf",
        description="Write the Saxsdog network configuration "
        "(server URL, feeder URL, shared secret).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", metavar="FILE", help="configuration file (default ~/.saxsdognetwork)"
    )
    p.add_argument("--server", metavar="tcp://HOST:PORT", help="URL of the Saxsdog server")
    p.add_argument("--feeder", metavar="tcp://HOST:PORT", help="URL of the Saxsdog feeder")
    p.add_argument(
        "--new",
        action="store_true",
        help="replace an existing configuration (generates a new secret)",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="encrypt and authenticate connections with ZeroMQ CURVE (keys derived "
        "from the secret): peers without the secret are dropped at connect",
    )
    p.add_argument(
        "--show",
        action="store_true",
        help="print the configuration's URLs and exit (the secret is not shown)",
    )
    p.add_argument("--name", help="--show: entry of a list-form configuration")
    return p


def _ask(prompt, default):
    try:
        answer = input(f"{prompt} [{default}]: ").strip()
    except EOFError:
        answer = ""
    return answer or default


def main(argv=None):
    args = build_parser().parse_args(argv)
    path = args.config or str(default_path())
    if args.show:
        try:
            cfg = load_config(path, args.name)
        except NetConfigError as exc:
            print(f"saxsnetconf: {exc}", file=sys.stderr)
            return 1
        print(f"config:  {path}")
        print(f"server:  {cfg.server_url}")
        print(f"feeder:  {cfg.feeder_url}")
        print(f"curve:   {'yes' if cfg.curve else 'no'}")
        if insecure_mode(path):
            print("warning: the file is readable by others; chmod 600 it", file=sys.stderr)
        return 0
    if os.path.exists(os.path.expanduser(path)) and not args.new:
        print(
            f"saxsnetconf: {path} exists; use --new to replace it (the old secret is lost)",
            file=sys.stderr,
        )
        return 1
    server = args.server or _ask("Saxsdog server URL", "tcp://localhost:7777")
    feeder = args.feeder or _ask("Saxsdog feeder URL", "tcp://localhost:5556")
    try:
        write_config(path, server, feeder, overwrite=args.new, curve=args.curve)
    except NetConfigError as exc:
        print(f"saxsnetconf: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"saxsnetconf: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"saxsnetconf: wrote {path} (mode 0600); copy it to the other computers of the network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
