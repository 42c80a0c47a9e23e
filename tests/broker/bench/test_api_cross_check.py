"""``bench api --cross-check``: the lab's driver and Debian's hey on the same API server, and
the topic read back for both (real broker, real API processes, real hey)."""

from __future__ import annotations

import pytest

from lab_kit.bench.api import cross_check
from lab_kit.harness.hey_load import hey_path

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300),
              pytest.mark.skipif(hey_path() is None,
                                 reason="hey is not installed (apt-get install hey; .ci/run "
                                        "installs it)")]


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_both_drivers_load_the_same_server_and_every_accepted_post_is_on_the_topic(
        kafka_broker, client):
    res = cross_check(points=((200, 1),), seconds=3, rounds=1, broker=kafka_broker,
                      progress=False, clients=(client,))
    (point,) = res["points"]
    assert point["client"] == client
    (rnd,) = point["rounds"]
    lab, hey = rnd["lab"], rnd["hey"]
    assert lab["accepted"] >= 0.9 * 200 * 3 and lab["errors"] == 0 and lab["lost"] == 0
    # hey holds each of its workers to rate / workers: about the same load, from Go
    assert 0.5 * 200 * 3 <= hey["accepted"] <= 1.2 * 200 * 3, hey
    assert hey["errors"] == 0 and hey["workers"] == 10
    assert hey["on_topic"] >= hey["accepted"] and hey["missing_from_topic"] == 0
    for driver in ("lab", "hey"):
        assert 0 < point[driver]["p50_ms"] <= point[driver]["p99_ms"]
        assert isinstance(point[driver]["p99_le_100ms"], bool)
    assert point["lost_max"] == 0 and point["hey_missing_max"] == 0


def test_each_driver_s_run_reports_where_its_cpu_went(kafka_broker):
    """Per driver, the CPU of the API's processes, the broker's and the driver's. The bounds
    are far below what each part costs (HTTP in Python: hundreds of µs per request) and far
    above what it would read if a part were missed: two workers counted as their idle master
    alone, hey's CPU left out (the bench process only waits for it), the broker not read."""
    res = cross_check(points=((300, 2),), seconds=3, rounds=1, broker=kafka_broker,
                      progress=False, clients=("confluent",))
    (point,) = res["points"]
    (rnd,) = point["rounds"]
    for driver in ("lab", "hey"):
        cpu = rnd[driver]["cpu"]
        assert cpu["server_us_per_request"] >= 30, (driver, cpu)
        assert cpu["driver_us_per_request"] >= 20, (driver, cpu)
        if kafka_broker.backend == "local":  # a JVM on this machine, by its pid
            assert cpu["broker_us_per_request"] > 0, (driver, cpu)
        assert 0 < cpu["total_cores"] <= cpu["cores_here"], (driver, cpu)
        assert point[driver]["cpu"]["server_us_per_request"] == cpu["server_us_per_request"]


def test_an_unknown_client_is_refused_before_any_server_starts():
    with pytest.raises(ValueError, match="clients"):
        cross_check(points=((200, 1),), clients=("aiokafka",), progress=False)
