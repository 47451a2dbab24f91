"""Which saxsdogserver a client talks to: the -S/--server, --config and --name options and the
network configuration they name (shared by saxsleash and saxsleash dashboard)."""

import sys

from gpusaxs.server.netconfig import NetConfigError, load_config, permission_warning


def add_connection_arguments(p):
    """-S/--server, --config and --name: which server and which network configuration."""
    p.add_argument(
        "-S",
        "--server",
        metavar="tcp://HOSTNAME:PORT",
        help='URL of the "Saxsdog Server" (default: ServerUrl of the config)',
    )
    p.add_argument(
        "--config", metavar="FILE", help="network configuration (default ~/.saxsdognetwork)"
    )
    p.add_argument("--name", help="server entry of a list-form configuration")


def client_config(args, prog):
    """The network configuration named by ``args.config``/``args.name``, with a warning when it
    is readable by others; None (after printing why) when it cannot be loaded."""
    try:
        cfg = load_config(args.config, args.name)
    except NetConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return None
    warning = permission_warning(cfg.path)
    if warning:
        print(f"{prog}: warning: {warning}", file=sys.stderr)
    return cfg
