"""producer_drill tears down in a ``finally`` (issue 22, item 7): whatever fails midway, the
nemesis has healed the broker (and nothing strikes later) and the producer is closed. No
broker: the broker, the producer and the load are stand-ins; the nemesis is the real one."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from lab_kit.drills import producer_drills
from lab_kit.drills.workload import DrillSettings


class FakeBroker:
    """Records the fault calls the nemesis makes (kill -9 / start) and says if it is up."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.up = True

    def client_config(self) -> dict:
        return {"bootstrap_servers": "127.0.0.1:1"}

    def extra_config(self) -> dict:
        return {}

    def node_ids(self) -> list[int]:
        return [1]

    def kill(self, node: int) -> None:
        self.calls.append(f"kill {node}")
        self.up = False

    def start(self, node: int) -> None:
        self.calls.append(f"start {node}")
        self.up = True


class FakeProducer:
    instances: list[FakeProducer] = []

    def __init__(self, *args, **kwargs) -> None:
        self.closed = False
        FakeProducer.instances.append(self)

    def close(self, timeout: float = 30.0) -> SimpleNamespace:
        self.closed = True
        return SimpleNamespace(lost=0)


@pytest.fixture
def fakes(monkeypatch):
    FakeProducer.instances = []
    monkeypatch.setattr(producer_drills, "fresh_topics", lambda cfg, name: ("t", "t.dlq"))
    monkeypatch.setattr(producer_drills, "AsyncPostProducer", FakeProducer)
    return FakeBroker()


def _fail_after(seconds: float):
    def run_open_loop(*args, **kwargs):
        time.sleep(seconds)
        raise RuntimeError("the load generator broke")
    return run_open_loop


def test_a_failure_during_the_outage_still_heals_and_closes(fakes, monkeypatch, tmp_path):
    monkeypatch.setattr(producer_drills, "run_open_loop", _fail_after(0.3))  # mid-outage
    settings = DrillSettings(posts=10, rate=10, lead_s=0.05, outage_s=0.5)
    with pytest.raises(RuntimeError, match="load generator broke"):
        producer_drills.producer_drill("broker-outage", fakes, settings, workdir=tmp_path)
    assert fakes.calls[0] == "kill 1" and fakes.up
    assert "start 1" in fakes.calls
    assert [p.closed for p in FakeProducer.instances] == [True]
    assert not [t for t in threading.enumerate() if t.name == "nemesis"]


def test_a_failure_before_the_strike_leaves_no_strike_behind(fakes, monkeypatch, tmp_path):
    monkeypatch.setattr(producer_drills, "run_open_loop", _fail_after(0.0))
    settings = DrillSettings(posts=10, rate=10, lead_s=0.3, outage_s=0.5)
    with pytest.raises(RuntimeError):
        producer_drills.producer_drill("broker-outage", fakes, settings, workdir=tmp_path)
    calls = list(fakes.calls)
    time.sleep(0.3)
    assert fakes.calls == calls, "nothing may strike after producer_drill returned"
    assert fakes.up and FakeProducer.instances[0].closed


def test_a_heal_that_failed_is_tried_again(fakes, monkeypatch, tmp_path):
    attempts = []

    def start(node: int) -> None:
        attempts.append(node)
        if len(attempts) == 1:
            raise OSError("port still taken")
        fakes.up = True

    fakes.start = start
    monkeypatch.setattr(producer_drills, "run_open_loop", _fail_after(0.0))
    settings = DrillSettings(posts=10, rate=10, lead_s=0.02, outage_s=0.05)
    with pytest.raises(RuntimeError):
        producer_drills.producer_drill("broker-outage", fakes, settings, workdir=tmp_path)
    assert attempts == [1, 1] and fakes.up


def test_teardown_of_a_successful_drill_raises_its_own_error():
    class Broken(FakeProducer):
        def close(self, timeout: float = 30.0):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        producer_drills.teardown(Broken(), None, DrillSettings(), failed=False)
    producer_drills.teardown(Broken(), None, DrillSettings(), failed=True)  # drill's error wins
