"""The failover's rare paths, without a broker (issue 22, item 5).

A real spool (SQLite), the real ``Failover``, ``ClientSlot`` and ``DeadLetters``; only the
Kafka client is a fake, and only for the state-machine logic (what the producer does when a
client cannot be built, a flush raises, a dead letter fails). How Kafka itself behaves is
tested in tests/broker (the TLS probe: tests/broker/producer/test_tls_failover.py).
"""

from __future__ import annotations

import sqlite3
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, NotLeaderForPartitionError

from lab_kit.metrics import MetricsRecorder
from lab_kit.posts import Workload
from lab_kit.producer import dead_letters, kafka_quirks
from lab_kit.producer.async_producer import AsyncPostProducer, ClientSlot
from lab_kit.producer.failover import (
    Failover,
    State,
    bootstrap_probe,
    rebuild_backoff,
    tls_context,
)
from lab_kit.producer.future import InFlight, PostFuture
from lab_kit.producer.spool import Spool


class FakeRecordFuture:
    """kafka-python's FutureRecordMetadata, as far as the replay and the facade read it."""

    def __init__(self, error: BaseException | None = None, done: bool = True):
        self.exception = error
        self.is_done = done
        self._callbacks: list = []
        self._errbacks: list = []

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def add_callback(self, fn) -> None:
        self._callbacks.append(fn)

    def add_errback(self, fn) -> None:
        self._errbacks.append(fn)

    def fail(self, exc: BaseException) -> None:
        for fn in self._errbacks:
            fn(exc)


class FakeClient:
    """Acks what it is sent, except the values in ``refuse`` (a non-retriable error)."""

    def __init__(self, refuse: tuple[bytes, ...] = (), flush_error: BaseException | None = None,
                 pending: bool = False):
        self.refuse, self.flush_error, self.pending = refuse, flush_error, pending
        self.sent: list = []
        self.closed = False

    def send(self, topic, key=None, value=None):
        if value in self.refuse:
            f = FakeRecordFuture(MessageSizeTooLargeError("too large"))
        else:
            f = FakeRecordFuture(done=not self.pending)
        self.sent.append((value, f))
        return f

    def flush(self, timeout=None):
        if self.flush_error is not None:
            raise self.flush_error

    def bootstrap_connected(self) -> bool:
        return True

    def partitions_for(self, topic):
        return {0}

    def close(self, timeout=None):
        self.closed = True


def posts(n: int) -> list:
    return list(Workload(seed=7).posts(n))


def spool_with(tmp_path: Path, n: int) -> tuple[Spool, list]:
    spool = Spool(tmp_path / "spool.db", autocheckpoint=False)
    ps = posts(n)
    spool.append_many(("posts", p.key_bytes(), p.to_json_bytes(), p.post_id) for p in ps)
    return spool, ps


def failover(spool: Spool, clients, *, state: State, probe=lambda: True,
             dead_letter=lambda rec, exc: None, metrics=None) -> Failover:
    return Failover(spool=spool, topic="posts", clients=clients, in_flight=InFlight(),
                    metrics=metrics or MetricsRecorder(), dead_letter_spooled=dead_letter,
                    probe=probe, probe_interval_s=0.05, stall_timeout_s=3.0, state=state,
                    send=lambda pf, key, value: None)


class Factory:
    """Builds clients for a real ClientSlot: fails the first ``fail`` times, like a broker
    that does not answer yet."""

    def __init__(self, fail: int):
        self.fail, self.calls = fail, 0

    def __call__(self) -> FakeClient:
        self.calls += 1
        if self.calls <= self.fail:
            raise KafkaTimeoutError("no broker answered")
        return FakeClient()


def slot(factory: Factory) -> ClientSlot:
    return ClientSlot(factory, SimpleNamespace(submit=lambda fn, *a: fn(*a)), MetricsRecorder())


# --- the secured-probe trap ---------------------------------------------------------------------
def test_a_missing_client_is_rebuilt_even_when_the_probe_needs_one(tmp_path: Path) -> None:
    """The old TLS/SASL probe asked the client, so with no client it was false, and the round
    returned before the only code that rebuilds the client: SPOOLING for good. A probe that
    needs a client (any custom ``health_probe`` may) must not keep the client from coming."""
    factory = Factory(fail=1)  # the producer's first client: no broker yet
    clients = slot(factory)
    assert clients.current[1] is None
    probe = lambda: clients.current[1] is not None  # noqa: E731 - the old probe's shape
    spool, ps = spool_with(tmp_path, 5)
    fo = failover(spool, clients, state=State.SPOOLING, probe=probe)
    fo.step()
    assert factory.calls == 2 and clients.current[1] is not None
    assert fo.state is State.SENDING  # REPLAYING, the spool replayed, then SENDING
    assert [v for v, _f in clients.current[1].sent] == [p.to_json_bytes() for p in ps]
    assert spool.is_empty()
    spool.close()


def test_the_secured_probe_does_not_ask_the_client() -> None:
    """It speaks TLS to the brokers itself; a TLS setting it cannot use is a "no" (logged),
    not an exception in the health thread, and it never needs a client."""
    probe = bootstrap_probe({"security_protocol": "SASL_SSL", "bootstrap_servers": "k:9093",
                             "ssl_cafile": "/nonexistent/ca.pem"})
    assert probe() is False


def test_the_tls_context_follows_the_client_settings(tmp_path: Path) -> None:
    ctx = tls_context({"ssl_check_hostname": False})
    assert ctx.check_hostname is False and ctx.verify_mode == ssl.CERT_REQUIRED
    assert tls_context({}).check_hostname is True
    mine = ssl.create_default_context()
    assert tls_context({"ssl_context": mine}) is mine


def test_failed_rebuilds_are_paced(tmp_path: Path) -> None:
    factory = Factory(fail=10**6)  # the broker never comes back
    clients = slot(factory)
    spool, _ = spool_with(tmp_path, 1)
    fo = failover(spool, clients, state=State.SPOOLING, probe=lambda: False)
    t_end = time.monotonic() + 0.5
    rounds = 0
    while time.monotonic() < t_end:
        fo.step()
        rounds += 1
    # 0.05 s doubling: tries at 0, 0.05, 0.15, 0.35 s; never one per round
    assert rounds > 100 and 2 <= factory.calls - 1 <= 5, (rounds, factory.calls)
    assert fo.state is State.SPOOLING and len(spool) == 1
    spool.close()


@pytest.mark.parametrize(("failures", "expected"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 10.0),
                                                    (60, 10.0)])
def test_rebuild_backoff_doubles_up_to_a_cap(failures: int, expected: float) -> None:
    assert rebuild_backoff(failures, 0.5) == expected


# --- the leaked lease ---------------------------------------------------------------------------
def test_a_dead_letter_that_fails_keeps_the_post_and_leaks_no_lease(tmp_path: Path) -> None:
    spool, ps = spool_with(tmp_path, 4)
    bad = ps[1].to_json_bytes()
    metrics = MetricsRecorder()

    def dlq_down(rec, exc):
        raise KafkaTimeoutError("dlq: no metadata in 60 s")

    fo = failover(spool, SimpleNamespace(current=(1, FakeClient(refuse=(bad,)))),
                  state=State.REPLAYING, dead_letter=dlq_down, metrics=metrics)
    fo.step()
    left = spool.peek(10)  # peek shows only rows under no lease
    assert [r.value for r in left] == [bad] and left[0].attempts == 1
    assert metrics.counters()["dlq_failed"] == 1
    assert fo.state is State.SPOOLING  # newer posts queue behind it, on disk
    spool.close()


def test_a_dead_letter_that_works_takes_the_post_out_of_the_spool(tmp_path: Path) -> None:
    """The control of the test above."""
    spool, ps = spool_with(tmp_path, 4)
    bad = ps[1].to_json_bytes()
    written = []
    fo = failover(spool, SimpleNamespace(current=(1, FakeClient(refuse=(bad,)))),
                  state=State.REPLAYING, dead_letter=lambda rec, exc: written.append(rec.value))
    fo.step()
    assert written == [bad] and spool.is_empty()
    spool.close()


def test_a_refused_batch_is_re_sent_one_by_one_and_only_the_culprit_is_dead_lettered(
        tmp_path: Path) -> None:
    """The broker refuses a whole batch for one record in it (kafka-python: every record of
    the batch gets the error): each is re-sent alone, in spool order, before any is called
    refused for good."""
    spool, ps = spool_with(tmp_path, 4)
    batch = tuple(p.to_json_bytes() for p in ps[:3])  # refused together, ps[1] at fault
    resent, written, metrics = [], [], MetricsRecorder()

    def resend_alone(rec):
        resent.append(rec.post_id)
        if rec.value == batch[1]:
            raise MessageSizeTooLargeError("too large, alone too")

    fo = Failover(spool=spool, topic="posts",
                  clients=SimpleNamespace(current=(1, FakeClient(refuse=batch))),
                  in_flight=InFlight(), metrics=metrics,
                  dead_letter_spooled=lambda rec, exc: written.append(rec.post_id),
                  probe=lambda: True, probe_interval_s=0.05, stall_timeout_s=3.0,
                  state=State.REPLAYING, send=lambda pf, key, value: None,
                  resend_spooled=resend_alone)
    fo._replay_batch()
    assert resent == [p.post_id for p in ps[:3]]
    assert written == [ps[1].post_id]  # only the one refused on its own
    assert metrics.counters()["replayed"] == 3  # ps[0], ps[2] alone, ps[3] in the batch
    assert spool.is_empty()
    spool.close()


def test_a_flush_that_raises_nacks_the_batch(tmp_path: Path) -> None:
    spool, ps = spool_with(tmp_path, 6)
    client = FakeClient(flush_error=RuntimeError("the client was closed"), pending=True)
    fo = failover(spool, SimpleNamespace(current=(1, client)), state=State.REPLAYING)
    fo.step()
    left = spool.peek(10)
    assert [r.post_id for r in left] == [p.post_id for p in ps]
    assert {r.attempts for r in left} == {1}
    assert fo.state is State.SPOOLING
    spool.close()


def test_any_error_after_the_lease_gives_the_rows_back(tmp_path: Path) -> None:
    spool, ps = spool_with(tmp_path, 3)
    fo = failover(spool, SimpleNamespace(current=(1, FakeClient())), state=State.REPLAYING)

    def ack_fails(seqs):
        raise OSError("disk gone")

    spool.ack = ack_fails
    with pytest.raises(OSError):
        fo.step()
    assert [r.post_id for r in spool.peek(10)] == [p.post_id for p in ps]
    spool.close()


# --- the spin -------------------------------------------------------------------------------------
def test_a_round_with_nothing_to_lease_ends_instead_of_spinning(tmp_path: Path) -> None:
    spool, ps = spool_with(tmp_path, 3)
    other = Spool(tmp_path / "spool.db", autocheckpoint=False)
    assert len(other.lease(10, lease_s=60)) == 3  # another replayer holds every row
    leases = []
    real_lease = spool.lease
    spool.lease = lambda *a, **k: leases.append(1) or real_lease(*a, **k)
    fo = failover(spool, SimpleNamespace(current=(1, FakeClient())), state=State.REPLAYING)
    t = threading.Thread(target=fo.step, daemon=True)
    t.start()
    t.join(2)
    fo._stop.set()  # ends a spinning round, if there were one
    t.join(5)
    assert len(leases) == 1  # one try per round; the next round comes after probe_interval_s
    assert fo.state is State.REPLAYING and len(spool) == 3
    other.close()
    spool.close()


# --- separate workers ---------------------------------------------------------------------------
def test_spooling_and_a_new_client_do_not_wait_behind_a_lone_resend(
        tmp_path: Path, monkeypatch) -> None:
    built: list[FakeClient] = []
    monkeypatch.setattr(AsyncPostProducer, "_new_client",
                        lambda self: built.append(FakeClient(pending=True)) or built[-1])
    release = threading.Event()
    resends = []

    def slow_resend(self, post, timeout_s=30.0):
        resends.append(post.post_id)
        release.wait(20)  # the broker takes its time to answer the lone re-send
        raise MessageSizeTooLargeError("still too large")

    monkeypatch.setattr(dead_letters.DeadLetters, "resend_alone", slow_resend)
    monkeypatch.setattr(dead_letters.DeadLetters, "write", lambda self, post, exc: None)
    p = AsyncPostProducer("127.0.0.1:9", spool_path=str(tmp_path / "spool.db"),
                          health_probe=lambda: True, probe_interval_s=60)
    try:
        refused, failed = p.submit(posts(1)[0]), p.submit(posts(2)[1])
        sent = built[0].sent
        sent[0][1].fail(MessageSizeTooLargeError("too large"))  # -> resend alone, new client
        deadline = time.monotonic() + 5
        while not resends and time.monotonic() < deadline:
            time.sleep(0.01)
        assert resends == [refused.post_id]  # the lone re-send now blocks its worker
        sent[1][1].fail(NotLeaderForPartitionError("leader moved"))  # -> spool
        assert failed.result(timeout=5).outcome == "spooled"
        deadline = time.monotonic() + 5
        while len(built) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(built) == 2 and p._clients.current[0] == 2  # replaced meanwhile
        assert not refused.done()
    finally:
        release.set()
    assert refused.exception(timeout=10) is not None  # dead-lettered once the answer came
    p.close(timeout=5)


# --- thread-safe dead letters ---------------------------------------------------------------------
def test_dead_letters_build_one_client_for_many_threads(monkeypatch) -> None:
    made = []

    class SlowProducer(FakeClient):
        def __init__(self, **config):
            time.sleep(0.05)  # building a client takes a while (bootstrap)
            super().__init__()
            made.append(self)

    monkeypatch.setattr(dead_letters, "KafkaProducer", SlowProducer)
    dl = dead_letters.DeadLetters({"bootstrap_servers": "k:9092"}, "posts", "posts.dlq")
    got = []
    threads = [threading.Thread(target=lambda: got.append(dl._client())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(made) == 1 and {id(c) for c in got} == {id(made[0])}
    dl.close()
    assert made[0].closed
    with pytest.raises(RuntimeError, match="closed"):
        dl._client()



# --- a missing topic is not a dead broker (kafka_quirks, quirk 4) --------------------------------
class NoMetadataClient(FakeClient):
    def partitions_for(self, topic):
        raise KafkaTimeoutError("Failed to update metadata after 60.0 secs.")


def test_a_missing_topic_is_named_and_its_client_closed() -> None:
    client = NoMetadataClient()
    with pytest.raises(kafka_quirks.TopicMetadataTimeout, match="topic 'posts' has no metadata"):
        kafka_quirks.warm_metadata(client, "posts")
    assert client.closed
    assert isinstance(kafka_quirks.TopicMetadataTimeout("x"), KafkaTimeoutError)  # ClientSlot


def _refusing(spool: Spool, monkeypatch) -> None:
    """The spool's disk refuses every write (locked, closed or full), as SQLite would."""
    def refuse(rows):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(spool, "append_many", refuse)


def _replaying_with_tail(tmp_path: Path, n: int, tail_limit: int) -> tuple[Failover, list]:
    spool = Spool(tmp_path / "spool.db", autocheckpoint=False)
    fo = Failover(spool=spool, topic="posts", clients=SimpleNamespace(current=(1, FakeClient())),
                  in_flight=InFlight(), metrics=MetricsRecorder(),
                  dead_letter_spooled=lambda rec, exc: None, probe=lambda: True,
                  probe_interval_s=0.05, stall_timeout_s=3.0, state=State.REPLAYING,
                  send=lambda pf, key, value: None, tail_limit=tail_limit)
    pfs = [PostFuture(p, time.perf_counter()) for p in posts(n)]
    for pf in pfs:
        assert fo.queue_behind_backlog(pf, pf.post.key_bytes(), pf.post.to_json_bytes())
    return fo, pfs


def test_a_full_tail_the_spool_refuses_keeps_every_post(tmp_path: Path, monkeypatch) -> None:
    fo, pfs = _replaying_with_tail(tmp_path, 3, tail_limit=3)
    _refusing(fo.spool, monkeypatch)
    newest = PostFuture(posts(4)[3], time.perf_counter())
    with pytest.raises(Exception, match="locked"):  # the caller refuses the new post
        fo.queue_behind_backlog(newest, newest.post.key_bytes(), newest.post.to_json_bytes())
    assert fo.tail_length == 3 and not any(pf.done() for pf in pfs)


def test_entering_spooling_with_a_refusing_spool_keeps_the_tail(tmp_path: Path,
                                                                monkeypatch) -> None:
    fo, pfs = _replaying_with_tail(tmp_path, 5, tail_limit=100)
    _refusing(fo.spool, monkeypatch)
    fo._enter(State.SPOOLING, "test: broker gone")
    assert fo.state is State.SPOOLING and fo.tail_length == 5
    monkeypatch.undo()  # the disk takes writes again: the tail goes first, then the new post
    newest = PostFuture(posts(6)[5], time.perf_counter())
    fo.queue_behind_backlog(newest, newest.post.key_bytes(), newest.post.to_json_bytes())
    assert fo.tail_length == 0
    assert [r.post_id for r in fo.spool.lease(10)] == [pf.post_id for pf in [*pfs, newest]]


def test_close_counts_the_tail_the_spool_refused(tmp_path: Path, monkeypatch) -> None:
    fo, pfs = _replaying_with_tail(tmp_path, 4, tail_limit=100)
    _refusing(fo.spool, monkeypatch)
    refused = fo.tail_to_spool()
    assert [pf.post_id for pf in refused] == [pf.post_id for pf in pfs]
    assert fo.tail_length == 0 and not any(pf.done() for pf in pfs)


# --- order per user (issue 20) ----------------------------------------------------------------
def test_a_post_respooled_late_is_replayed_before_newer_ones(tmp_path: Path) -> None:
    """P1 sat in the client when the broker went; P2 (newer, same user) was spooled at once;
    P1 failed later (delivery timeout) and was spooled after it. Replay sends P1 first."""
    spool = Spool(tmp_path / "spool.db", autocheckpoint=False)
    clients = SimpleNamespace(current=(1, FakeClient()), replace=lambda generation: None)
    fo = failover(spool, clients, state=State.SPOOLING)
    p1, p2 = (PostFuture(p, time.perf_counter()) for p in posts(2))
    fo.spool_post(p2, p2.post.key_bytes(), p2.post.to_json_bytes())
    fo.spool_failed([p1], outage=True)
    fo.step()  # the broker answers: replay
    assert [v for v, _f in clients.current[1].sent] == [p1.post.to_json_bytes(),
                                                         p2.post.to_json_bytes()]


def test_replay_waits_while_a_replaced_client_still_holds_posts(tmp_path: Path) -> None:
    spool, ps = spool_with(tmp_path, 3)
    clients = SimpleNamespace(current=(2, FakeClient()), replace=lambda generation: None)
    in_flight = InFlight()
    old = PostFuture(posts(4)[3], time.perf_counter())
    old.generation = 1  # still inside the replaced client: it will fail over to the spool
    in_flight[old] = None
    fo = Failover(spool=spool, topic="posts", clients=clients, in_flight=in_flight,
                  metrics=MetricsRecorder(), dead_letter_spooled=lambda rec, exc: None,
                  probe=lambda: True, probe_interval_s=0.05, stall_timeout_s=0.3,
                  state=State.SPOOLING, send=lambda pf, key, value: None)
    fo.step()
    assert clients.current[1].sent == [] and len(spool) == 3  # nothing overtakes it
    in_flight.pop(old, None)  # it failed over (or was acked)
    fo.step()
    assert len(clients.current[1].sent) == 3 and spool.is_empty()
