"""exactly-once in the stage, without a broker: which offsets a transaction commits, where an
abort re-reads from, and that a stuck librdkafka call is bounded. The stage runs against a
recording stand-in for its Kafka clients; the real clients are checked against the broker in
tests/broker/moderation/test_exactly_once.py."""

from __future__ import annotations

import time

import pytest

from lab_kit.moderation import clients as clients_mod
from lab_kit.moderation.clients import Rec
from lab_kit.moderation.offsets import Chunk
from lab_kit.moderation.service import ModerationService

TP = ("posts", 0)


class Recorder:
    """Records what the stage asks of its Kafka clients; acks (or fails) on flush."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.pending: list[Chunk] = []
        self.fail_next_output = False
        self.fail_commit = False

    def begin(self) -> None:
        self.calls.append(("begin",))

    def send(self, topic, key, value, headers, chunk) -> None:
        chunk.expect()
        self.pending.append(chunk)

    def flush(self, timeout_s: float) -> bool:
        for chunk in self.pending:
            err = RuntimeError("broker said no") if self.fail_next_output else None
            self.fail_next_output = False
            chunk.output_done(err)
        self.pending = []
        return True

    def serve(self) -> None:
        pass

    def commit_transaction(self, offsets) -> None:
        self.calls.append(("commit_transaction", dict(offsets)))
        if self.fail_commit:
            raise RuntimeError("fenced")

    def commit(self, offsets) -> None:
        self.calls.append(("commit", dict(offsets)))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def rebuild_producer(self) -> None:
        self.calls.append(("rebuild",))

    def seek(self, tp, offset) -> None:
        self.calls.append(("seek", tp, offset))


def _stage(guarantee: str) -> tuple[ModerationService, Recorder]:
    svc = ModerationService("127.0.0.1:1", "http://127.0.0.1:1", guarantee=guarantee)
    rec = Recorder()
    svc._clients = rec  # type: ignore[assignment]
    return svc, rec


def _produce_chunk(svc: ModerationService, first: int, n: int = 5) -> Chunk:
    records = [Rec(TP[0], TP[1], off, 0, b"u", b"{}", []) for off in range(first, first + n)]
    chunk = svc._tracker.add(Chunk(TP, records))
    for _ in range(2):  # two outputs per chunk
        svc._send(chunk, "results", b"u", b"{}")
    svc._seal(chunk)
    return chunk


def test_a_transaction_commits_the_outputs_with_the_end_of_the_acked_chunks() -> None:
    svc, rec = _stage("exactly-once")
    assert svc.transactional_id and svc.transactional_id.startswith("lab-moderation-")
    assert svc._producer_settings()["transactional_id"] == svc.transactional_id
    _produce_chunk(svc, 10)
    _produce_chunk(svc, 15)
    assert rec.calls == [("begin",)]  # one transaction for both chunks
    svc._commit(force=True)
    assert rec.calls[-1] == ("commit_transaction", {TP: 20})
    assert svc.stats()["transactions"] == 1 and not svc._txn_open
    _produce_chunk(svc, 20)
    assert rec.calls[-1] == ("begin",)  # the next output opens the next transaction


def test_a_failed_commit_aborts_and_rereads_from_the_transactions_first_offset() -> None:
    svc, rec = _stage("exactly-once")
    _produce_chunk(svc, 10)
    svc._commit(force=True)
    _produce_chunk(svc, 15)
    _produce_chunk(svc, 20)
    rec.fail_commit = True
    svc._commit(force=True)
    # the chunks 15..24 were acked, but their transaction did not commit: re-read from 15
    assert rec.calls[-4:] == [("commit_transaction", {TP: 25}), ("abort",), ("rebuild",),
                              ("seek", TP, 15)]
    st = svc.stats()
    assert st["aborts"] == 1 and st["commit_failures"] == 1 and st["transactions"] == 1
    assert not svc._txn_open and svc._tracker.in_flight() == 0


def test_a_failed_output_aborts_instead_of_committing_what_is_safe() -> None:
    svc, rec = _stage("exactly-once")
    _produce_chunk(svc, 10)
    rec.fail_next_output = True
    _produce_chunk(svc, 15)
    svc._commit(force=True)
    assert ("commit_transaction", {TP: 15}) not in rec.calls  # nothing of it commits
    assert rec.calls[-3:] == [("abort",), ("rebuild",), ("seek", TP, 10)]
    assert svc.stats()["aborts"] == 1


def test_at_least_once_commits_offsets_and_never_a_transaction() -> None:
    svc, rec = _stage("at-least-once")
    assert svc.transactional_id is None
    assert "transactional_id" not in svc._producer_settings()
    _produce_chunk(svc, 10)
    rec.flush(1)
    svc._settle()
    svc._commit(force=True)
    assert rec.calls == [("commit", {TP: 15})]


def test_guarantee_is_checked() -> None:
    with pytest.raises(ValueError, match="guarantee"):
        ModerationService("127.0.0.1:1", "http://127.0.0.1:1", guarantee="twice")


def test_a_librdkafka_call_that_does_not_return_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(clients_mod, "TXN_TIMEOUT_S", 0.1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="commit the transaction"):
        clients_mod._bounded(lambda: time.sleep(5), "commit the transaction")
    assert time.monotonic() - t0 < 4  # the timeout + 2 s of grace, not the 5 s call
    with pytest.raises(KeyError):
        clients_mod._bounded(lambda: {}["x"], "abort")  # its own error comes through
    clients_mod._bounded(lambda: None, "abort")
