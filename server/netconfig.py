"""The Saxsdog network configuration file (section 5.1).

Default location ``~/.saxsdognetwork`` (every network tool takes ``--config FILE``).  The current
form is::

    {"ServerUrl": "tcp://hostname:port", "FeederUrl": "tcp://hostname:port", "Secret": "..."}

Older installations used a list of servers, of which one is picked by name (or the first)::

    [{"Name": "lab", "Server": "tcp://...", "Feeder": "tcp://...", "Secret": "..."}, ...]

An optional ``"Curve": true`` makes server and clients use ZeroMQ CURVE with keys derived from
the secret (see server/wire.py).  A secret must have at least 16 characters and an estimated
:data:`MIN_SECRET_BITS` bits of entropy; the file must not be readable by group or others.
"""

import json
import math
import os
import secrets
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gpusaxs.errors import GpusaxsError
from gpusaxs.io.atomic import atomic_write

DEFAULT_PATH = "~/.saxsdognetwork"
DEFAULT_SERVER_PORT = 7777
DEFAULT_FEEDER_PORT = 5556
#: least estimated entropy of a secret: length x Shannon entropy of its character frequencies
MIN_SECRET_BITS = 48


class NetConfigError(GpusaxsError, ValueError):
    """The network configuration file is missing or invalid (message never contains the secret)."""


@dataclass
class NetConfig:
    server_url: str
    feeder_url: str
    secret: str = field(repr=False)
    name: str = ""
    path: str = ""
    curve: bool = False

    def __repr__(self):  # never show the secret
        return (
            f"NetConfig(server_url={self.server_url!r}, feeder_url={self.feeder_url!r}, "
            f"name={self.name!r}, secret=<hidden>)"
        )

    def to_dict(self):
        d = {"ServerUrl": self.server_url, "FeederUrl": self.feeder_url, "Secret": self.secret}
        if self.curve:
            d["Curve"] = True
        return d


def default_path():
    return Path(os.path.expanduser(DEFAULT_PATH))


def new_secret():
    """A fresh shared secret: 256 random bits as 64 hex characters."""
    return secrets.token_hex(32)


def url_port(url, default=None):
    """The port number of ``tcp://host:port`` (``default`` when absent)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return default if port is None else port


def secret_bits(secret):
    """Estimated entropy (bits) of ``secret``: length x Shannon entropy of its characters.

    'aaaaaaaaaaaaaaaa' gives 0, 'abababababababab' 16, a token_hex(32) secret about 250.
    """
    n = len(secret)
    if n == 0:
        return 0.0
    h = sum(c / n * math.log2(n / c) for c in Counter(secret).values())
    return n * h


def check_secret(sec, where="Secret"):
    """Raise NetConfigError for a secret that is not a string, too short or too predictable."""
    if not isinstance(sec, str) or len(sec) < 16:
        raise NetConfigError(f"{where} must be a string of at least 16 characters")
    if secret_bits(sec) < MIN_SECRET_BITS:
        raise NetConfigError(
            f"{where} has too little entropy (about {secret_bits(sec):.0f} bits, "
            f"at least {MIN_SECRET_BITS}); make a new one with saxsnetconf --new"
        )
    return sec


def permission_warning(path):
    """A warning text when the file at ``path`` is accessible by group or others, else None."""
    if path and insecure_mode(path):
        return (
            f"{path} is accessible by group or others (mode "
            f"{stat.S_IMODE(os.stat(path).st_mode):03o}); anyone who reads it can command the "
            f"server: chmod 600 {path}"
        )
    return None


def check_url(url, what="URL"):
    if not isinstance(url, str) or "://" not in url:
        raise NetConfigError(f"{what} must look like tcp://hostname:port, got {url!r}")
    return url


def _from_entry(d, path, keys):
    server_k, feeder_k, secret_k = keys
    missing = [k for k in keys if k not in d]
    if missing:
        raise NetConfigError(f"{path}: missing field(s) {', '.join(missing)}")
    sec = check_secret(d[secret_k], f"{path}: field {secret_k}")
    curve = d.get("Curve", False)
    if not isinstance(curve, bool):
        raise NetConfigError(f"{path}: field Curve must be true or false")
    return NetConfig(
        server_url=check_url(d[server_k], f"{path}: {server_k}"),
        feeder_url=check_url(d[feeder_k], f"{path}: {feeder_k}"),
        secret=sec,
        name=str(d.get("Name", "")),
        path=str(path),
        curve=curve,
    )


def parse_config(obj, path="<config>", name=None):
    """Build a NetConfig from the parsed JSON of a configuration file (either form)."""
    if isinstance(obj, dict):
        if "ServerUrl" in obj or "FeederUrl" in obj:
            return _from_entry(obj, path, ("ServerUrl", "FeederUrl", "Secret"))
        if "Server" in obj:
            return _from_entry(obj, path, ("Server", "Feeder", "Secret"))
        raise NetConfigError(f"{path}: expected fields ServerUrl, FeederUrl, Secret")
    if isinstance(obj, list):
        entries = [e for e in obj if isinstance(e, dict)]
        if not entries:
            raise NetConfigError(f"{path}: the list of servers is empty")
        if name is not None:
            entries = [e for e in entries if e.get("Name") == name]
            if not entries:
                raise NetConfigError(f"{path}: no server named {name!r}")
        e = entries[0]
        if "ServerUrl" in e:
            return _from_entry(e, path, ("ServerUrl", "FeederUrl", "Secret"))
        return _from_entry(e, path, ("Server", "Feeder", "Secret"))
    raise NetConfigError(f"{path}: expected a JSON object or a list of servers")


def load_config(path=None, name=None):
    """Read the configuration file (default ~/.saxsdognetwork)."""
    p = Path(os.path.expanduser(str(path))) if path else default_path()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NetConfigError(
            f"{p}: network configuration not found (create it with saxsnetconf)"
        ) from None
    except OSError as exc:
        raise NetConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise NetConfigError(f"{p}: not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    return parse_config(obj, p, name)


def insecure_mode(path):
    """True when the file is readable or writable by group/others."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def write_config(path, server_url, feeder_url, secret=None, overwrite=False, curve=False):
    """Write a new configuration with mode 0600; refuse to replace an existing one unless asked.

    Returns the NetConfig written.
    """
    p = Path(os.path.expanduser(str(path))) if path else default_path()
    check_url(server_url, "server URL")
    check_url(feeder_url, "feeder URL")
    cfg = NetConfig(
        server_url, feeder_url, check_secret(secret or new_secret()), path=str(p), curve=bool(curve)
    )
    data = (json.dumps(cfg.to_dict(), indent=2) + "\n").encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and os.path.lexists(p):
        raise NetConfigError(f"{p}: exists; use --new to replace it (the old secret is lost)")
    # A temporary 0600 file in the same folder, then rename: never readable by others, never
    # half-written.
    with atomic_write(p, "wb", fsync=True, permissions=0o600) as fh:
        fh.write(data)
    return cfg
