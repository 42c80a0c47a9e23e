"""Per-user order on the producer's rarer paths (issue 20, item 1), without a broker.

The real producer, failover, spool (SQLite) and workers; only the Kafka client is a fake that
keeps every record pending until the test settles it, so each test can hold one thread at the
moment that used to let a newer post overtake an older one of the same user:

* a refused batch's posts re-sent one by one (``RESEND_ALONE``) while new posts arrive;
* a failed post on its way to the spool (the worker busy) while new posts arrive;
* a caller that read SENDING and is still inside ``send()`` when the state changes;
* without a spool, a newer post while a refused batch's posts are re-sent alone: it is
  refused (``BackpressureError``, not accepted), since there is nowhere to queue it.

What reaches Kafka is the order in which the clients and the lone re-sends were given records
that were then acked. How the real client keeps a partition's order is tested on the broker
(tests/broker/producer).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError

from lab_kit.posts import Post
from lab_kit.producer import dead_letters
from lab_kit.producer.async_producer import AsyncPostProducer
from lab_kit.producer.errors import BackpressureError
from lab_kit.producer.failover import State

LANDED: list[str] = []  # post ids in the order Kafka acked them, across clients and re-sends


class Record:
    """kafka-python's FutureRecordMetadata, pending until ``ack()`` or ``fail()``."""

    def __init__(self, post_id: str):
        self.post_id, self.is_done, self.exception = post_id, False, None
        self._callbacks: list = []
        self._errbacks: list = []

    def add_callback(self, fn) -> None:
        self._callbacks.append(fn)

    def add_errback(self, fn) -> None:
        self._errbacks.append(fn)

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def ack(self) -> None:
        if self.is_done:
            return
        self.is_done = True
        LANDED.append(self.post_id)
        for fn in self._callbacks:
            fn(SimpleNamespace(topic="posts", partition=0, offset=len(LANDED)))

    def fail(self, exc: BaseException) -> None:
        self.is_done, self.exception = True, exc
        for fn in self._errbacks:
            fn(exc)


class Client:
    """Keeps what it is sent pending; ``flush()`` acks it all, in the order it was sent.
    ``hold`` is a post id whose ``send()`` waits for ``release`` (a caller preempted there)."""

    def __init__(self, hold: str | None = None):
        self.sent: list[Record] = []
        self.hold, self.release, self.holding = hold, threading.Event(), threading.Event()

    def send(self, topic, key=None, value=None):
        post_id = json.loads(value)["post_id"]
        if post_id == self.hold:
            self.holding.set()
            self.release.wait(10)
        record = Record(post_id)
        self.sent.append(record)
        return record

    def flush(self, timeout=None):
        for record in list(self.sent):
            record.ack()

    def ids(self) -> list[str]:
        return [r.post_id for r in self.sent]

    def bootstrap_connected(self) -> bool:
        return True

    def partitions_for(self, topic):
        return {0}

    def close(self, timeout=None):
        pass


def producer(tmp_path: Path, monkeypatch, clients: list[Client]) -> AsyncPostProducer:
    """A producer whose n-th client is ``clients[n]``; its health thread never runs by itself
    (the test calls ``step()``), and its probe always answers."""
    LANDED.clear()
    made = iter(clients)
    monkeypatch.setattr(AsyncPostProducer, "_new_client", lambda self: next(made))
    return AsyncPostProducer("127.0.0.1:9", spool_path=str(tmp_path / "spool.db"),
                             health_probe=lambda: True, probe_interval_s=60)


def by_one_user(n: int) -> list[Post]:
    return [Post(user_id="u-1", text=f"post number {i}") for i in range(n)]


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_new_post_waits_behind_a_refused_batch_re_sent_alone(tmp_path, monkeypatch):
    first, second = Client(), Client()
    release, resent = threading.Event(), []

    def slow_resend(self, post, timeout_s=30.0):
        resent.append(post.post_id)
        release.wait(10)  # the broker takes its time to answer the lone re-send
        record = Record(post.post_id)
        record.ack()
        return SimpleNamespace(topic="posts", partition=0, offset=len(LANDED))

    monkeypatch.setattr(dead_letters.DeadLetters, "resend_alone", slow_resend)
    p = producer(tmp_path, monkeypatch, [first, second])
    older = by_one_user(3)
    try:
        futures = [p.submit(post) for post in older[:2]]
        # the broker refuses the batch; kafka-python fails every later send with it
        first.sent[0].fail(MessageSizeTooLargeError("a batch-mate is too large"))
        first.sent[1].fail(MessageSizeTooLargeError("a batch-mate is too large"))
        wait_until(lambda: len(resent) == 1 and p._clients.current[1] is second)
        newer = p.submit(older[2])  # while the first re-send waits for its answer
        assert second.sent == [] and p.state is State.REPLAYING
        p._failover.step()  # the health thread's round: the tail must wait too
        assert second.sent == [] and not newer.done()
    finally:
        release.set()
    # the second is re-sent alone too, or spooled if the client was replaced before it failed
    assert [f.result(timeout=5).outcome for f in futures] in (
        ["acked", "acked"], ["acked", "spooled"])
    wait_until(lambda: p._failover._backlog_may_move())
    p._failover.step()  # the spool (if any), then the tail
    assert second.ids()[-1] == older[2].post_id
    second.flush()
    assert newer.result(timeout=5).outcome == "acked"
    assert LANDED == [post.post_id for post in older]
    assert p.state is State.SENDING
    p.close(timeout=5)


def test_a_new_post_waits_behind_a_failed_post_on_its_way_to_the_spool(tmp_path, monkeypatch):
    client = Client()
    p = producer(tmp_path, monkeypatch, [client])
    busy = threading.Event()
    p._worker.submit(busy.wait, 10)  # the worker is busy: the failed post waits in its queue
    posts = by_one_user(2)
    try:
        older = p.submit(posts[0])
        client.sent[0].fail(NotLeaderForPartitionError("leader moved"))
        newer = p.submit(posts[1])  # after the error, before the worker spooled the post
        assert client.ids() == [posts[0].post_id]  # not sent past the failed one
        assert p.state is not State.SENDING
    finally:
        busy.set()
    assert older.result(timeout=5).outcome == "spooled"
    p._failover.step()  # the broker answers: the spool replays, then the tail
    wait_until(lambda: p.state is State.SENDING or newer.done())
    client.flush()
    assert LANDED == [posts[0].post_id, posts[1].post_id]
    assert newer.result(timeout=5).outcome in ("acked", "spooled")
    p.close(timeout=5)


def test_the_backlog_waits_for_a_caller_still_inside_send(tmp_path, monkeypatch):
    other = Post(user_id="u-0", text="another user's post")  # it fails; the state changes
    posts = by_one_user(2)
    client = Client(hold=posts[0].post_id)
    p = producer(tmp_path, monkeypatch, [client])
    failed = p.submit(other)
    caller = threading.Thread(target=p.submit, args=(posts[0],))  # reads SENDING, then waits
    caller.start()
    try:
        assert client.holding.wait(5)
        client.sent[0].fail(NotLeaderForPartitionError("leader moved"))  # state leaves SENDING
        assert failed.result(timeout=5).outcome == "spooled"
        newer = p.submit(posts[1])  # queues behind the backlog
        p._failover.step()
        assert client.ids() == [other.post_id]  # nothing sent past the caller's post
        assert len(p.spool) == 2 and newer.result(timeout=5).outcome == "spooled"
    finally:
        client.release.set()
        caller.join(5)
    p._failover.step()
    wait_until(lambda: p.state is State.SENDING)
    client.flush()
    assert [i for i in LANDED if i != other.post_id] == [posts[0].post_id, posts[1].post_id]
    assert other.post_id in LANDED
    p.close(timeout=5)


def test_without_a_spool_a_newer_post_is_refused_not_sent_past_a_lone_re_send(
        tmp_path, monkeypatch):
    LANDED.clear()
    first, second = Client(), Client()
    made = iter([first, second])
    monkeypatch.setattr(AsyncPostProducer, "_new_client", lambda self: next(made))
    release, resent = threading.Event(), []

    def slow_resend(self, post, timeout_s=30.0):
        resent.append(post.post_id)
        release.wait(10)
        Record(post.post_id).ack()
        return SimpleNamespace(topic="posts", partition=0, offset=len(LANDED))

    monkeypatch.setattr(dead_letters.DeadLetters, "resend_alone", slow_resend)
    p = AsyncPostProducer("127.0.0.1:9", max_block_s=0.05)  # no spool: on_full="block"
    posts = by_one_user(2)
    try:
        older = p.submit(posts[0])
        first.sent[0].fail(MessageSizeTooLargeError("a batch-mate is too large"))
        wait_until(lambda: resent == [posts[0].post_id])
        with pytest.raises(BackpressureError) as info:
            p.submit(posts[1])  # blocked 50 ms, then refused: not accepted, not reordered
        assert info.value.field == "resend_alone" and "not accepted" in str(info.value)
        assert p.metrics.counters()["rejected"] == 1
    finally:
        release.set()
    assert older.result(timeout=5).outcome == "acked"
    wait_until(lambda: not p._resending)
    newer = p.submit(posts[1])  # taken again once the re-send is done
    p._clients.current[1].flush()
    assert newer.result(timeout=5).outcome == "acked"
    assert LANDED == [posts[0].post_id, posts[1].post_id]
    p.close(timeout=5)


def test_a_tail_chunk_stops_where_a_post_fails_and_the_rest_waits_first_in_line(tmp_path):
    from lab_kit.metrics import MetricsRecorder
    from lab_kit.producer.failover import Failover
    from lab_kit.producer.future import InFlight, PostFuture
    from lab_kit.producer.spool import Spool

    sent = []

    def send(pf, key, value):  # the second post fails at once (send() raised): re-routed
        sent.append(pf.post_id)
        if len(sent) == 2:
            fo.reroute_coming()

    fo = Failover(spool=Spool(tmp_path / "spool.db"), topic="posts",
                  clients=SimpleNamespace(current=(1, Client())), in_flight=InFlight(),
                  metrics=MetricsRecorder(), dead_letter_spooled=lambda rec, exc: None,
                  probe=lambda: True, probe_interval_s=60, stall_timeout_s=3.0,
                  state=State.REPLAYING, send=send)
    pfs = [PostFuture(p, time.perf_counter()) for p in by_one_user(5)]
    for pf in pfs:
        assert fo.queue_behind_backlog(pf, pf.post.key_bytes(), pf.post.to_json_bytes())
    assert fo._send_tail_chunk() is False
    assert sent == [pf.post_id for pf in pfs[:2]]
    assert [pf.post_id for pf, _k, _v in fo._tail] == [pf.post_id for pf in pfs[2:]]
    fo.reroute_done()
    assert fo._send_tail_chunk() is True
    assert sent == [pf.post_id for pf in pfs[:2] + pfs[2:]]
    fo.spool.close()


def test_without_a_spool_new_posts_wait_until_the_replaced_client_gave_its_posts_back(
        tmp_path, monkeypatch):
    """A refused post replaces the client; the posts the old one still holds fail only when
    it is force-closed, on the worker, a little later. Until then a new post of their user
    must not go through the new client."""
    LANDED.clear()
    closing = threading.Event()

    class Closing(Client):
        def close(self, timeout=None):  # kafka-python fails what it holds (errbacks run)
            closing.wait(10)
            for record in self.sent:
                if not record.is_done:
                    record.fail(NotLeaderForPartitionError("producer closed forcefully"))

    first, second = Closing(), Client()
    made = iter([first, second])
    monkeypatch.setattr(AsyncPostProducer, "_new_client", lambda self: next(made))

    def resend(self, post, timeout_s=30.0):
        Record(post.post_id).ack()
        return SimpleNamespace(topic="posts", partition=0, offset=len(LANDED))

    monkeypatch.setattr(dead_letters.DeadLetters, "resend_alone", resend)
    p = AsyncPostProducer("127.0.0.1:9", on_full="reject")
    posts = by_one_user(3)
    try:
        p.submit(posts[0]), p.submit(posts[1])
        first.sent[0].fail(MessageSizeTooLargeError("too large"))  # posts[1] still inside
        wait_until(lambda: p._clients.current[1] is second)
        with pytest.raises(BackpressureError):
            p.submit(posts[2])  # the old client has not given posts[1] back yet
        assert second.sent == []
    finally:
        closing.set()
    wait_until(lambda: not p._resending)
    p.submit(posts[2])
    second.flush()
    assert LANDED == [post.post_id for post in posts]
    p.close(timeout=5)
