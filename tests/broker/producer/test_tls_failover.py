"""Failover over TLS, against a real broker with an SSL listener (issue 22, item 5).

The secured-probe trap: the old probe for TLS/SASL was "a client exists and
``client.bootstrap_connected()``". With no broker at start there is no client, so the probe
was false and the state stayed SPOOLING for good; and kafka-python 3's
``bootstrap_connected()`` is true only *while* it bootstraps, so even a healthy TLS client
was reported down. Here the broker is away when the producer starts, then comes back: the
spooled posts must be delivered, and the producer must stay in SENDING afterwards.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lab_kit.broker import local
from lab_kit.posts import Workload
from lab_kit.producer import AsyncPostProducer, State
from lab_kit.producer.failover import api_versions_probe, tls_context
from lab_kit.topics import ensure_topics
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """(a PEM keystore for the broker: key + certificate, the certificate for the client)."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    keystore = folder / "keystore.pem"
    keystore.write_text(key.read_text() + cert.read_text())
    return keystore, cert


def _add_ssl_listener(props: Path, port: int, keystore: Path) -> None:
    lines = dict(line.split("=", 1) for line in props.read_text().splitlines() if "=" in line)
    lines["listeners"] += f",SSL://127.0.0.1:{port}"
    lines["advertised.listeners"] += f",SSL://127.0.0.1:{port}"
    lines["listener.security.protocol.map"] += ",SSL:SSL"
    lines["ssl.keystore.type"] = "PEM"
    lines["ssl.keystore.location"] = str(keystore)
    props.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """A private single-node broker with a PLAINTEXT and an SSL listener (this test stops it)."""
    state = tmp_path_factory.mktemp("tls-broker")
    if subprocess.run(["openssl", "version"], capture_output=True).returncode != 0:
        pytest.skip("openssl is needed to make the broker's certificate")
    keystore, cert = _self_signed(state)
    b = local.LocalBroker(state)
    b.setup(nodes=1)
    ssl_port = _free_port()
    _add_ssl_listener(Path(b.state["nodes"][0]["props"]), ssl_port, keystore)
    b.start()
    yield b, f"127.0.0.1:{ssl_port}", cert
    b.down(purge=True)


def test_the_tls_probe_gets_an_answer_and_plaintext_does_not(tls_broker):
    b, ssl_bootstrap, cert = tls_broker
    port = int(ssl_bootstrap.rpartition(":")[2])
    ctx = tls_context({"ssl_cafile": str(cert)})
    assert api_versions_probe("127.0.0.1", port, 5.0, ctx) is True
    assert api_versions_probe("127.0.0.1", port, 2.0) is False  # plaintext on a TLS port


def test_a_tls_producer_started_while_the_broker_is_down_delivers_and_recovers(
        tls_broker, tmp_path, topic_name):
    b, ssl_bootstrap, cert = tls_broker
    ensure_topics(b.client_config(), names=(topic_name,), partitions={topic_name: 3})
    b.stop()
    posts = Workload(seed=22).posts(100)
    p = AsyncPostProducer(ssl_bootstrap, topic_name, security_protocol="SSL",
                          ssl_cafile=str(cert), spool_path=str(tmp_path / "spool.db"),
                          probe_interval_s=0.2, dlq_topic=None)
    try:
        assert p.client is None and p.state is State.SPOOLING  # no broker: no client
        spooled = [p.submit(post) for post in posts[:50]]
        assert {f.result(timeout=10).outcome for f in spooled} == {"spooled"}
        b.start()
        deadline = time.monotonic() + 90
        while (p.state is not State.SENDING or len(p.spool)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert p.state is State.SENDING and len(p.spool) == 0, (p.state, len(p.spool))
        acked = [p.submit(post) for post in posts[50:]]
        assert {f.result(timeout=30).outcome for f in acked} == {"acked"}
        time.sleep(1.0)  # five probe rounds: a healthy TLS client is not taken for a dead one
        assert p.state is State.SENDING
    finally:
        report = p.close(timeout=30)
    assert report.lost == 0 and report.spooled_pending == 0
    on_topic = {json.loads(r.value)["post_id"] for r in read_all(b.client_config(), topic_name)}
    assert on_topic == {post.post_id for post in posts}
