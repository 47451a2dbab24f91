"""saxsnetconf and the configuration file (section 5.1)."""

import json
import os
import stat
import subprocess
import sys

import pytest
from net_support import REPO, env

from gpusaxs.clients.saxsnetconf import main as netconf_main
from gpusaxs.server.netconfig import NetConfigError, load_config, parse_config


def test_write_mode_0600_secret_and_refuse_overwrite(tmp_path, capsys):
    path = tmp_path / "net.json"
    rc = netconf_main(
        ["--config", str(path), "--server", "tcp://a:7777", "--feeder", "tcp://b:5556"]
    )
    assert rc == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    d = json.loads(path.read_text())
    assert d["ServerUrl"] == "tcp://a:7777" and d["FeederUrl"] == "tcp://b:5556"
    assert len(d["Secret"]) == 64 and int(d["Secret"], 16) >= 0  # 256 bits
    out = capsys.readouterr()
    assert d["Secret"] not in out.out + out.err
    # refuses to overwrite without --new
    assert (
        netconf_main(["--config", str(path), "--server", "tcp://c:1", "--feeder", "tcp://d:2"]) == 1
    )
    assert json.loads(path.read_text()) == d
    assert (
        netconf_main(
            ["--config", str(path), "--new", "--server", "tcp://c:1", "--feeder", "tcp://d:2"]
        )
        == 0
    )
    d2 = json.loads(path.read_text())
    assert d2["Secret"] != d["Secret"] and d2["ServerUrl"] == "tcp://c:1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    cfg = load_config(path)
    assert cfg.server_url == "tcp://c:1" and d2["Secret"] not in repr(cfg)


def test_interactive_prompts(tmp_path):
    path = tmp_path / "sub" / "net.json"
    r = subprocess.run(
        [sys.executable, "-m", "gpusaxs.clients.saxsnetconf", "--config", str(path)],
        input="tcp://srv:7000\n\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    cfg = load_config(path)
    assert cfg.server_url == "tcp://srv:7000"
    assert cfg.feeder_url == "tcp://localhost:5556"  # default accepted with Enter


def test_list_form_and_errors(tmp_path):
    sa, sb = "0123456789abcdef" * 2, "fedcba9876543210" * 2
    entries = [
        {"Name": "a", "Server": "tcp://a:1", "Feeder": "tcp://a:2", "Secret": sa},
        {"Name": "b", "Server": "tcp://b:1", "Feeder": "tcp://b:2", "Secret": sb},
    ]
    assert parse_config(entries).server_url == "tcp://a:1"
    assert parse_config(entries, name="b").secret == sb
    with pytest.raises(NetConfigError, match="entropy"):  # 32 characters, 0 bits
        parse_config([dict(entries[0], Secret="x" * 32)])
    with pytest.raises(NetConfigError):
        parse_config(entries, name="c")
    with pytest.raises(NetConfigError):
        parse_config({"ServerUrl": "tcp://a:1", "FeederUrl": "tcp://a:2"})
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(NetConfigError):
        load_config(p)
    with pytest.raises(NetConfigError, match="saxsnetconf"):
        load_config(tmp_path / "missing.json")


def test_help_has_examples():
    for mod in (
        "gpusaxs.clients.saxsnetconf",
        "gpusaxs.clients.saxsleash",
        "gpusaxs.server.saxsdogserver",
        "gpusaxs.server.feeder",
    ):
        r = subprocess.run(
            [sys.executable, "-m", mod, "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env(),
            timeout=60,
        )
        assert r.returncode == 0 and "examples:" in r.stdout, mod
