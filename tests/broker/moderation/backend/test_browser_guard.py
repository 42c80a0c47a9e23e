"""The moderation backend refuses what a browser page on another origin could send (issue
22, item 4): a non-loopback ``Host`` (DNS rebinding) on any route -> 403, and an admin route
(``POST /faults``, ``POST /faults/reset``) without ``Content-Type: application/json`` (a
cross-origin form) -> 415; nothing changes. The lab's own client keeps working."""

from __future__ import annotations

import http.client
import json

import pytest

from lab_kit.moderation.backend import ModerationBackend, ModerationClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> ModerationBackend:
    b = ModerationBackend(state_dir=tmp_path_factory.mktemp("guard-backend")).start()
    yield b
    b.stop()


def _request(b: ModerationBackend, method: str, path: str, *, host: str | None = None,
             ctype: str | None = None, body: bytes | None = None) -> tuple[int, dict]:
    """One raw request; ``host`` replaces the Host header http.client would send."""
    h, port = b.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(h, int(port), timeout=5)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        if ctype is not None:
            conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "attacker.test:1234",
                                  "192.168.1.20", "[2001:db8::1]:80", ""])
@pytest.mark.parametrize("method,path", [("GET", "/health"), ("GET", "/faults"),
                                         ("POST", "/faults"), ("POST", "/faults/reset"),
                                         ("POST", "/moderate")])
def test_a_foreign_host_is_refused_on_every_route(guarded, host, method, path):
    body = b'{"latency_ms": 5000}' if path == "/faults" else b"{}"
    status, doc = _request(guarded, method, path, host=host, ctype="application/json",
                           body=body)
    assert status == 403 and doc["field"] == "Host", doc
    assert guarded.faults()["latency_ms"] == 0.0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:1", "127.0.0.2:9",
                                  "[::1]:8080"])
def test_loopback_hosts_are_served(guarded, host):
    status, doc = _request(guarded, "GET", "/faults", host=host)
    assert status == 200 and "latency_ms" in doc


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonx"])
@pytest.mark.parametrize("path", ["/faults", "/faults/reset"])
def test_admin_routes_take_json_only(guarded, ctype, path):
    guarded.set_faults(latency_ms=1)
    status, doc = _request(guarded, "POST", path, ctype=ctype,
                           body=b'{"error_rate": 1}')
    assert status == 415 and doc["field"] == "Content-Type", doc
    faults = guarded.faults()
    assert (faults["error_rate"], faults["latency_ms"]) == (0.0, 1.0)  # nothing changed
    guarded.reset_faults()


def test_json_with_a_charset_is_fine_and_the_client_still_works(guarded):
    status, doc = _request(guarded, "POST", "/faults", ctype="Application/JSON; charset=utf-8",
                           body=b'{"latency_ms": 2}')
    assert status == 200 and doc["latency_ms"] == 2.0
    with ModerationClient(guarded.url, timeout_s=5) as client:
        assert client.reset_faults()["latency_ms"] == 0.0
        assert client.set_faults(jitter_ms=1)["jitter_ms"] == 1.0
        assert client.moderate("p-1", "alice", "hello").label == "approve"
        client.reset_faults()
