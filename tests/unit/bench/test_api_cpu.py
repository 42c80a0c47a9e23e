"""``bench api --cross-check``'s CPU budget: µs per answered request and cores, per part."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from lab_kit.bench.api import _median_cpu, cpu_now, cpu_per_request, format_cpu

#: a child that waits for a line, burns ``sys.argv[1]`` s of CPU, says so, then waits for EOF
BURN = ("import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
        "while time.process_time() - t < float(sys.argv[1]):\n    pass\n"
        "print('burnt', flush=True)\nsys.stdin.read()\n")


def test_cpu_now_reads_the_servers_the_brokers_and_the_drivers_finished_children():
    """Real processes: a stand-in server and broker burn 0.3 s each between two readings,
    and a child the driver waited for burns 0.2 s: each part must see its own."""
    server, node = (subprocess.Popen([sys.executable, "-c", BURN, "0.3"], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    for _ in range(2))
    broker = SimpleNamespace(nodes=lambda: [SimpleNamespace(pid=node.pid)])
    try:
        before = cpu_now([server.pid], broker)
        for proc in (server, node):
            proc.stdin.write("go\n")
            proc.stdin.flush()
        subprocess.run([sys.executable, "-c", BURN, "0.2"], input="go\n", text=True,
                       capture_output=True, check=True, timeout=30)
        for proc in (server, node):
            assert proc.stdout.readline().strip() == "burnt"
        after = cpu_now([server.pid], broker)
    finally:
        for proc in (server, node):
            proc.stdin.close()
            proc.wait(10)
    assert after["server"] - before["server"] >= 0.25
    assert after["broker"] - before["broker"] >= 0.25
    assert after["driver"] - before["driver"] >= 0.15


def test_a_broker_without_local_processes_is_not_measured():
    cpu = cpu_now([], SimpleNamespace(nodes=lambda: []))
    assert cpu["server"] is None and cpu["broker"] is None and cpu["driver"] > 0


def test_each_part_costs_its_cpu_over_the_requests_and_over_the_wall_clock():
    before = {"server": 10.0, "broker": 100.0, "driver": 1.0}
    after = {"server": 12.5, "broker": 100.5, "driver": 1.9}  # 2.5 + 0.5 + 0.9 s of CPU
    cpu = cpu_per_request(before, after, requests=10_000, wall_s=2.0)
    assert cpu["server_us_per_request"] == 250.0 and cpu["server_cores"] == 1.25
    assert cpu["broker_us_per_request"] == 50.0 and cpu["broker_cores"] == 0.25
    assert cpu["driver_us_per_request"] == 90.0 and cpu["driver_cores"] == 0.45
    assert cpu["total_us_per_request"] == 390.0 and cpu["total_cores"] == 1.95
    assert cpu["cores_here"] >= 1


def test_a_part_not_measured_is_none_and_left_out_of_the_total():
    before = {"server": 10.0, "broker": None, "driver": 1.0}
    after = {"server": 11.0, "broker": None, "driver": 0.5}  # a clock that went back: unusable
    cpu = cpu_per_request(before, after, requests=1_000, wall_s=1.0)
    assert cpu["broker_us_per_request"] is None and cpu["broker_cores"] is None
    assert cpu["driver_us_per_request"] is None
    assert cpu["total_us_per_request"] == 1000.0 and cpu["total_cores"] == 1.0


@pytest.mark.parametrize("requests, wall_s", [(0, 1.0), (100, 0.0)])
def test_no_request_or_no_time_measures_nothing(requests, wall_s):
    cpu = cpu_per_request({"server": 1.0}, {"server": 2.0}, requests=requests, wall_s=wall_s)
    assert cpu["server_us_per_request"] is None
    assert cpu["total_us_per_request"] is None and cpu["total_cores"] is None


def test_the_median_of_rounds_skips_the_rounds_that_did_not_measure_a_field():
    rounds = [{"server_cores": 1.0, "broker_cores": None},
              {"server_cores": 3.0, "broker_cores": 0.2},
              {"server_cores": 2.0, "broker_cores": 0.4}]
    med = _median_cpu(rounds)
    assert med == {"server_cores": 2.0, "broker_cores": pytest.approx(0.3)}
    assert _median_cpu([{"server_cores": None}]) == {"server_cores": None}


def test_the_printed_line_names_every_part_and_says_what_was_not_measured():
    cpu = cpu_per_request({"server": 0.0, "broker": None, "driver": 0.0},
                          {"server": 1.0, "broker": None, "driver": 0.5}, 5_000, 1.0)
    line = format_cpu(cpu)
    assert "server 200 µs/req (1.00 cores)" in line
    assert "broker not measured" in line
    assert "driver 100 µs/req (0.50 cores)" in line
    assert "total 300 µs/req (1.50 cores)" in line
    assert line.endswith(f"of {cpu['cores_here']} here")
