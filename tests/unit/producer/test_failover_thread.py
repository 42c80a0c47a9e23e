"""The Failover object without a broker: a real spool (SQLite), a fake Kafka client.

What the health thread does besides probing: it checkpoints the spool (so no caller's append
waits for an fsync), it spools posts that failed together in one transaction, and it paces
the replay so old posts do not crowd out new ones.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab_kit.metrics import MetricsRecorder
from lab_kit.posts import Workload
from lab_kit.producer.failover import Failover, State
from lab_kit.producer.future import InFlight, PostFuture
from lab_kit.producer.spool import Spool


class FakeKafkaFuture:
    def succeeded(self) -> bool:
        return True

    is_done = True
    exception = None


class SlowFakeClient:
    """Acks every record at once; each send costs ``send_s`` of CPU-free time."""

    def __init__(self, send_s: float = 0.0005):
        self.send_s = send_s
        self.sent: list[tuple[float, bytes]] = []  # (time, value)

    def send(self, topic, key=None, value=None):
        time.sleep(self.send_s)
        self.sent.append((time.perf_counter(), value))
        return FakeKafkaFuture()

    def flush(self, timeout=None):
        return None


def make_failover(tmp_path: Path, *, state: State, client=None, probe=lambda: True,
                  metrics: MetricsRecorder | None = None, **kwargs) -> Failover:
    spool = Spool(tmp_path / "spool.db", autocheckpoint=False)
    return Failover(spool=spool, topic="posts", clients=SimpleNamespace(current=(0, client),
                                                              replace=lambda generation: None),
                    in_flight=InFlight(), metrics=metrics or MetricsRecorder(),
                    dead_letter_spooled=lambda rec, exc: None, probe=probe,
                    probe_interval_s=0.05, stall_timeout_s=3.0, state=state,
                    send=lambda pf, key, value: None, **kwargs)


def futures(n: int) -> list[PostFuture]:
    return [PostFuture(post, time.perf_counter()) for post in Workload(seed=5).posts(n)]


def test_the_health_thread_checkpoints_the_spool(tmp_path: Path) -> None:
    fo = make_failover(tmp_path, state=State.SPOOLING, probe=lambda: False)
    for pf in futures(1500):  # one commit each, as while the broker is down
        fo.spool_post(pf, pf.post.key_bytes(), pf.post.to_json_bytes())
    db = tmp_path / "spool.db"
    before = db.stat().st_size
    time.sleep(1.5)
    assert db.stat().st_size == before  # no append checkpointed, and no thread runs yet
    fo.start()
    try:
        deadline = time.monotonic() + 10
        while db.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        fo.stop(5)
    assert db.stat().st_size > before  # the health thread copied the WAL into the file
    assert len(fo.spool) == 1500
    fo.spool.close()


def test_posts_that_failed_together_are_spooled_in_order_and_settle(tmp_path: Path) -> None:
    metrics = MetricsRecorder()
    fo = make_failover(tmp_path, state=State.SENDING, metrics=metrics)
    pfs = futures(300)
    fo.spool_failed(pfs, outage=True)
    assert fo.state is State.SPOOLING  # an outage: new posts go to the spool too
    assert [r.post_id for r in fo.spool.peek(1000)] == [pf.post_id for pf in pfs]
    assert {pf.result(0).outcome for pf in pfs} == {"spooled"}
    assert metrics.counters()["spooled"] == 300
    fo.spool.close()


def test_a_failure_that_is_not_an_outage_still_puts_newer_posts_behind_it(
        tmp_path: Path) -> None:
    fo = make_failover(tmp_path, state=State.SENDING)
    fo.spool_failed(futures(3), outage=False)
    assert fo.state is State.REPLAYING
    fo.spool.close()


@pytest.mark.parametrize("share", [0.5, 0.25])
def test_the_replay_pauses_between_batches(tmp_path: Path, share: float) -> None:
    client = SlowFakeClient()
    fo = make_failover(tmp_path, state=State.REPLAYING, client=client, replay_batch=100,
                       replay_share=share)
    pfs = futures(300)
    fo.spool.append_many(("posts", pf.post.key_bytes(), pf.post.to_json_bytes(), pf.post_id)
                         for pf in pfs)
    assert fo.replay_done_at is None  # no replay has ended yet
    step = threading.Thread(target=fo.step)
    step.start()
    step.join(30)
    assert not step.is_alive()
    assert len(client.sent) == 300 and len(fo.spool) == 0
    assert fo.state is State.SENDING
    # the replay's end is stamped when the state went back to SENDING, after the last send
    assert fo.replay_done_at is not None
    assert fo.replay_done_at >= client.sent[-1][0]  # both on perf_counter (the default)
    assert [v for _t, v in client.sent] == [pf.post.to_json_bytes() for pf in pfs]  # in order
    times = [t for t, _v in client.sent]
    for first, nxt in ((0, 100), (100, 200)):
        busy = times[first + 99] - times[first]  # at least this long sending the batch
        pause = times[nxt] - times[first + 99]
        assert pause >= 0.9 * busy * (1 - share) / share, (first, busy, pause)
    fo.spool.close()


@pytest.mark.parametrize("answers", [True, False])
def test_a_client_stuck_past_twice_the_stall_timeout_is_replaced_broker_up_or_not(
        tmp_path: Path, answers: bool) -> None:
    """A frozen broker (SIGSTOP: the connection stays open, nothing answers) makes
    kafka-python's sender spin on a core while it holds posts in memory: the stuck client is
    replaced whether the probe answers or not (its posts then fail over to the spool)."""
    replaced: list[int] = []

    def replace(generation: int, rebuild: bool = True) -> None:
        replaced.append(generation)

    spool = Spool(tmp_path / "spool.db", autocheckpoint=False)
    fo = Failover(spool=spool, topic="posts",
                  clients=SimpleNamespace(current=(1, SlowFakeClient()), replace=replace),
                  in_flight=InFlight(), metrics=MetricsRecorder(),
                  dead_letter_spooled=lambda rec, exc: None, probe=lambda: answers,
                  probe_interval_s=0.05, stall_timeout_s=0.1, state=State.SENDING,
                  send=lambda pf, key, value: None)
    stuck = futures(1)[0]
    stuck.generation = 1
    fo._in_flight[stuck] = None
    time.sleep(0.15)  # older than the stall timeout: stalled
    fo.step()
    if answers:  # it may still recover: the first stalled round only starts the clock
        assert replaced == []
        time.sleep(0.25)  # past twice the stall timeout more
        fo.step()
    assert replaced == [1]  # no answer: nothing can leave it, replaced at once
    assert fo.state is State.SPOOLING  # acks stalled: an outage, whatever the probe says
    spool.close()
