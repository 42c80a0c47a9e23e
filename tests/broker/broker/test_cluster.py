"""A 3-node KRaft cluster: RF 3, min.insync.replicas=2, leader killed under acks=all load."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from kafka import KafkaProducer

from lab_kit.broker import local as local_mod
from lab_kit.drills.producer_drills import leader_of
from lab_kit.topics import POSTS, describe, ensure_topics
from tests.kafka_helpers import read_all, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    b = local_mod.up(nodes=3, state_dir=state)
    yield b
    b.down(purge=True)


def test_three_nodes_running_with_pids(cluster):
    nodes = cluster.nodes()
    assert [n.id for n in nodes] == [1, 2, 3]
    assert all(n.state == "running" and n.pid for n in nodes)


def test_topics_get_rf3_and_min_isr_2(cluster):
    cfg = cluster.client_config()
    ensure_topics(cfg)
    live = describe(cfg)
    assert live[POSTS]["replication_factor"] == 3
    assert all(v["min_insync_replicas"] == 2 for v in live.values())


def test_killing_the_leader_under_acks_all_loses_no_acked_message(cluster):
    cfg = cluster.client_config()
    ensure_topics(cfg, names=("failover",), partitions={"failover": 1})
    leader = leader_of(cfg, "failover")
    producer = KafkaProducer(**cfg, acks="all", linger_ms=2, request_timeout_ms=5000)
    futures = []
    try:
        t_end = time.monotonic() + 20
        i = 0
        killed = False
        while time.monotonic() < t_end and i < 6000:
            futures.append((f"m-{i}".encode(), producer.send("failover", f"m-{i}".encode())))
            i += 1
            if i == 1500 and not killed:
                cluster.kill(leader)
                killed = True
            time.sleep(0.001)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    assert killed
    assert cluster.nodes()[leader - 1].state == "stopped"
    acked = [v for v, f in futures if f.succeeded()]
    assert len(acked) >= 0.9 * len(futures)
    assert leader_of(cfg, "failover") != leader
    got = [r.value for r in read_all(cfg, "failover")]
    missing = set(acked) - set(got)
    assert missing == set(), f"{len(missing)} acked messages lost"
    cluster.start(leader)
    assert cluster.nodes()[leader - 1].state == "running"


def test_the_api_calls_an_ack_durable_on_a_replicated_topic(cluster, tmp_path):
    """On rf 3 with min.insync.replicas 2, an ``acks=all`` ack is two copies or more: the
    API's 201 says ``durable: true`` once it has read the topic's replication (on one broker
    it says false: test_api). ``acks=1`` on the same topic is never durable."""
    import httpx

    from lab_kit.api import ApiServer
    from lab_kit.topics import acks_durable_on

    cfg = cluster.client_config()
    ensure_topics(cfg, names=(POSTS,))
    assert acks_durable_on(cfg, POSTS, "all") is True
    assert acks_durable_on(cfg, POSTS, 1) is False
    server = ApiServer(topic=POSTS, bootstrap=cfg["bootstrap_servers"], verdicts="off",
                       spool_dir=tmp_path, log_path=tmp_path / "api.log")
    server.start()
    bodies = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            def post_one() -> bool:
                r = c.post("/posts?wait=ack", json={"user_id": "user-rf3", "text": "copies"})
                assert r.status_code == 201, r.text
                bodies.append(r.json())
                return bodies[-1]["durable"]

            # the API learns the topic's replication in the background, soon after it starts
            wait_for(post_one, timeout_s=30, interval_s=0.2)
    finally:
        server.stop()
    assert all(b["acknowledged"] is True and b["delivery"] == "acked" for b in bodies)
    assert bodies[-1]["durable"] is True, bodies[-1]


def test_cli_status_and_kill_9_by_pid(cluster):
    import json
    import os
    import signal

    env = {**os.environ, "LAB_STATE_DIR": str(cluster.state_dir)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)

    def status():
        out = subprocess.run([sys.executable, "-m", "lab_kit", "broker", "status", "--json"],
                             capture_output=True, text=True, env=env, timeout=60, check=True)
        return json.loads(out.stdout)

    st = status()
    assert len(st["nodes"]) == 3 and all(n["state"] == "running" for n in st["nodes"])
    victim = st["nodes"][2]
    os.kill(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10  # the signal is delivered asynchronously
    while status()["nodes"][2]["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status()["nodes"][2]["state"] == "stopped"
    subprocess.run([sys.executable, "-m", "lab_kit", "broker", "start", "--node",
                    str(victim["id"])], env=env, timeout=120, check=True, capture_output=True)
    assert status()["nodes"][2]["state"] == "running"
