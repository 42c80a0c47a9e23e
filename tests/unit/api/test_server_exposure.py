"""``python -m lab_kit.api``: loopback unless asked twice (issue 22, item 4). No server is
started here: uvicorn.run is replaced, or the command line stops before it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import uvicorn

from lab_kit.api import server
from lab_kit.api.server import check_exposure, cli, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1",
                                  "[::1]"])
def test_loopback_names(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org",
                                  "my-laptop", "", "127.0.0.1.example.org"])
def test_anything_else_is_not_loopback(host):
    assert not is_loopback(host)


def test_loopback_needs_no_flag():
    assert check_exposure("127.0.0.1", 8000, allow_remote=False) is None
    assert check_exposure("localhost", 8000, allow_remote=True) is None


def test_non_loopback_without_the_flag_is_refused_in_one_line():
    with pytest.raises(ValueError) as err:
        check_exposure("0.0.0.0", 8000, allow_remote=False)
    msg = str(err.value)
    assert "--allow-remote" in msg and "0.0.0.0" in msg and "\n" not in msg


def test_non_loopback_with_the_flag_says_what_is_exposed():
    warning = check_exposure("0.0.0.0", 8123, allow_remote=True)
    assert warning is not None and "http://0.0.0.0:8123" in warning
    for route in ("POST /posts", "GET /posts/{id}", "/healthz", "/metrics"):
        assert route in warning
    assert "no authentication" in warning


def test_cli_refuses_before_serving(monkeypatch, capsys):
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(k))
    assert cli(["--host", "0.0.0.0", "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert served == []
    assert err.count("\n") == 1 and err.startswith("error: --host 0.0.0.0")
    assert "--allow-remote" in err


def test_cli_serves_remote_when_asked_twice_and_prints_the_exposure(monkeypatch, capsys):
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(k))
    monkeypatch.setattr(server.os, "environ", {})  # main() exports its settings there
    assert cli(["--host", "0.0.0.0", "--port", "8124", "--allow-remote"]) == 0
    assert [k["host"] for k in served] == ["0.0.0.0"]
    err = capsys.readouterr().err
    assert "WARNING: --allow-remote" in err and "POST /posts" in err


def test_default_host_is_loopback_and_needs_no_flag(monkeypatch, capsys):
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: served.append(k))
    monkeypatch.setattr(server.os, "environ", {})
    assert cli(["--port", "8125"]) == 0
    assert served[0]["host"] == "127.0.0.1"
    assert "WARNING" not in capsys.readouterr().err


@pytest.mark.parametrize("module", [["lab_kit.api"], ["lab_kit", "api"]])
def test_the_command_exits_2_with_one_line(module):
    out = subprocess.run([sys.executable, "-m", *module, "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow-remote" in lines[0], out.stderr
